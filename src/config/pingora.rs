//! Pingora's own server settings (`ServerConf`), from the same file.

use pingora::server::configuration::ServerConf;

use super::Config;

impl Config {
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
            // Upstream TLS trusts these CAs instead of the system's.
            ca_file: self
                .upstream
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string()),
            // Pingora's "grace period" is its fixed wait between closing the listeners and
            // dropping every task: our longest drain. Our `grace_period` (accepting on after
            // SIGTERM) and the early exit once drained are `drain`'s (src/drain.rs).
            grace_period_seconds: Some(whole_seconds(self.server.graceful_shutdown_timeout)),
            // Tokio drops async tasks at once on runtime shutdown; this only bounds
            // blocking work, which the proxy has none of.
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        }
    }
}

/// Pingora takes whole seconds: round up, so a drain is never cut short of its setting.
fn whole_seconds(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
