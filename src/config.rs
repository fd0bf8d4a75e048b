//! The one configuration file: its schema, how it is read, and what makes it valid.
//!
//! Reading happens in three steps (read the file, parse with `serde` and
//! `deny_unknown_fields`, then [`Config::validate`]) so that every mistake in the file is
//! reported as one line naming the file and the key, and never as a panic. The same file
//! also yields Pingora's own [`ServerConf`], so there is no second config file to keep in
//! step. Error messages never echo values, because a Redis URL may carry a password.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use pingora::server::configuration::ServerConf;
use serde::Deserialize;

/// Why a config file was refused. `Display` is one line: `FILE: KEY: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read file: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but a key is missing, unknown, or has a bad value.
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// A problem with one key, before we know which file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    fn in_file(self, file: &Path) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: self.key,
            message: self.message,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
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
}

/// HTTPS listeners (`[tls]`); none by default.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherPaths {
    /// Forward them to the upstream without counting (an edge proxy for everything else).
    Forward,
    /// Answer them `404` JSON.
    NotFound,
}

#[derive(Debug, Clone, Deserialize)]
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
    /// On SIGTERM: how long to keep accepting before starting to shut down.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// On SIGTERM: how long in-flight requests get to finish after the grace period.
    #[serde(with = "humantime_serde")]
    pub graceful_shutdown_timeout: Duration,
    /// Bytes of read buffer per client connection (0: read straight from the socket).
    pub read_buffer: usize,
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
/// Where a new process waits for the listening sockets of the one it replaces.
pub const UPGRADE_SOCK_DEFAULT: &str = "/tmp/streamgate-upgrade.sock";
/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with its NUL).
const UNIX_PATH_MAX: usize = 107;
/// Largest accepted `server.read_buffer`.
pub const READ_BUFFER_MAX: usize = 1024 * 1024;

/// Longest `store.refusal_cache`: how late a slot freed on another instance may be seen.
pub const MAX_REFUSAL_CACHE: Duration = Duration::from_secs(10);
/// Largest `streams.max_manifest_size`: a manifest is held whole in memory to be rewritten.
const MAX_MANIFEST_SIZE: usize = 64 << 20;

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
            graceful_shutdown_timeout: Duration::from_secs(30),
            read_buffer: READ_BUFFER_DEFAULT,
            pipelining: true,
            upgrade_sock: UPGRADE_SOCK_DEFAULT.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// The request header that names the user.
    pub header: String,
    /// Longest accepted identity value, in bytes.
    pub max_len: usize,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            header: "Session-Id".into(),
            max_len: 128,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Path prefixes that are watch routes: `/watch` covers `/watch` and `/watch/...`.
    pub routes: Vec<String>,
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
}

impl Default for StreamsSection {
    fn default() -> Self {
        Self {
            routes: vec!["/watch".into()],
            limit: 3,
            lease_ttl: Duration::from_secs(60),
            stream_id_header: "Stream-Id".into(),
            stream_id_param: "sg_stream".into(),
            rewrite_hosts: Vec::new(),
            max_manifest_size: 4 << 20,
            cors_origins: Vec::new(),
            max_inflight_per_stream: 8,
            redirect_manifests: true,
        }
    }
}

/// Where active streams live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse with `503 store_unavailable` (fail closed).
    Deny,
    /// Admit without a lease, and count it as `fail_open` (fail open).
    Allow,
}

#[derive(Clone, Deserialize)]
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
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

