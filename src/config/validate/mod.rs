//! What serde cannot check: addresses, ranges, header names, routes, files.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

mod identity;
mod streams;

use self::identity::validate_plans;

impl Config {
    /// Check everything serde cannot: addresses, ranges, header names, routes.
    pub fn validate(mut self) -> Result<Config, KeyError> {
        self.server.validate(&self.tls)?;
        self.upstream.validate()?;
        self.identity.validate()?;
        self.streams.validate(&self.identity)?;
        self.store.backend = self.store.validate()?;
        self.metrics.validate(&self.server, &self.tls.listen)?;
        validate_plans(&self.plans, &self.streams)?;
        self.admin.validate(&self)?;
        if self.log.access.is_empty() || self.log.access.contains('\0') {
            return Err(KeyError::new(
                "log.access",
                "must be \"stderr\", \"off\" or a file path",
            ));
        }
        Ok(self)
    }
}

impl ServerSection {
    fn validate(&self, tls: &TlsSection) -> Result<(), KeyError> {
        let s = self;
        if s.listen.is_empty() && tls.listen.is_empty() {
            return Err(KeyError::new(
                "server.listen",
                "needs at least one address (or tls.listen)",
            ));
        }
        for a in &s.listen {
            check_socket_addr("server.listen", a)?;
        }
        for a in &tls.listen {
            check_socket_addr("tls.listen", a)?;
        }
        check_no_overlap(&[("server.listen", &s.listen), ("tls.listen", &tls.listen)])?;
        if !tls.listen.is_empty() {
            if !cfg!(feature = "tls") {
                return Err(KeyError::new(
                    "tls.listen",
                    "this build has no HTTPS listeners (build with --features tls)",
                ));
            }
            super::tls::check(tls)?;
        }
        if let Some(name) = &s.instance_name {
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(KeyError::new(
                    "server.instance_name",
                    "must be 1 to 64 visible ASCII characters, no spaces",
                ));
            }
        }
        if s.threads == 0 || s.threads > MAX_THREADS {
            return Err(KeyError::new(
                "server.threads",
                format!("must be between 1 and {MAX_THREADS}"),
            ));
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
        let (lo, hi) = MAX_REQUEST_HEAD_RANGE;
        if !(lo..=hi).contains(&s.max_request_head) {
            return Err(KeyError::new(
                "server.max_request_head",
                format!("must be between {lo} and {hi} bytes"),
            ));
        }
        for (key, d) in [
            ("server.request_head_timeout", s.request_head_timeout),
            (
                "server.downstream_write_timeout",
                s.downstream_write_timeout,
            ),
            ("server.downstream_read_timeout", s.downstream_read_timeout),
        ] {
            check_positive(key, d)?;
        }
        Ok(())
    }
}

