//! Who a signed token says the viewer is: `identity.mode = "jwt"`.
//!
//! With header identity, any client that invents a fresh `Session-Id` is a fresh user with
//! a fresh set of streams; the cap holds only behind a gateway that sets the header. A
//! platform's login service signs a token (JWT) instead, and the proxy verifies it: the
//! user is a claim (`sub` by default) that nobody can change without the signing key, and
//! the plan and a per-user limit can come from claims too (see [`crate::policy`]).
//!
//! Keys come from PEM files (`keys`), a JWKS file (`jwks_file`), the login service's JWKS
//! endpoint (`jwks_url`, kept fresh by [`remote`]) and an HMAC secret file or variable;
//! `algorithms` is an allow-list (`none` is never accepted), and a key only verifies the
//! algorithm family it belongs to, so an HS256 token "signed" with a public RSA key is
//! refused. A verified token is remembered by its SHA-256 until its `exp`, so a player's
//! segment requests do not verify a signature each time. A token is never logged, never
//! echoed, and is removed from the request before it goes upstream (see
//! [`crate::proxy`]'s upstream request filter).

mod error;
mod keys;
pub mod remote;
mod ring;
mod sources;
#[cfg(test)]
mod tests;

pub use self::error::TokenError;
pub use self::keys::parse_algorithms;
pub(crate) use self::keys::Key;
pub(crate) use self::sources::bearer;

pub use self::remote::RemoteKeys;
pub use self::ring::install as install_crypto;

/// Why `mode = "jwt"` without any key source is refused.
pub const NO_KEYS: &str =
    "mode = \"jwt\" needs keys, jwks_file, jwks_url, hmac_secret_file or hmac_secret_env";

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use prometheus::IntCounterVec;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{JwtSection, KeyError};

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Arc<str>,
    pub plan: Option<Arc<str>>,
    /// The token's own limit (`limit_claim`), already capped by `max_limit`.
    pub limit: Option<u32>,
    /// `claim_to_headers`: the headers to send upstream, with the claims' values.
    /// `None` when no claim is forwarded (header identity, or no `claim_to_headers`).
    pub forward: Option<Arc<[(HeaderName, HeaderValue)]>>,
}

/// What a verifier shares with the rest of the process, and keeps across reloads.
#[derive(Clone, Default)]
pub struct Runtime {
    /// `streamgate_auth_total`.
    pub auth: Option<IntCounterVec>,
    /// The `jwks_url` key set, fetched by its own task.
    pub remote: Option<Arc<RemoteKeys>>,
}

/// The keys, the rules and the cache of verified tokens. Built from `[identity.jwt]` at
/// start and again on each `SIGHUP` (a new cache: a removed key's tokens stop working).
pub struct Verifier {
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    max_lifetime: Option<Duration>,
    user_claim: Vec<String>,
    plan_claim: Option<Vec<String>>,
    limit_claim: Option<Vec<String>>,
    max_limit: u32,
    token_param: Option<String>,
    token_cookie: Option<String>,
    /// `claim_to_headers`: header, and the claim path it carries.
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    /// By SHA-256 of the token: what it says, until when, and the remote set it was
    /// verified under (an entry of an older set is verified again).
    cache: Cache<[u8; 32], Verified>,
    auth: Option<IntCounterVec>,
    remote: Option<Arc<RemoteKeys>>,
}

/// A cache entry: what a token says, until when, under which remote key set.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    until: Instant,
    generation: Option<u64>,
}