impl Config {
    /// Read, parse, apply overrides and validate the file at `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
            .map(|c| c.with_overrides(overrides))
            .and_then(Config::validate)
            .map_err(|e| e.in_file(path))
    }

    /// Parse TOML text into a config, without validating it. Errors name the key path.
    pub fn parse(text: &str) -> Result<Config, KeyError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().replace('\n', " ");
            // serde names a missing key in the message, at its parent's path.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
                .map(str::to_owned);
            let key = if let Some(field) = missing {
                if path.is_empty() || path == "." {
                    field
                } else {
                    format!("{path}.{field}")
                }
            } else if path.is_empty() || path == "." {
                match inner.span() {
                    Some(span) => format!("line {}", line_of(text, span.start)),
                    None => "(top level)".into(),
                }
            } else {
                path
            };
            KeyError::new(key, message)
        })
    }

    /// Parse and validate TOML text (what tests and `--check` use).
    pub fn from_toml(text: &str) -> Result<Config, KeyError> {
        Self::parse(text)?.validate()
    }

    pub fn with_overrides(mut self, o: &Overrides) -> Config {
        if !o.listen.is_empty() {
            self.server.listen = o.listen.clone();
        }
        if !o.upstream.is_empty() {
            self.upstream.addrs = o.upstream.clone();
        }
        if let Some(limit) = o.limit {
            self.streams.limit = limit;
        }
        if let Some(m) = &o.metrics {
            self.metrics.listen = Some(m.clone());
        }
        self
    }

    /// Check everything serde cannot: addresses, ranges, header names, routes.
    pub fn validate(self) -> Result<Config, KeyError> {
        let s = &self.server;
        if s.listen.is_empty() && self.tls.listen.is_empty() {
            return Err(KeyError::new(
                "server.listen",
                "needs at least one address (or tls.listen)",
            ));
        }
        for a in &s.listen {
            check_socket_addr("server.listen", a)?;
        }
        for a in &self.tls.listen {
            check_socket_addr("tls.listen", a)?;
        }
        if !self.tls.listen.is_empty() {
            if !cfg!(feature = "tls") {
                return Err(KeyError::new(
                    "tls.listen",
                    "this build has no HTTPS listeners (build with --features tls)",
                ));
            }
            crate::tls::check(&self.tls)?;
        }
        if s.threads == 0 {
            return Err(KeyError::new("server.threads", "must be at least 1"));
        }
        if s.upgrade_sock.is_empty() || s.upgrade_sock.len() > UNIX_PATH_MAX {
            return Err(KeyError::new(
                "server.upgrade_sock",
                format!("must be a socket path of 1 to {UNIX_PATH_MAX} bytes"),
            ));
        }
        if s.read_buffer > READ_BUFFER_MAX {
            return Err(KeyError::new(
                "server.read_buffer",
                format!("must be at most {READ_BUFFER_MAX} bytes"),
            ));
        }
        for (key, d) in [
            (
                "server.downstream_write_timeout",
                s.downstream_write_timeout,
            ),
            ("server.downstream_read_timeout", s.downstream_read_timeout),
        ] {
            check_positive(key, d)?;
        }

        let u = &self.upstream;
        if u.addrs.is_empty() {
            return Err(KeyError::new(
                "upstream.addrs",
                "needs at least one address",
            ));
        }
        for a in &u.addrs {
            check_host_port("upstream.addrs", a)?;
        }
        for (key, d) in [
            ("upstream.connect_timeout", u.connect_timeout),
            ("upstream.read_timeout", u.read_timeout),
            ("upstream.write_timeout", u.write_timeout),
            ("upstream.idle_timeout", u.idle_timeout),
        ] {
            check_positive(key, d)?;
        }

        check_header_name("identity.header", &self.identity.header)?;
        if self.identity.max_len == 0 || self.identity.max_len > 4096 {
            return Err(KeyError::new(
                "identity.max_len",
                "must be between 1 and 4096",
            ));
        }

        let st = &self.streams;
        if st.limit == 0 {
            return Err(KeyError::new("streams.limit", "must be at least 1"));
        }
        if st.lease_ttl < Duration::from_millis(100) {
            return Err(KeyError::new("streams.lease_ttl", "must be at least 100ms"));
        }
        check_header_name("streams.stream_id_header", &st.stream_id_header)?;
        if st
            .stream_id_header
            .eq_ignore_ascii_case(&self.identity.header)
        {
            return Err(KeyError::new(
                "streams.stream_id_header",
                "must differ from identity.header",
            ));
        }
        if st.stream_id_param.is_empty()
            || !st
                .stream_id_param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(KeyError::new(
                "streams.stream_id_param",
                "must be 1 or more letters, digits, '-', '.', '_' or '~'",
            ));
        }
        for h in &st.rewrite_hosts {
            if h.is_empty() || h.contains(['/', '?', '#', '@', ' ']) {
                return Err(KeyError::new(
                    "streams.rewrite_hosts",
                    "each entry must be a host or host:port, without scheme or path",
                ));
            }
        }
        if st.max_manifest_size == 0 || st.max_manifest_size > MAX_MANIFEST_SIZE {
            return Err(KeyError::new(
                "streams.max_manifest_size",
                format!("must be between 1 and {MAX_MANIFEST_SIZE} bytes"),
            ));
        }
        for o in &st.cors_origins {
            if o != "*" && http::HeaderValue::from_str(o).is_err() || o.is_empty() {
                return Err(KeyError::new(
                    "streams.cors_origins",
                    "each entry must be an origin like \"https://player.example\" or \"*\"",
                ));
            }
        }
        if st.max_inflight_per_stream == 0 {
            return Err(KeyError::new(
                "streams.max_inflight_per_stream",
                "must be at least 1",
            ));
        }
        if st.routes.is_empty() {
            return Err(KeyError::new("streams.routes", "needs at least one route"));
        }
        for r in &st.routes {
            if !r.starts_with('/') || r.contains(['?', '#', ' ']) {
                return Err(KeyError::new(
                    "streams.routes",
                    "each route must be a path starting with '/'",
                ));
            }
            if crate::routing::is_reserved(r) {
                return Err(KeyError::new(
                    "streams.routes",
                    "a route may not cover /health or /ready",
                ));
            }
        }

        let store = &self.store;
        if store.max_users == 0 {
            return Err(KeyError::new("store.max_users", "must be at least 1"));
        }
        check_positive("store.timeout", store.timeout)?;
        if store.refusal_cache > MAX_REFUSAL_CACHE {
            return Err(KeyError::new(
                "store.refusal_cache",
                "must be at most 10s (a slot freed on another instance is seen this late)",
            ));
        }
        if store.prefix.is_empty() || store.prefix.contains(['{', '}']) {
            return Err(KeyError::new(
                "store.prefix",
                "must be non-empty and contain no braces",
            ));
        }
        if let Some(ca) = &store.tls_ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| KeyError::new("store.tls_ca_file", format!("cannot read it: {e}")))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(KeyError::new(
                    "store.tls_ca_file",
                    "holds no PEM certificate",
                ));
            }
        }
        match store.kind {
            StoreKind::Memory => {}
            StoreKind::Redis => match &store.url {
                None => return Err(KeyError::new("store.url", "required with kind = \"redis\"")),
                Some(u) => check_redis_url("store.url", u)?,
            },
            StoreKind::RedisCluster => {
                if store.nodes.is_empty() {
                    return Err(KeyError::new(
                        "store.nodes",
                        "required with kind = \"redis-cluster\"",
                    ));
                }
                for n in &store.nodes {
                    check_redis_url("store.nodes", n)?;
                }
            }
        }

        if let Some(m) = &self.metrics.listen {
            check_socket_addr("metrics.listen", m)?;
            if self.server.listen.iter().any(|l| l == m) {
                return Err(KeyError::new(
                    "metrics.listen",
                    "must differ from server.listen",
                ));
            }
        }
        Ok(self)
    }

    /// Pingora's own server settings, built from this file.
    pub fn pingora_server_conf(&self) -> ServerConf {
        ServerConf {
            threads: self.server.threads,
            // One worker has no one to steal from: Pingora's single-threaded runtime then
            // saves the multi-threaded scheduler's overhead
            // (docs/tuning.md#single-threaded-runtime).
            work_stealing: self.server.work_stealing && self.server.threads > 1,
            upstream_keepalive_pool_size: self.upstream.keepalive_pool_size,
            upgrade_sock: self.server.upgrade_sock.clone(),
            grace_period_seconds: Some(self.server.grace_period.as_secs()),
            graceful_shutdown_timeout_seconds: Some(
                self.server.graceful_shutdown_timeout.as_secs(),
            ),
            ..ServerConf::default()
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(1)
}

fn check_socket_addr(key: &str, addr: &str) -> Result<(), KeyError> {
    addr.parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| KeyError::new(key, "not an IP:port address"))
}

