//! Who a signed token says the viewer is: `identity.mode = "jwt"`.
//!
//! With header identity, any client that invents a fresh `Session-Id` is a fresh user with
//! a fresh set of streams; the cap holds only behind a gateway that sets the header. A
//! platform's login service signs a token (JWT) instead, and the proxy verifies it: the
//! user is a claim (`sub` by default) that nobody can change without the signing key, and
//! the plan and a per-user limit can come from claims too (see [`crate::policy`]).
//!
//! Keys come from PEM files (`keys`), a JWKS file (`jwks_file`) and an HMAC secret file;
//! `algorithms` is an allow-list (`none` is never accepted), and a key only verifies the
//! algorithm family it belongs to, so an HS256 token "signed" with a public RSA key is
//! refused. A verified token is remembered by its SHA-256 until its `exp`, so a player's
//! segment requests do not verify a signature each time. A token is never logged, never
//! echoed, and is removed from the request before it goes upstream (see
//! [`crate::proxy`]'s upstream request filter).

mod error;
mod ring;
mod sources;
#[cfg(test)]
mod tests;

pub use self::error::TokenError;

pub use self::ring::install as install_crypto;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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

/// One verification key, with the `kid` it is named by (if any).
struct Key {
    kid: Option<String>,
    key: DecodingKey,
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
    /// By SHA-256 of the token: what it says, and until when.
    cache: Cache<[u8; 32], (Principal, Instant)>,
    auth: Option<IntCounterVec>,
}

impl Verifier {
    /// Load every key `[identity.jwt]` names; errors name the key and the file.
    pub fn new(c: &JwtSection, auth: Option<IntCounterVec>) -> Result<Self, KeyError> {
        install_crypto();
        let mut keys = Vec::new();
        for (i, k) in c.keys.iter().enumerate() {
            let pem = read(&format!("identity.jwt.keys[{i}].file"), &k.file)?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| {
                    KeyError::new(
                        format!("identity.jwt.keys[{i}].file"),
                        "not a PEM RSA, EC or Ed25519 public key",
                    )
                })?;
            keys.push(Key {
                kid: Some(k.kid.clone()),
                key,
            });
        }
        if let Some(path) = &c.jwks_file {
            let text = read("identity.jwt.jwks_file", path)?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                KeyError::new(
                    "identity.jwt.jwks_file",
                    format!("not a JSON Web Key Set: {e}"),
                )
            })?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    KeyError::new(
                        "identity.jwt.jwks_file",
                        format!("a key cannot be used: {e}"),
                    )
                })?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    key,
                });
            }
        }
        let secret = match (&c.hmac_secret_file, &c.hmac_secret_env) {
            (Some(path), _) => {
                let mut secret = read("identity.jwt.hmac_secret_file", path)?;
                if secret.last() == Some(&b'\n') {
                    secret.pop();
                }
                Some(("identity.jwt.hmac_secret_file", secret))
            }
            (None, Some(var)) => {
                let secret = std::env::var_os(var).ok_or_else(|| {
                    KeyError::new("identity.jwt.hmac_secret_env", format!("{var} is not set"))
                })?;
                Some(("identity.jwt.hmac_secret_env", secret.into_encoded_bytes()))
            }
            (None, None) => None,
        };
        if let Some((key, secret)) = secret {
            if secret.len() < 32 {
                return Err(KeyError::new(
                    key,
                    "an HMAC secret must be at least 32 bytes",
                ));
            }
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(&secret),
            });
        }
        if keys.is_empty() {
            return Err(KeyError::new(
                "identity.jwt",
                "mode = \"jwt\" needs keys, jwks_file, hmac_secret_file or hmac_secret_env",
            ));
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
            auth,
        })
    }

    /// Who `token` names, verifying it unless it was verified before and has not expired.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((p, until)) = self.cache.get(&digest) {
            if Instant::now() < until {
                self.count("cached", "none");
                return Ok(p);
            }
        }
        match self.verify_uncached(token) {
            Ok((p, valid_for)) => {
                self.count("verified", "none");
                self.cache
                    .insert(digest, (p.clone(), Instant::now() + valid_for));
                Ok(p)
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
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.key.family() == family)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .peekable();
        if candidates.peek().is_none() {
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

impl moka::Expiry<[u8; 32], (Principal, Instant)> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &(Principal, Instant),
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.1.saturating_duration_since(created_at))
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path)
        .map_err(|e| KeyError::new(key, format!("cannot read {}: {e}", path.display())))
}

/// `identity.jwt.algorithms`, refusing `none` and names that are not algorithms.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, KeyError> {
    if names.is_empty() {
        return Err(KeyError::new(
            "identity.jwt.algorithms",
            "needs at least one algorithm",
        ));
    }
    names
        .iter()
        .map(|n| {
            n.parse::<Algorithm>().map_err(|_| {
                KeyError::new(
                    "identity.jwt.algorithms",
                    format!("{n:?} is not an accepted algorithm (none never is)"),
                )
            })
        })
        .collect()
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
