//! `[upstream]`: the content servers, how one is chosen for a request, how a dead one is
//! noticed (active checks, passive ejection) and how they are reached (timeouts, TLS,
//! `Host`). The runtime side is [`crate::upstream`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Content servers: `"host:port"`, or `{ addr = "host:port", weight = 2 }`. A name is
    /// resolved once, at start (every address it resolves to is one server), as nginx does
    /// without a `resolver`.
    pub addrs: Vec<UpstreamAddr>,
    /// How a server is chosen: `round_robin` (weighted), `least_conn` (fewest requests in
    /// flight per weight) or `consistent` (Ketama on `hash_key`: a user's requests stay on
    /// one server, so its cache keeps their segments, and move only when it is out).
    #[serde(default)]
    pub selection: Selection,
    /// What `consistent` hashes: the user (default), the stream, or the path.
    #[serde(default)]
    pub hash_key: HashKey,
    /// Active checks, run in the background; absent: none (passive ejection still acts).
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
    /// Passive ejection: this many consecutive connect failures or 5xx answers from a
    /// server take it out for `eject_for` (nginx's `max_fails`/`fail_timeout`, Envoy's
    /// outlier detection). 0 turns it off. The last usable server is never ejected.
    #[serde(default = "d_unhealthy_after")]
    pub unhealthy_after: u32,
    #[serde(default = "d_eject_for", with = "humantime_serde")]
    pub eject_for: Duration,
    /// Servers one request may try when connecting fails (never one it tried already);
    /// default: the number of servers, at most 3. A request is retried only before any of
    /// it went upstream.
    #[serde(default)]
    pub max_connect_tries: Option<u32>,
    /// `/ready` answers 503 while no server is usable (and before the first round of
    /// active checks), so a load balancer sends viewers to an instance that can serve them.
    #[serde(default = "d_true")]
    pub ready_requires_upstream: bool,
    /// Reach the servers over HTTPS (needs a build with `--features tls`).
    #[serde(default)]
    pub tls: bool,
    /// The TLS server name; default: `host`, else the name in the server's address.
    #[serde(default)]
    pub sni: Option<String>,
    /// Check the servers' certificates (chain and name). Turn off only for a test origin.
    #[serde(default = "d_true")]
    pub verify: bool,
    /// CA certificates (PEM) that sign the servers' certificates; default: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The `Host` header sent upstream (a virtual-hosted origin: an object store, a CDN's
    /// origin shield); default: the client's.
    #[serde(default)]
    pub host: Option<String>,
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
    #[serde(default = "d_true")]
    pub forwarded_for: bool,
}

/// Every default, and no address (the file must name at least one).
impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            selection: Selection::default(),
            hash_key: HashKey::default(),
            health_check: None,
            unhealthy_after: d_unhealthy_after(),
            eject_for: d_eject_for(),
            max_connect_tries: None,
            ready_requires_upstream: true,
            tls: false,
            sni: None,
            verify: true,
            ca_file: None,
            host: None,
            connect_timeout: d_connect_timeout(),
            read_timeout: d_io_timeout(),
            write_timeout: d_io_timeout(),
            idle_timeout: d_idle_timeout(),
            keepalive_pool_size: d_keepalive_pool(),
            forwarded_for: true,
        }
    }
}

impl UpstreamSection {
    /// The TLS server name set for every server: `sni`, else `host` without its port;
    /// `None`: each server's own name from its address.
    pub fn tls_name(&self) -> Option<String> {
        self.sni.clone().or_else(|| {
            self.host
                .as_ref()
                .map(|h| h.rsplit_once(':').map_or(h.as_str(), |(n, _)| n).to_owned())
        })
    }

    /// Servers a request may try: `max_connect_tries`, or the number of servers up to 3.
    pub fn connect_tries(&self, servers: usize) -> usize {
        match self.max_connect_tries {
            Some(n) => n as usize,
            None => servers.clamp(1, 3),
        }
    }
}

/// One entry of `upstream.addrs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum UpstreamAddr {
    Plain(String),
    Weighted(WeightedAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedAddr {
    pub addr: String,
    #[serde(default = "d_weight")]
    pub weight: u32,
}

impl UpstreamAddr {
    pub fn addr(&self) -> &str {
        match self {
            UpstreamAddr::Plain(a) => a,
            UpstreamAddr::Weighted(w) => &w.addr,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            UpstreamAddr::Plain(_) => 1,
            UpstreamAddr::Weighted(w) => w.weight,
        }
    }
}

impl From<&str> for UpstreamAddr {
    fn from(a: &str) -> Self {
        UpstreamAddr::Plain(a.to_owned())
    }
}

impl From<String> for UpstreamAddr {
    fn from(a: String) -> Self {
        UpstreamAddr::Plain(a)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    RoundRobin,
    LeastConn,
    Consistent,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The user (session id or token subject); requests without one hash their path.
    #[default]
    User,
    /// The stream id; a stream's first request (no id yet) hashes its user.
    Stream,
    Path,
}

/// `[upstream.health_check]`: what a probe is and how often it runs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckSection {
    pub kind: CheckKind,
    /// `http` checks: the path asked for (`GET`), and the status that means healthy.
    pub path: String,
    pub expect_status: u16,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Per probe: connecting, and for `http` the answer's head.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passes that bring a server back, and failures that take it out. The
    /// first round decides on one probe: a server down at start is never sent a viewer.
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

impl Default for HealthCheckSection {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            path: "/".into(),
            expect_status: 200,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// A connection (and a TLS handshake with `upstream.tls`) is accepted.
    #[default]
    Tcp,
    /// `GET path` answers `expect_status`.
    Http,
}

fn d_true() -> bool {
    true
}
fn d_weight() -> u32 {
    1
}
fn d_unhealthy_after() -> u32 {
    3
}
fn d_eject_for() -> Duration {
    Duration::from_secs(10)
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