/// `host:port` or `[v6]:port`, checked without resolving (no DNS at check time: the
/// name is resolved when the server starts).
fn check_host_port(key: &str, addr: &str) -> Result<(), KeyError> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || KeyError::new(key, "not a host:port address");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid_host {
        Ok(())
    } else {
        Err(bad())
    }
}

fn check_redis_url(key: &str, url: &str) -> Result<(), KeyError> {
    use redis::IntoConnectionInfo;
    // The message never includes the URL: it may carry a password.
    url.into_connection_info()
        .map(|_| ())
        .map_err(|_| KeyError::new(key, "not a valid redis:// or rediss:// URL"))
}

fn check_positive(key: &str, d: Duration) -> Result<(), KeyError> {
    if d.is_zero() {
        Err(KeyError::new(key, "must be longer than 0s"))
    } else {
        Ok(())
    }
}

fn check_header_name(key: &str, name: &str) -> Result<(), KeyError> {
    HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| KeyError::new(key, "not a valid HTTP header name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[upstream]\naddrs = [\"127.0.0.1:8080\"]\n";

    fn err(text: &str) -> KeyError {
        Config::from_toml(text).expect_err("config should be refused")
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.server.listen, vec!["0.0.0.0:3001"]);
        assert_eq!(c.identity.header, "Session-Id");
        assert_eq!(c.streams.routes, vec!["/watch"]);
        assert_eq!(c.streams.limit, 3);
        assert_eq!(c.streams.lease_ttl, Duration::from_secs(60));
        assert_eq!(c.streams.stream_id_header, "Stream-Id");
        assert_eq!(c.store.kind, StoreKind::Memory);
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9091"));
        assert_eq!(c.server.read_buffer, 0);
        assert!(c.server.pipelining);
        assert!(c.upstream.forwarded_for);
    }

    #[test]
    fn one_worker_runs_without_work_stealing() {
        let conf = |threads: usize| {
            let text = format!("[server]\nthreads = {threads}\nwork_stealing = true\n{MINIMAL}");
            Config::from_toml(&text)
                .expect("valid")
                .pingora_server_conf()
        };
        assert!(!conf(1).work_stealing);
        assert!(conf(2).work_stealing);
        assert_eq!(conf(2).threads, 2);
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../conf/streamgate.toml");
        Config::from_toml(text).expect("conf/streamgate.toml must validate");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[upstream]\naddrs = [\"127.0.0.1:1\"]\n[streams]\nlimt = 3\n");
        assert_eq!(e.key, "streams.limt");
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }

    #[test]
    fn bad_duration_is_named() {
        let e = err(&format!("{MINIMAL}[streams]\nlease_ttl = \"soon\"\n"));
        assert_eq!(e.key, "streams.lease_ttl");
    }

    #[test]
    fn zero_limit_is_refused() {
        assert_eq!(
            err(&format!("{MINIMAL}[streams]\nlimit = 0\n")).key,
            "streams.limit"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err(&format!("{MINIMAL}[streams]\nlimit = \"three\"\n"));
        assert_eq!(e.key, "streams.limit");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = err("[upstream]\naddrs = [\"127.0.0.1:8080\"\n");
        assert!(e.key.starts_with("line "), "{e:?}");
    }

    #[test]
    fn missing_upstream_is_refused() {
        assert_eq!(err("[streams]\nlimit = 2\n").key, "upstream");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("[server]\nlisten = [\"nowhere\"]\n", "server.listen"),
            ("[server]\nthreads = 0\n", "server.threads"),
            ("[server]\nread_buffer = 16777216\n", "server.read_buffer"),
            ("[server]\nupgrade_sock = \"\"\n", "server.upgrade_sock"),
            ("[identity]\nheader = \"bad header\"\n", "identity.header"),
            ("[streams]\nroutes = [\"watch\"]\n", "streams.routes"),
            ("[streams]\nroutes = [\"/\"]\n", "streams.routes"),
            ("[streams]\nlease_ttl = \"1ms\"\n", "streams.lease_ttl"),
            (
                "[streams]\nstream_id_header = \"session-id\"\n",
                "streams.stream_id_header",
            ),
            ("[store]\nkind = \"disk\"\n", "store.kind"),
            ("[store]\nkind = \"redis\"\n", "store.url"),
            (
                "[store]\nkind = \"redis\"\nurl = \"http://x\"\n",
                "store.url",
            ),
            ("[store]\nkind = \"redis-cluster\"\n", "store.nodes"),
            ("[store]\nprefix = \"a{b\"\n", "store.prefix"),
            ("[store]\ntimeout = \"0s\"\n", "store.timeout"),
            ("[store]\nrefusal_cache = \"11s\"\n", "store.refusal_cache"),
            ("[store]\nrefusal_cache = \"soon\"\n", "store.refusal_cache"),
            (
                "[store]\non_store_error = \"maybe\"\n",
                "store.on_store_error",
            ),
            ("[metrics]\nlisten = \"0.0.0.0:3001\"\n", "metrics.listen"),
            (
                "[upstream]\nconnect_timeout = \"0s\"\n",
                "upstream.connect_timeout",
            ),
        ] {
            let full = if text.starts_with("[upstream]") {
                format!("{text}addrs = [\"127.0.0.1:8080\"]\n")
            } else {
                format!("{MINIMAL}{text}")
            };
            assert_eq!(err(&full).key, key, "for {text:?}");
        }
    }

    #[test]
    fn redis_store_parses_and_never_prints_its_url() {
        let c = Config::from_toml(&format!(
            "{MINIMAL}[store]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"\ntimeout = \"50ms\"\non_store_error = \"allow\"\n"
        ))
        .unwrap();
        assert_eq!(c.store.kind, StoreKind::Redis);
        assert_eq!(c.store.timeout, Duration::from_millis(50));
        assert_eq!(c.store.on_store_error, OnStoreError::Allow);
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = err(&format!(
            "{MINIMAL}[store]\nkind = \"redis\"\nurl = \"redis://:hunter2@[bad\"\n"
        ));
        assert!(!e.message.contains("hunter2"));
    }

    #[test]
    fn upstream_addresses_are_checked_without_dns() {
        for ok in [
            "origin.internal:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "localhost:1",
        ] {
            let text = format!("[upstream]\naddrs = [\"{ok}\"]\n");
            assert!(Config::from_toml(&text).is_ok(), "{ok}");
        }
        for bad in ["host:99999", "a b:80", ":80", "host", "host:", "[::1]"] {
            let text = format!("[upstream]\naddrs = [\"{bad}\"]\n");
            assert_eq!(err(&text).key, "upstream.addrs", "{bad}");
        }
    }

    #[test]
    fn overrides_win_over_the_file() {
        let o = Overrides {
            listen: vec!["127.0.0.1:4000".into()],
            upstream: vec!["127.0.0.1:9000".into()],
            limit: Some(5),
            metrics: Some("127.0.0.1:9999".into()),
        };
        let c = Config::parse(MINIMAL)
            .unwrap()
            .with_overrides(&o)
            .validate()
            .unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:4000"]);
        assert_eq!(c.upstream.addrs, vec!["127.0.0.1:9000"]);
        assert_eq!(c.streams.limit, 5);
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9999"));
    }

    #[test]
    fn error_display_is_one_line_with_file_and_key() {
        let e = KeyError::new("streams.limit", "must be at least 1").in_file(Path::new("x.toml"));
        let s = e.to_string();
        assert_eq!(s, "x.toml: streams.limit: must be at least 1");
        assert!(!s.contains('\n'));
    }
}
