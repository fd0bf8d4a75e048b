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
            grace_period_seconds: Some(self.server.grace_period.as_secs()),
            graceful_shutdown_timeout_seconds: Some(
                self.server.graceful_shutdown_timeout.as_secs(),
            ),
            ..ServerConf::default()
        }
    }
}
