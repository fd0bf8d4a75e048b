//! Which content server serves a request, and which ones are out.
//!
//! Selection is `pingora-load-balancing`'s (weighted round robin, Ketama consistent
//! hashing), with least-connections here because the crate has none. A server is
//! *usable* when its active health check (`[upstream.health_check]`, run by
//! [`HealthChecks`]) says healthy and it is not passively ejected (`unhealthy_after`
//! consecutive connect failures or 5xx answers take it out for `eject_for`). A request
//! never tries a server it tried already, and when no server is usable it is refused at
//! once, without a connection to a server known dead.

use std::cell::Cell;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use prometheus::{IntCounter, Registry};

use crate::config::{HashKey, Selection, UpstreamSection};

mod health;
mod metrics;
#[cfg(test)]
mod tests;

pub use self::health::HealthChecks;

/// Why the upstreams could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream.addrs: {addr}: {why}")]
    Resolve { addr: String, why: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// One content server (one address; a name that resolves to several is several).
struct Server {
    addr: std::net::SocketAddr,
    backend: Backend,
    /// `ip:port`: the metrics label and the log name.
    label: String,
    /// The host part as configured (a name, for TLS), without the port.
    host: String,
    weight: usize,
    /// Requests connected or connecting to it now (`least_conn`).
    active: AtomicUsize,
    /// Consecutive connect failures and 5xx answers.
    failures: AtomicU32,
    /// Out until this many ms after [`Upstreams::epoch`] (0: never ejected).
    ejected_until: AtomicU64,
    requests: IntCounter,
    connect_failures: IntCounter,
    status_failures: IntCounter,
    ejections: IntCounter,
}

enum Pick {
    RoundRobin(LoadBalancer<RoundRobin>),
    /// The balancer only for its health state: the choice is ours.
    LeastConn(LoadBalancer<RoundRobin>, AtomicUsize),
    Consistent(LoadBalancer<Consistent>),
}

impl Pick {
    fn backends(&self) -> &Backends {
        match self {
            Pick::RoundRobin(lb) | Pick::LeastConn(lb, _) => lb.backends(),
            Pick::Consistent(lb) => lb.backends(),
        }
    }
}

/// How servers are reached over TLS.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub verify: bool,
}

/// The content servers, their state, and the choice among them.
pub struct Upstreams {
    servers: Box<[Server]>,
    pick: Pick,
    hash_key: HashKey,
    tries: usize,
    unhealthy_after: u32,
    eject_for: Duration,
    epoch: Instant,
    /// The first round of active checks has finished (true when there are none).
    checked: Arc<std::sync::atomic::AtomicBool>,
    requires_upstream: bool,
    check: Option<crate::config::HealthCheckSection>,
    pub(crate) tls: Option<UpstreamTls>,
    /// `upstream.host`, sent as the `Host` header.
    pub(crate) host: Option<HeaderValue>,
    moves: IntCounter,
}

/// A server chosen for one attempt: its address, and a count held in `least_conn`'s
/// tally until the attempt ends (dropped).
pub struct Chosen {
    upstreams: Arc<Upstreams>,
    index: usize,
}

impl Chosen {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.upstreams.servers[self.index].addr
    }

    /// The server name for TLS: `sni`, else `host`, else the configured name.
    pub fn sni(&self) -> String {
        let u = &self.upstreams;
        match u.tls.as_ref().and_then(|t| t.sni.clone()) {
            Some(s) => s,
            None => u.servers[self.index].host.clone(),
        }
    }

    /// The connection failed: counted towards ejection.
    pub fn connect_failed(&self) {
        let s = &self.upstreams.servers[self.index];
        s.connect_failures.inc();
        self.upstreams.failed(self.index);
    }

    /// The server answered with this status: 5xx counts towards ejection, anything else
    /// clears the count.
    pub fn answered(&self, status: u16) {
        let u = &self.upstreams;
        if status >= 500 {
            u.servers[self.index].status_failures.inc();
            u.failed(self.index);
        } else if u.servers[self.index].failures.load(Relaxed) != 0 {
            u.servers[self.index].failures.store(0, Relaxed);
        }
    }
}