impl UpstreamSection {
    fn validate(&self) -> Result<(), KeyError> {
        let u = self;
        if u.addrs.is_empty() {
            return Err(KeyError::new(
                "upstream.addrs",
                "needs at least one address",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for a in &u.addrs {
            check_host_port("upstream.addrs", a.addr())?;
            if a.weight() == 0 {
                return Err(KeyError::new(
                    "upstream.addrs",
                    "a weight must be at least 1",
                ));
            }
            if !seen.insert(a.addr()) {
                return Err(KeyError::new(
                    "upstream.addrs",
                    "an address is listed twice",
                ));
            }
        }
        for (key, d) in [
            ("upstream.connect_timeout", u.connect_timeout),
            ("upstream.read_timeout", u.read_timeout),
            ("upstream.write_timeout", u.write_timeout),
            ("upstream.idle_timeout", u.idle_timeout),
        ] {
            check_positive(key, d)?;
        }
        if u.unhealthy_after > 0 {
            check_positive("upstream.eject_for", u.eject_for)?;
        }
        if u.max_connect_tries == Some(0) {
            return Err(KeyError::new(
                "upstream.max_connect_tries",
                "must be at least 1",
            ));
        }
        if let Some(hc) = &u.health_check {
            hc.validate()?;
        }
        if let Some(host) = &u.host {
            if host.is_empty()
                || http::HeaderValue::from_str(host).is_err()
                || host.contains(['/', ' '])
            {
                return Err(KeyError::new("upstream.host", "not a host name"));
            }
        }
        if let Some(sni) = &u.sni {
            if sni.is_empty() || sni.contains([':', '/', ' ']) {
                return Err(KeyError::new("upstream.sni", "not a server name"));
            }
        }
        if u.tls {
            if !cfg!(feature = "tls") {
                return Err(KeyError::new(
                    "upstream.tls",
                    "this build has no TLS (build with --features tls)",
                ));
            }
            // Pingora turns verification off for a handshake without a server name (as
            // nginx does): refuse that instead of connecting unverified.
            let named = u.sni.is_some()
                || u.host.is_some()
                || u.addrs.iter().all(|a| {
                    a.addr().rsplit_once(':').is_some_and(|(h, _)| {
                        h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('[')
                    })
                });
            if u.verify && !named {
                return Err(KeyError::new(
                    "upstream.sni",
                    "needed to verify servers named by IP address (or set verify = false)",
                ));
            }
            if let Some(ca) = &u.ca_file {
                check_pem_certificates("upstream.ca_file", ca)?;
            }
        } else if u.ca_file.is_some() {
            return Err(KeyError::new(
                "upstream.ca_file",
                "needs upstream.tls = true",
            ));
        }
        Ok(())
    }
}

impl HealthCheckSection {
    fn validate(&self) -> Result<(), KeyError> {
        check_positive("upstream.health_check.interval", self.interval)?;
        check_positive("upstream.health_check.timeout", self.timeout)?;
        if self.healthy_after == 0 {
            return Err(KeyError::new(
                "upstream.health_check.healthy_after",
                "must be at least 1",
            ));
        }
        if self.unhealthy_after == 0 {
            return Err(KeyError::new(
                "upstream.health_check.unhealthy_after",
                "must be at least 1",
            ));
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err(KeyError::new(
                "upstream.health_check.expect_status",
                "not an HTTP status (100 to 599)",
            ));
        }
        if !self.path.starts_with('/')
            || http::uri::PathAndQuery::try_from(self.path.as_str()).is_err()
        {
            return Err(KeyError::new(
                "upstream.health_check.path",
                "must be a path starting with /",
            ));
        }
        Ok(())
    }
}

/// A file of PEM certificates, read now so that a typo fails at start, not at the first
/// connection.
fn check_pem_certificates(key: &str, file: &std::path::Path) -> Result<(), KeyError> {
    let pem =
        std::fs::read(file).map_err(|e| KeyError::new(key, format!("cannot read it: {e}")))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(KeyError::new(key, "holds no PEM certificate"));
    }
    Ok(())
}

impl StoreSection {
    /// Check the section and return the backend it names.
    fn validate(&self) -> Result<Backend, KeyError> {
        let store = self;
        if store.max_users == 0 {
            return Err(KeyError::new("store.max_users", "must be at least 1"));
        }
        check_positive("store.timeout", store.timeout)?;
        if store.health_interval < Duration::from_millis(50) {
            return Err(KeyError::new(
                "store.health_interval",
                "must be at least 50ms",
            ));
        }
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
            check_pem_certificates("store.tls_ca_file", ca)?;
        }
        store.backend()
    }

    /// The typed backend `kind` names, with the keys it needs checked.
    fn backend(&self) -> Result<Backend, KeyError> {
        Ok(match self.kind {
            StoreKind::Memory => Backend::Memory {
                max_users: self.max_users,
            },
            StoreKind::Redis => {
                let url = self
                    .url
                    .clone()
                    .ok_or_else(|| KeyError::new("store.url", "required with kind = \"redis\""))?;
                check_redis_url("store.url", &url)?;
                Backend::Redis { url }
            }
            StoreKind::RedisCluster => {
                if self.nodes.is_empty() {
                    return Err(KeyError::new(
                        "store.nodes",
                        "required with kind = \"redis-cluster\"",
                    ));
                }
                for n in &self.nodes {
                    check_redis_url("store.nodes", n)?;
                }
                Backend::Cluster {
                    nodes: self.nodes.clone(),
                }
            }
        })
    }
}

impl MetricsSection {
    fn validate(&self, server: &ServerSection, tls_listen: &[SocketAddr]) -> Result<(), KeyError> {
        if let Some(m) = &self.listen {
            check_socket_addr("metrics.listen", m)?;
            check_no_overlap(&[
                ("server.listen", &server.listen),
                ("tls.listen", tls_listen),
                ("metrics.listen", std::slice::from_ref(m)),
            ])?;
        }
        Ok(())
    }
}

impl AdminSection {
    fn validate(&self, c: &Config) -> Result<(), KeyError> {
        let Some(a) = &self.listen else {
            return Ok(());
        };
        check_socket_addr("admin.listen", a)?;
        check_no_overlap(&[
            ("server.listen", &c.server.listen),
            ("tls.listen", &c.tls.listen),
            ("metrics.listen", c.metrics.listen.as_slice()),
            ("admin.listen", std::slice::from_ref(a)),
        ])?;
        for (key, file, env) in [
            (
                "admin.read_token",
                &self.read_token_file,
                &self.read_token_env,
            ),
            (
                "admin.write_token",
                &self.write_token_file,
                &self.write_token_env,
            ),
        ] {
            if file.is_some() && env.is_some() {
                return Err(KeyError::new(
                    format!("{key}_env"),
                    "set the _file or the _env key, not both",
                ));
            }
        }
        if self.write_token_file.is_none() && self.write_token_env.is_none() {
            return Err(KeyError::new(
                "admin.write_token_file",
                "admin.listen needs a write token (write_token_file or write_token_env)",
            ));
        }
        Ok(())
    }
}

/// Most worker threads: each is a runtime of its own, and far more than cores only costs.
const MAX_THREADS: usize = 1024;

fn check_socket_addr(key: &str, addr: &SocketAddr) -> Result<(), KeyError> {
    if addr.port() == 0 {
        return Err(KeyError::new(key, "port 0 is not a port to listen on"));
    }
    Ok(())
}

/// Whether two listeners would want the same socket: the same port, and the same address
/// or a wildcard covering the other (`0.0.0.0` covers IPv4, `[::]` both families).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// No address is listened on twice, within one key or across them.
fn check_no_overlap(lists: &[(&str, &[SocketAddr])]) -> Result<(), KeyError> {
    let all: Vec<(&str, SocketAddr)> = lists
        .iter()
        .flat_map(|(key, addrs)| addrs.iter().map(move |a| (*key, *a)))
        .collect();
    for (i, (key_a, a)) in all.iter().enumerate() {
        if let Some((key_b, _)) = all[i + 1..].iter().find(|(_, b)| overlaps(*a, *b)) {
            return Err(KeyError::new(
                *key_b,
                format!("listens on {a} again (also in {key_a}): each address once"),
            ));
        }
    }
    Ok(())
}

/// `host:port` or `[v6]:port`, checked without resolving (no DNS at check time: the
/// name is resolved when the server starts).
fn check_host_port(key: &str, addr: &str) -> Result<(), KeyError> {
    let bad = || KeyError::new(key, "not a host:port address (port 1 to 65535)");
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return if a.port() == 0 { Err(bad()) } else { Ok(()) };
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(bad)?;
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
