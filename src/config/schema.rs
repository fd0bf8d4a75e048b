//! The configuration file's shape: one struct per section, each with its defaults (one
//! `impl Default` per section; `Config::default()` is the whole file's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::identity::{IdentitySection, PlanSection};
use super::store::StoreSection;
use super::streams::StreamsSection;
use super::upstream::UpstreamSection;

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
    /// `[admin]`: the admin API's own listener; off unless `listen` is set.
    #[serde(default)]
    pub admin: AdminSection,
}

/// The admin API (`[admin]`): support staff list a user's streams and end them. Its own
/// listener, never the proxy's; every request needs a bearer token.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Where the admin API listens; off when absent. Keep it on a private address.
    #[serde(deserialize_with = "addr")]
    pub listen: Option<SocketAddr>,
    /// The token that may read (list streams, stats), from a file or an environment
    /// variable (named here; the value is never logged).
    pub read_token_file: Option<PathBuf>,
    pub read_token_env: Option<String>,
    /// The token that may also end streams.
    pub write_token_file: Option<PathBuf>,
    pub write_token_env: Option<String>,
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
    #[serde(deserialize_with = "addrs")]
    pub listen: Vec<SocketAddr>,
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
    #[serde(deserialize_with = "addrs")]
    pub listen: Vec<SocketAddr>,
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
    /// This instance's name where others must tell it apart (the admin listing's
    /// `served_by` on Redis). Unset: `<host name>:<pid>`.
    pub instance_name: Option<String>,
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
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3001))],
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
            instance_name: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where Prometheus scrapes `/metrics`; leave out to serve no metrics.
    #[serde(deserialize_with = "addr")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
        }
    }
}

/// Listen addresses, parsed once: an error names the key (not the element) and never
/// echoes the value.
fn addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|a| parse_addr(a))
        .collect()
}

fn addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|a| parse_addr(&a))
        .transpose()
}

fn parse_addr<E: serde::de::Error>(a: &str) -> Result<SocketAddr, E> {
    a.parse().map_err(|_| E::custom("not an IP:port address"))
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub upstream: Vec<String>,
    pub limit: Option<u32>,
    pub metrics: Option<SocketAddr>,
}
