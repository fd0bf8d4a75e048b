//! `[identity]`, `[identity.jwt]` and `[plans.<name>]`: who the viewer is, and what their
//! plan allows (see `crate::jwt` and `crate::policy`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::header::Header;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Where the user comes from: the `header` (a trusted gateway sets it), or a signed
    /// token (`jwt`, see `[identity.jwt]`).
    pub mode: IdentityMode,
    /// The request header that names the user (`mode = "header"`).
    pub header: Header,
    /// Longest accepted identity value, in bytes.
    pub max_len: usize,
    /// Send the identity header back on admitted answers (and make them `private` for
    /// caches). Off: a session id is a credential, and a shared cache would keep it.
    pub echo: bool,
    /// `mode = "jwt"`: how tokens are found and verified.
    pub jwt: JwtSection,
    /// `mode = "header"`: a header naming the user's plan (see `[plans]`), believed only
    /// from `trusted_proxies`; from anyone else it is ignored and removed.
    pub plan_header: Option<Header>,
    /// Client networks (CIDR, `10.0.0.0/8`, `127.0.0.1/32`) whose `plan_header` is
    /// believed: the gateway that sets it.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            mode: IdentityMode::Header,
            header: Header::fixed("session-id", "Session-Id"),
            max_len: 128,
            echo: false,
            jwt: JwtSection::default(),
            plan_header: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `identity.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    Header,
    Jwt,
}

/// `[identity.jwt]`: bearer tokens signed by the platform's login service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSection {
    /// Public keys in PEM files (RSA, EC P-256/P-384, Ed25519), each with its `kid`.
    pub keys: Vec<JwtKey>,
    /// A JSON Web Key Set file (read at start and on `SIGHUP`).
    pub jwks_file: Option<PathBuf>,
    /// A JSON Web Key Set served by the login service (`http://` or `https://`, the
    /// system's CA roots): fetched at start, then every `jwks_refresh`, and once more
    /// (at most every 30 s) when a token names a `kid` it does not hold.
    pub jwks_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// How long the last good set is used while fetches fail; older, tokens are answered
    /// `503 auth_unavailable` until a fetch succeeds.
    #[serde(with = "humantime_serde")]
    pub jwks_max_stale: Duration,
    /// The longest one fetch may take (connect, answer and body).
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// An HS256/384/512 shared secret, from a file (its bytes, a final newline dropped).
    pub hmac_secret_file: Option<PathBuf>,
    /// The same from an environment variable (named here; its value is never logged).
    pub hmac_secret_env: Option<String>,
    /// Accepted `alg`s; `none` never is, and a key only verifies its own family.
    pub algorithms: Vec<String>,
    /// Accepted `iss` values; when set, `iss` is required.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; when set, `aud` is required.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest `exp - iat` accepted (then `iat` is required); none by default.
    #[serde(with = "humantime_serde::option")]
    pub max_lifetime: Option<Duration>,
    /// The claim naming the user (a dotted path into nested objects).
    pub user_claim: String,
    /// The claim naming the user's plan (see `[plans]`).
    pub plan_claim: Option<String>,
    /// A claim giving the user's own limit, capped by `max_limit`.
    pub limit_claim: Option<String>,
    pub max_limit: u32,
    /// A query parameter that may carry the token (native HLS players cannot set headers);
    /// removed before the request goes upstream. Off by default.
    pub token_param: Option<String>,
    /// A cookie that may carry the token; removed before the request goes upstream.
    pub token_cookie: Option<String>,
    /// Verified tokens remembered (by a hash of the token, until their `exp`).
    pub cache_size: u64,
    /// Claims forwarded upstream as headers (`{ "X-User-Id" = "sub" }`); a client's own
    /// copies of those headers are always removed first.
    pub claim_to_headers: std::collections::BTreeMap<String, String>,
}

impl Default for JwtSection {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(600),
            jwks_max_stale: Duration::from_secs(24 * 3600),
            jwks_timeout: Duration::from_secs(5),
            hmac_secret_file: None,
            hmac_secret_env: None,
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(30),
            max_lifetime: None,
            user_claim: "sub".into(),
            plan_claim: None,
            limit_claim: None,
            max_limit: 10,
            token_param: None,
            token_cookie: None,
            cache_size: 100_000,
            claim_to_headers: std::collections::BTreeMap::new(),
        }
    }
}

/// One PEM public key of `[identity.jwt] keys`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    pub kid: String,
    pub file: PathBuf,
}

/// One `[plans.<name>]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSection {
    /// Concurrent streams of the plan's users; `0` blocks them (`403 plan_blocked`).
    pub limit: Option<u32>,
    /// Count the plan's streams but never refuse one.
    pub unlimited: bool,
    /// What an open at the plan's limit does (else `streams.on_limit`).
    pub on_limit: Option<OnLimit>,
    /// Enforce the plan's limit, or only report what it would do (else `streams.mode`).
    pub mode: Option<Mode>,
}

/// `streams.mode`: enforce the limit, or only report what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Lease and count as usual, refuse and evict nothing: a decision that would have is
    /// counted (`would_refuse`, `would_evict`), logged and sent as `Stream-Limit-Status`.
    DryRun,
}

/// `streams.on_limit`: what an open at the user's limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Refuse it (`streams.limit_status`).
    #[default]
    Reject,
    /// End the user's least recently renewed stream and admit this one in its place.
    EvictOldest,
    /// As `evict_oldest`, but only a stream with no request in flight and no renewal for
    /// `streams.evict_idle_after`; else refuse.
    EvictIdle,
}

/// `streams.unknown_plan`: a plan name no `[plans]` table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPlan {
    /// As a user without a plan.
    Default,
    /// `403 unknown_plan`.
    Reject,
}