impl Verifier {
    /// Load every key `[identity.jwt]` names; errors name the key and the file.
    pub fn new(c: &JwtSection, runtime: Option<&Runtime>) -> Result<Self, KeyError> {
        let runtime = runtime.cloned().unwrap_or_default();
        install_crypto();
        let keys = keys::load(c)?;
        if keys.is_empty() && c.jwks_url.is_none() {
            return Err(KeyError::new("identity.jwt", NO_KEYS));
        }
        let algorithms = parse_algorithms(&c.algorithms)?;
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        Ok(Self {
            keys,
            algorithms,
            issuers: c.issuers.clone(),
            audiences: c.audiences.clone(),
            leeway: c.leeway,
            max_lifetime: c.max_lifetime,
            user_claim: path(&c.user_claim),
            plan_claim: c.plan_claim.as_deref().map(path),
            limit_claim: c.limit_claim.as_deref().map(path),
            max_limit: c.max_limit,
            token_param: c.token_param.clone(),
            token_cookie: c.token_cookie.clone(),
            claim_headers: c
                .claim_to_headers
                .iter()
                .map(|(h, claim)| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map(|h| (h, path(claim)))
                        .map_err(|_| {
                            KeyError::new(
                                format!("identity.jwt.claim_to_headers.{h}"),
                                "not a header name",
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            cache: Cache::builder()
                .max_capacity(c.cache_size)
                .expire_after(UntilExp)
                .build(),
            auth: runtime.auth,
            remote: runtime.remote,
        })
    }

    /// Who `token` names, as [`Verifier::verify`] says; when it names a key the remote set
    /// lacks (or no set is loaded yet), after one fetch of the set (see [`remote`]).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut outcome = self.check(&digest, token);
        if let (Err(TokenError::UnknownKid | TokenError::KeysUnavailable), Some(remote)) =
            (&outcome, &self.remote)
        {
            if remote.refetch().await {
                outcome = self.check(&digest, token);
            }
        }
        self.counted(outcome)
    }

    /// Who `token` names, verifying it unless it was verified before and has not expired.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let outcome = self.check(&digest, token);
        self.counted(outcome)
    }

    /// The cache, else a verification (remembered when good): the principal, and whether
    /// it came from the cache.
    fn check(&self, digest: &[u8; 32], token: &str) -> Result<(Principal, bool), TokenError> {
        let generation = self.remote.as_ref().and_then(|r| r.generation());
        if let Some(v) = self.cache.get(digest) {
            if Instant::now() < v.until && v.generation == generation {
                return Ok((v.principal, true));
            }
        }
        let (principal, valid_for) = self.verify_uncached(token)?;
        self.cache.insert(
            *digest,
            Verified {
                principal: principal.clone(),
                until: Instant::now() + valid_for,
                generation,
            },
        );
        Ok((principal, false))
    }

    fn counted(
        &self,
        outcome: Result<(Principal, bool), TokenError>,
    ) -> Result<Principal, TokenError> {
        match outcome {
            Ok((p, cached)) => {
                self.count(if cached { "cached" } else { "verified" }, "none");
                Ok(p)
            }
            Err(e @ TokenError::KeysUnavailable) => {
                self.count("unavailable", e.reason());
                Err(e)
            }
            Err(e) => {
                self.count("refused", e.reason());
                Err(e)
            }
        }
    }

    /// Count a refusal decided before verification (no token at all).
    pub fn refused(&self, e: TokenError) {
        self.count("refused", e.reason());
    }

    fn count(&self, result: &str, reason: &str) {
        if let Some(c) = &self.auth {
            c.with_label_values(&[result, reason]).inc();
        }
    }

    /// Verify `token` without the cache (what a token's first request costs; benchmarks
    /// use it): the principal, and how long the token stays valid.
    pub fn verify_uncached(&self, token: &str) -> Result<(Principal, Duration), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::from_jwt(&e))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::BadAlgorithm);
        }
        let family = header.alg.family();
        let remote = self.remote.as_ref().map(|r| r.current());
        let fetched = match &remote {
            Some(Some(set)) => set.keys.as_slice(),
            _ => &[],
        };
        let mut candidates = self
            .keys
            .iter()
            .chain(fetched)
            .filter(|k| k.key.family() == family)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .peekable();
        if candidates.peek().is_none() {
            // With a remote set configured but none usable, the token may be fine.
            if matches!(remote, Some(None)) {
                return Err(TokenError::KeysUnavailable);
            }
            return Err(if header.kid.is_some() {
                TokenError::UnknownKid
            } else {
                TokenError::BadAlgorithm
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if self.issuers.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        if self.max_lifetime.is_some() {
            required.push("iat");
        }
        validation.set_required_spec_claims(&required);
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => {
                    last = TokenError::from_jwt(&e);
                    if last != TokenError::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// The user, plan and limit a verified token's claims give, and how long it is valid.
    fn principal(&self, claims: &Value) -> Result<(Principal, Duration), TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        if let Some(max) = self.max_lifetime {
            let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
            if exp.saturating_sub(iat) > max.as_secs() {
                return Err(TokenError::TooLongLived);
            }
        }
        let user = lookup(claims, &self.user_claim)
            .and_then(scalar)
            .filter(|u| !u.is_empty())
            .ok_or(TokenError::MissingClaim)?;
        let plan = self
            .plan_claim
            .as_ref()
            .and_then(|p| lookup(claims, p))
            .and_then(scalar)
            .map(Arc::from);
        let limit = self
            .limit_claim
            .as_ref()
            .and_then(|p| lookup(claims, p))
            .and_then(Value::as_u64)
            .map(|l| u32::try_from(l).unwrap_or(u32::MAX).min(self.max_limit));
        let valid_for = Duration::from_secs(exp.saturating_sub(now) + self.leeway.as_secs());
        let forward: Option<Arc<[_]>> = (!self.claim_headers.is_empty()).then(|| {
            self.claim_headers
                .iter()
                .filter_map(|(h, p)| {
                    let v = lookup(claims, p).and_then(scalar)?;
                    Some((h.clone(), HeaderValue::from_str(&v).ok()?))
                })
                .collect()
        });
        Ok((
            Principal {
                user: Arc::from(user),
                plan,
                limit,
                forward,
            },
            valid_for,
        ))
    }
}

/// Cache entries expire with their token.
struct UntilExp;

impl moka::Expiry<[u8; 32], Verified> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Verified,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

fn lookup<'a>(claims: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(claims, |v, k| v.get(k))
}

/// A claim as text: strings as they are, numbers written out.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