impl Drop for Chosen {
    fn drop(&mut self) {
        self.upstreams.servers[self.index]
            .active
            .fetch_sub(1, Relaxed);
    }
}

impl Upstreams {
    /// Resolve the addresses (names once, now) and build the selection; registers the
    /// `streamgate_upstream_*` metrics.
    pub fn new(c: &UpstreamSection, registry: &Registry) -> Result<Arc<Self>, UpstreamError> {
        let m = metrics::Families::new(registry)?;
        let mut servers = Vec::new();
        for a in &c.addrs {
            let resolved = a
                .addr()
                .to_socket_addrs()
                .map_err(|e| UpstreamError::Resolve {
                    addr: a.addr().to_owned(),
                    why: e.to_string(),
                })?;
            let host = a
                .addr()
                .rsplit_once(':')
                .map_or(a.addr(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            for addr in resolved {
                if servers.iter().any(|s: &Server| s.label == addr.to_string()) {
                    continue;
                }
                let weight = a.weight() as usize;
                let label = addr.to_string();
                servers.push(Server {
                    addr,
                    backend: Backend {
                        addr: PingoraAddr::Inet(addr),
                        weight,
                        ext: http::Extensions::new(),
                    },
                    host: host.clone(),
                    weight,
                    active: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    requests: m.requests.with_label_values(&[&label]),
                    connect_failures: m.failures.with_label_values(&[&label, "connect"]),
                    status_failures: m.failures.with_label_values(&[&label, "status_5xx"]),
                    ejections: m.ejections.with_label_values(&[&label]),
                    label,
                });
            }
        }
        if servers.is_empty() {
            return Err(UpstreamError::Resolve {
                addr: String::new(),
                why: "no address resolved".into(),
            });
        }
        let set: std::collections::BTreeSet<Backend> =
            servers.iter().map(|s| s.backend.clone()).collect();
        let backends = || Backends::new(discovery::Static::new(set.clone()));
        let mut pick = match c.selection {
            Selection::RoundRobin => Pick::RoundRobin(LoadBalancer::from_backends(backends())),
            Selection::LeastConn => {
                Pick::LeastConn(LoadBalancer::from_backends(backends()), AtomicUsize::new(0))
            }
            Selection::Consistent => Pick::Consistent(LoadBalancer::from_backends(backends())),
        };
        let checked = Arc::new(std::sync::atomic::AtomicBool::new(c.health_check.is_none()));
        if let Some(hc) = &c.health_check {
            let probe = health::probe(c, hc, checked.clone());
            match &mut pick {
                Pick::RoundRobin(lb) | Pick::LeastConn(lb, _) => lb.set_health_check(probe),
                Pick::Consistent(lb) => lb.set_health_check(probe),
            }
        }
        // Static discovery answers at once: the selection is built before any request.
        use futures_util::FutureExt;
        let built = match &pick {
            Pick::RoundRobin(lb) | Pick::LeastConn(lb, _) => lb.update().now_or_never(),
            Pick::Consistent(lb) => lb.update().now_or_never(),
        };
        debug_assert!(
            matches!(built, Some(Ok(()))),
            "static discovery does not wait"
        );
        let tries = c.connect_tries(servers.len());
        let upstreams = Arc::new(Self {
            servers: servers.into_boxed_slice(),
            pick,
            hash_key: c.hash_key,
            tries,
            unhealthy_after: c.unhealthy_after,
            eject_for: c.eject_for,
            epoch: Instant::now(),
            checked,
            requires_upstream: c.ready_requires_upstream,
            check: c.health_check.clone(),
            tls: c.tls.then(|| UpstreamTls {
                sni: c.tls_name(),
                verify: c.verify,
            }),
            host: c.host.as_ref().and_then(|h| HeaderValue::from_str(h).ok()),
            moves: m.moves.clone(),
        });
        metrics::register_health(registry, &upstreams, &m)?;
        Ok(upstreams)
    }

    /// What `consistent` hashes for a request.
    pub fn hash_key(&self) -> HashKey {
        self.hash_key
    }

    /// Servers one request may try.
    pub fn tries(&self) -> usize {
        self.tries
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn healthy(&self, i: usize) -> bool {
        self.pick.backends().ready(&self.servers[i].backend)
    }

    fn ejected(&self, i: usize, now: u64) -> bool {
        self.servers[i].ejected_until.load(Relaxed) > now
    }

    /// Whether a server may be sent a request now.
    fn usable(&self, i: usize, now: u64) -> bool {
        self.healthy(i) && !self.ejected(i, now)
    }

    fn index_of(&self, b: &Backend) -> usize {
        self.servers
            .iter()
            .position(|s| s.backend.addr == b.addr)
            .unwrap_or(0)
    }

    /// `/ready`: the first round of checks is done and, unless `ready_requires_upstream`
    /// is off, some server is usable.
    pub fn ready(&self) -> bool {
        if !self.checked.load(Relaxed) {
            return false;
        }
        let now = self.now_ms();
        !self.requires_upstream || (0..self.servers.len()).any(|i| self.usable(i, now))
    }

    /// The server for the next attempt of a request: usable, not in `tried`, chosen by
    /// the configured selection on `key`. `None` when no such server is left.
    pub fn select(self: &Arc<Self>, key: &[u8], tried: &[usize]) -> Option<Chosen> {
        let now = self.now_ms();
        let accept = |i: usize| !tried.contains(&i) && self.usable(i, now);
        let index = match &self.pick {
            Pick::RoundRobin(lb) => {
                self.first_accepted(key, tried, |k, f| lb.select_with(k, 256, f), accept)
            }
            Pick::Consistent(lb) => {
                self.first_accepted(key, tried, |k, f| lb.select_with(k, 256, f), accept)
            }
            Pick::LeastConn(_, next) => {
                let n = self.servers.len();
                let start = next.fetch_add(1, Relaxed) % n;
                // Fewest in flight per unit of weight (a/w < b/w' as a*w' < b*w), the
                // tie broken by a rotating start so equal servers share the load.
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| accept(i))
                    .min_by(|&a, &b| {
                        let (sa, sb) = (&self.servers[a], &self.servers[b]);
                        (sa.active.load(Relaxed) * sb.weight)
                            .cmp(&(sb.active.load(Relaxed) * sa.weight))
                    })
            }
        }?;
        let s = &self.servers[index];
        s.active.fetch_add(1, Relaxed);
        s.requests.inc();
        Some(Chosen {
            upstreams: self.clone(),
            index,
        })
    }

    /// The balancer's first accepted server; a choice other than its very first candidate
    /// on a request's first attempt is a selection move (its server was out).
    fn first_accepted(
        &self,
        key: &[u8],
        tried: &[usize],
        select: impl FnOnce(&[u8], &dyn Fn(&Backend, bool) -> bool) -> Option<Backend>,
        accept: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let first = Cell::new(None);
        let chosen = select(key, &|b, _| {
            let i = self.index_of(b);
            if first.get().is_none() {
                first.set(Some(i));
            }
            accept(i)
        })
        .map(|b| self.index_of(&b));
        if tried.is_empty() && chosen.is_some() && chosen != first.get() {
            self.moves.inc();
        }
        chosen
    }

    /// One more failure for a server; at `unhealthy_after` in a row it is ejected, unless
    /// it is the last usable one (as nginx never marks a lone server down).
    fn failed(&self, i: usize) {
        let s = &self.servers[i];
        let n = s.failures.fetch_add(1, Relaxed) + 1;
        if self.unhealthy_after == 0 || n < self.unhealthy_after {
            return;
        }
        let now = self.now_ms();
        let others = (0..self.servers.len()).any(|j| j != i && self.usable(j, now));
        if !others || self.ejected(i, now) {
            return;
        }
        s.failures.store(0, Relaxed);
        s.ejected_until
            .store(now + self.eject_for.as_millis() as u64, Relaxed);
        s.ejections.inc();
        log::warn!(
            "upstream {} ejected for {:?} after {n} consecutive failures",
            s.label,
            self.eject_for
        );
    }
}
