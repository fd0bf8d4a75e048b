//! What serde cannot check: addresses, ranges, header names, routes, files.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;

use super::*;

impl Config {
    /// Check everything serde cannot: addresses, ranges, header names, routes.
    pub fn validate(self) -> Result<Config, KeyError> {
        self.server.validate(&self.tls)?;
        self.upstream.validate()?;
        self.identity.validate()?;
        self.streams.validate(&self.identity)?;
        self.store.validate()?;
        self.metrics.validate(&self.server)?;
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
        if !tls.listen.is_empty() {
            if !cfg!(feature = "tls") {
                return Err(KeyError::new(
                    "tls.listen",
                    "this build has no HTTPS listeners (build with --features tls)",
                ));
            }
            super::tls::check(tls)?;
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
        Ok(())
    }
}

impl IdentitySection {
    fn validate(&self) -> Result<(), KeyError> {
        check_header_name("identity.header", &self.header)?;
        if self.max_len == 0 || self.max_len > 4096 {
            return Err(KeyError::new(
                "identity.max_len",
                "must be between 1 and 4096",
            ));
        }
        Ok(())
    }
}

impl StreamsSection {
    fn validate(&self, identity: &IdentitySection) -> Result<(), KeyError> {
        let st = self;
        if st.limit == 0 {
            return Err(KeyError::new("streams.limit", "must be at least 1"));
        }
        if st.lease_ttl < Duration::from_millis(100) {
            return Err(KeyError::new("streams.lease_ttl", "must be at least 100ms"));
        }
        check_header_name("streams.stream_id_header", &st.stream_id_header)?;
        if st.stream_id_header.eq_ignore_ascii_case(&identity.header) {
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
        Ok(())
    }
}

impl StoreSection {
    fn validate(&self) -> Result<(), KeyError> {
        let store = self;
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
        Ok(())
    }
}

impl MetricsSection {
    fn validate(&self, server: &ServerSection) -> Result<(), KeyError> {
        if let Some(m) = &self.listen {
            check_socket_addr("metrics.listen", m)?;
            if server.listen.iter().any(|l| l == m) {
                return Err(KeyError::new(
                    "metrics.listen",
                    "must differ from server.listen",
                ));
            }
        }
        Ok(())
    }
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
