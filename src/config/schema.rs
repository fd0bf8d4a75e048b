//! The configuration file's shape: one struct per section, each with its defaults (one
//! `impl Default` per section; `Config::default()` is the whole file's).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration file. `Config::default()` is every default, with no upstream
/// (which the file must name): what `demo` starts from.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub identity: IdentitySection,
    #[serde(default)]
    pub streams: StreamsSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub log: LogSection,
    /// `[plans.<name>]`: limits per plan.
    #[serde(default)]
    pub plans: std::collections::BTreeMap<String, PlanSection>,
}

/// The access log (`[log]`): one line per request, written by its own thread.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `"stderr"`, `"off"`, or a file path (appended to; `SIGUSR1` reopens it, for
    /// logrotate).
    pub access: String,
    pub format: LogFormat,
    /// The most detailed log lines written (the process log, not the access log);
    /// `RUST_LOG`, when set, replaces it. A reload (`SIGHUP`) applies a change.
    pub level: LogLevel,
}

/// `log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// How an access line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` pairs.
    Logfmt,
    /// One JSON object per line.
    Json,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            access: "stderr".into(),
            format: LogFormat::Logfmt,
            level: LogLevel::Info,
        }
    }
}

/// HTTPS listeners (`[tls]`); none by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Addresses serving HTTPS, beside (or instead of) `server.listen`.
    pub listen: Vec<String>,
    /// PEM certificate chain, the server's own certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub key_file: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 is always offered).
    pub h2: bool,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            cert_file: None,
            key_file: None,
            h2: true,
        }
    }
}

/// What to do with requests outside the watch routes (and outside `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherPaths {
    /// Forward them to the upstream without counting (an edge proxy for everything else).
    Forward,
    /// Answer them `404` JSON.
    NotFound,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Addresses the proxy listens on.
    pub listen: Vec<String>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Let idle worker threads steal tasks from busy ones (only meaningful with `threads > 1`).
    pub work_stealing: bool,
    /// What happens to paths that are neither `/health` nor a watch route.
    pub other_paths: OtherPaths,
    /// How long a client may take to accept response bytes before the request fails.
    #[serde(with = "humantime_serde")]
    pub downstream_write_timeout: Duration,
    /// How long a client may take to send its request headers and body.
    #[serde(with = "humantime_serde")]
    pub downstream_read_timeout: Duration,
    /// On SIGTERM: how long to keep accepting (while `/ready` fails) before the listeners
    /// close (docs/tuning.md#stopping).
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// On a stop (SIGTERM, SIGQUIT): how long requests in flight get to finish after the
    /// listeners close; the process exits as soon as none is left.
    #[serde(with = "humantime_serde")]
    pub graceful_shutdown_timeout: Duration,
    /// Bytes of read buffer per client connection (0: read straight from the socket).
    pub read_buffer: usize,
    /// Longest request head (request line and headers), in bytes: a longer one is answered
    /// `431` and its connection closed (nginx: `large_client_header_buffers 4 8k`).
    pub max_request_head: usize,
    /// How long a client may take to send a whole request head: from the connection's
    /// opening for its first request, from the head's first byte on a reused connection.
    /// A slower one is answered `408` and closed (nginx: `client_header_timeout`).
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// Serve HTTP/1.1 requests a client pipelines (sends before the previous response),
    /// one after another in order, as nginx does. Off: Pingora's default, which answers
    /// the first and closes the connection, dropping the rest.
    pub pipelining: bool,
    /// Unix socket a new process (`--upgrade`) takes the listening sockets over on, when
    /// this one gets `SIGQUIT`: Pingora's zero-downtime upgrade. One per instance.
    pub upgrade_sock: String,
}

/// Client read buffer: none. Pingora's default is a zero-filled 64 KiB per connection; the
/// requests of a video edge are small GETs that Pingora's own header buffer takes in one
/// read, and the buffer costs memory per held stream for no throughput
/// (docs/tuning.md#read-buffer).
pub const READ_BUFFER_DEFAULT: usize = 0;
/// Request heads: 32 KiB, nginx's `4 x 8k` (a player's head is under 1 KiB; a long
/// signed-URL query or cookie fits). Pingora alone lets one grow to 1 MiB.
pub const MAX_REQUEST_HEAD_DEFAULT: usize = 32 * 1024;
/// Bounds of `server.max_request_head`: Pingora refuses a head past 1 MiB anyway.
pub(super) const MAX_REQUEST_HEAD_RANGE: (usize, usize) = (1024, 1024 * 1024);
/// Where a new process waits for the listening sockets of the one it replaces.
pub const UPGRADE_SOCK_DEFAULT: &str = "/tmp/streamgate-upgrade.sock";
/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with its NUL).
pub(super) const UNIX_PATH_MAX: usize = 107;
/// Largest accepted `server.read_buffer`.
pub const READ_BUFFER_MAX: usize = 1024 * 1024;

