//! What serde cannot check in `[streams]`: the limit and TTL, header and parameter names,
//! hosts, the eviction and dry-run settings.

use std::time::Duration;

use super::*;

impl StreamsSection {
    pub(super) fn validate(&self, identity: &IdentitySection) -> Result<(), KeyError> {
        let st = self;
        if st.limit == 0 {
            return Err(KeyError::new("streams.limit", "must be at least 1"));
        }
        if st.lease_ttl < Duration::from_millis(100) {
            return Err(KeyError::new("streams.lease_ttl", "must be at least 100ms"));
        }
        if let Some(d) = &st.device_header {
            if d.name() == identity.header.name() || d.name() == st.stream_id_header.name() {
                return Err(KeyError::new(
                    "streams.device_header",
                    "must differ from identity.header and streams.stream_id_header",
                ));
            }
        }
        if st.device_param.is_empty()
            || st.device_param == st.stream_id_param
            || !st
                .device_param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(KeyError::new(
                "streams.device_param",
                "must be 1 or more letters, digits, '-', '.', '_' or '~', and differ from streams.stream_id_param",
            ));
        }
        if st.shadow_limit == Some(0) {
            return Err(KeyError::new("streams.shadow_limit", "must be at least 1"));
        }
        if st.evict_idle_after < Duration::from_millis(100) {
            return Err(KeyError::new(
                "streams.evict_idle_after",
                "must be at least 100ms",
            ));
        }
        if self.on_limit == OnLimit::EvictIdle && st.evict_idle_after >= st.lease_ttl {
            return Err(KeyError::new(
                "streams.evict_idle_after",
                "must be shorter than streams.lease_ttl with on_limit = \"evict_idle\" (an \
                 idle stream would expire before it could be evicted)",
            ));
        }
        if st.tombstone_ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(KeyError::new(
                "streams.tombstone_ttl",
                "must be at most 7 days",
            ));
        }
        if st.evict_cooldown > Duration::from_secs(24 * 3600) {
            return Err(KeyError::new(
                "streams.evict_cooldown",
                "must be at most 24h",
            ));
        }
        if st.stream_id_header.name() == identity.header.name() {
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
            if !r.starts_with('/')
                || r.contains(['?', '#', ';', '%'])
                || !r.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(KeyError::new(
                    "streams.routes",
                    "each route must be a path starting with '/', of visible ASCII without '?', '#', ';' or '%'",
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