/// Longest `store.refusal_cache`: how late a slot freed on another instance may be seen.
pub const MAX_REFUSAL_CACHE: Duration = Duration::from_secs(10);
/// Largest `streams.max_manifest_size`: a manifest is held whole in memory to be rewritten.
pub(super) const MAX_MANIFEST_SIZE: usize = 64 << 20;

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:3001".into()],
            threads: 1,
            work_stealing: true,
            other_paths: OtherPaths::Forward,
            downstream_write_timeout: Duration::from_secs(30),
            downstream_read_timeout: Duration::from_secs(30),
            grace_period: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(25),
            read_buffer: READ_BUFFER_DEFAULT,
            max_request_head: MAX_REQUEST_HEAD_DEFAULT,
            request_head_timeout: Duration::from_secs(10),
            pipelining: true,
            upgrade_sock: UPGRADE_SOCK_DEFAULT.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Content servers (`host:port`), chosen round-robin; a refused connection tries the next.
    pub addrs: Vec<String>,
    #[serde(default = "d_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence while waiting for upstream response bytes.
    #[serde(default = "d_io_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(default = "d_io_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    #[serde(default = "d_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Idle upstream connections kept for reuse, per process.
    #[serde(default = "d_keepalive_pool")]
    pub keepalive_pool_size: usize,
    /// Append the client's address to `X-Forwarded-For` on forwarded requests (as Envoy
    /// does, and nginx with `$proxy_add_x_forwarded_for`): an origin that checks the
    /// viewer's region or binds tokens to an address needs it.
    #[serde(default = "d_forwarded_for")]
    pub forwarded_for: bool,
}

/// Every default, and no address (the file must name at least one).
impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            connect_timeout: d_connect_timeout(),
            read_timeout: d_io_timeout(),
            write_timeout: d_io_timeout(),
            idle_timeout: d_idle_timeout(),
            keepalive_pool_size: d_keepalive_pool(),
            forwarded_for: d_forwarded_for(),
        }
    }
}

fn d_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn d_io_timeout() -> Duration {
    Duration::from_secs(30)
}
fn d_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_keepalive_pool() -> usize {
    256
}
fn d_forwarded_for() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Where the user comes from: the `header` (a trusted gateway sets it), or a signed
    /// token (`jwt`, see `[identity.jwt]`).
    pub mode: IdentityMode,
    /// The request header that names the user (`mode = "header"`).
    pub header: String,
    /// Longest accepted identity value, in bytes.
    pub max_len: usize,
    /// Send the identity header back on admitted answers (and make them `private` for
    /// caches). Off: a session id is a credential, and a shared cache would keep it.
    pub echo: bool,
    /// `mode = "jwt"`: how tokens are found and verified.
    pub jwt: JwtSection,
    /// `mode = "header"`: a header naming the user's plan (see `[plans]`), believed only
    /// from `trusted_proxies`; from anyone else it is ignored and removed.
    pub plan_header: Option<String>,
    /// Client networks (CIDR, `10.0.0.0/8`, `127.0.0.1/32`) whose `plan_header` is
    /// believed: the gateway that sets it.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            mode: IdentityMode::Header,
            header: "Session-Id".into(),
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Path prefixes that are watch routes: `/watch` covers `/watch` and `/watch/...`.
    pub routes: Vec<String>,
    /// Match the routes byte for byte. Off: `/WATCH` and `/Watch` are watch requests too,
    /// as origins that route without regard to case (Express, IIS, ASP.NET) read them.
    pub case_sensitive_routes: bool,
    /// Concurrent streams per user.
    pub limit: u32,
    /// How long a stream outlives its last request.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The header that carries the stream id, both ways.
    pub stream_id_header: String,
    /// The query parameter that carries the stream id in URLs (players cannot echo a
    /// header); removed before the request goes upstream.
    pub stream_id_param: String,
    /// Hosts of absolute manifest URIs that point back through this proxy (relative URIs
    /// always do); their URIs get the stream id too.
    pub rewrite_hosts: Vec<String>,
    /// Largest manifest rewritten; a bigger one goes through unchanged (and is counted).
    pub max_manifest_size: usize,
    /// Origins whose browser players may read the proxy's own answers (`"*"`: any).
    pub cors_origins: Vec<String>,
    /// Most requests of one stream in flight at once through this instance; one more is
    /// `429 stream_busy`. Real players keep at most a handful (docs/players.md).
    pub max_inflight_per_stream: u32,
    /// A manifest request (`.m3u8`, `.mpd`) that opens a stream without naming one is
    /// redirected (`302`) to its URL with the stream parameter, so a player reloading a live
    /// playlist reloads it as this stream.
    pub redirect_manifests: bool,
    /// The plan of users whose token names none (else `limit` applies).
    pub default_plan: Option<String>,
    /// A plan name that no `[plans]` table has.
    pub unknown_plan: UnknownPlan,
    /// The status of a refusal at the limit: `401` (the original contract), `403`, `409`
    /// or `429`. With JWT identity a `401` tells OAuth clients to refresh their token.
    pub limit_status: u16,
}

impl Default for StreamsSection {
    fn default() -> Self {
        Self {
            routes: vec!["/watch".into()],
            case_sensitive_routes: false,
            limit: 3,
            lease_ttl: Duration::from_secs(60),
            stream_id_header: "Stream-Id".into(),
            stream_id_param: "sg_stream".into(),
            rewrite_hosts: Vec::new(),
            max_manifest_size: 4 << 20,
            cors_origins: Vec::new(),
            max_inflight_per_stream: 8,
            redirect_manifests: true,
            default_plan: None,
            unknown_plan: UnknownPlan::Default,
            limit_status: 401,
        }
    }
}

/// Where active streams live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// In this process, in a moka cache: one instance, nothing to set up.
    Memory,
    /// One Redis or Valkey server (or a primary behind a proxy), shared by all instances.
    Redis,
    /// A Redis Cluster, reached through its seed nodes.
    RedisCluster,
}

/// What a decision does when the store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse with `503 store_unavailable` (fail closed).
    Deny,
    /// Admit without a lease, and count it as `fail_open` (fail open).
    Allow,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub kind: StoreKind,
    /// Memory store: most users with live streams at once. A new user past it gets `503`;
    /// no live lease is ever evicted to make room.
    pub max_users: u64,
    /// `kind = "redis"`: `redis://[[user]:password@]host:port[/db]`, `rediss://` for TLS.
    pub url: Option<String>,
    /// `kind = "redis-cluster"`: seed node URLs.
    pub nodes: Vec<String>,
    /// Key prefix, so several deployments can share one Redis: keys are
    /// `<prefix>:{<user>}:streams`.
    pub prefix: String,
    /// Longest wait for any one store call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_store_error: OnStoreError,
    /// Redis stores: how long this instance answers a refused user's further opens itself,
    /// without asking the store (`0s`: never). See `store::refusals`.
    #[serde(with = "humantime_serde")]
    pub refusal_cache: Duration,
    /// `rediss://` only: a PEM file of the CA(s) to trust instead of the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Redis stores: how often the connection is checked (`PING`) in the background, so
    /// a connection Redis closed (restart, `CLIENT KILL`, its idle `timeout`) is
    /// replaced before a request needs it.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
}

/// Never print the store section: its URLs may carry a password.
impl std::fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSection")
            .field("kind", &self.kind)
            .field("max_users", &self.max_users)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_store_error", &self.on_store_error)
            .field("refusal_cache", &self.refusal_cache)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("health_interval", &self.health_interval)
            .finish_non_exhaustive()
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            max_users: 1_000_000,
            url: None,
            nodes: Vec::new(),
            prefix: "sg".into(),
            timeout: Duration::from_millis(100),
            on_store_error: OnStoreError::Deny,
            refusal_cache: Duration::ZERO,
            tls_ca_file: None,
            health_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where Prometheus scrapes `/metrics`; leave out to serve no metrics.
    pub listen: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: Some("127.0.0.1:9091".into()),
        }
    }
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub upstream: Vec<String>,
    pub limit: Option<u32>,
    pub metrics: Option<String>,
}
