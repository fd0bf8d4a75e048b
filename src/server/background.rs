//! The server's background services: store housekeeping and health checks, stream ends
//! from other instances, and the JWT keys kept fresh (files watched, `jwks_url` fetched).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::inflight::StreamInflight;
use crate::jwt::RemoteKeys;
use crate::reload::Reloader;
use crate::store::StreamStore;

/// How often the JWT key files are looked at for a change.
const KEY_FILES_CHECK: Duration = Duration::from_secs(2);

/// A key file that changes (a JWKS rotated by the login service's deploy) is read again
/// within [`KEY_FILES_CHECK`], without waiting for a `SIGHUP`.
pub(super) struct WatchKeys {
    pub(super) reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for WatchKeys {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = self.reloader.key_files();
        let mut tick = tokio::time::interval(KEY_FILES_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = self.reloader.key_files();
            if now != seen {
                // A half-written file fails to load and keeps the old keys; once its
                // writer is done it has changed again, and the next look loads it whole.
                self.reloader.reload_keys();
                seen = now;
            }
        }
    }
}

/// `identity.jwt.jwks_url`: fetched at start and kept fresh (src/jwt/remote.rs).
pub(super) struct FetchKeys {
    pub(super) remote: Arc<RemoteKeys>,
}

#[async_trait]
impl BackgroundService for FetchKeys {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = self.remote.keep_fresh() => {}
        }
    }
}

/// Streams ended through other instances: their requests in flight here are cut.
pub(super) struct FollowEnds {
    pub(super) store: Arc<dyn StreamStore>,
    pub(super) inflight: Arc<StreamInflight>,
}

#[async_trait]
impl BackgroundService for FollowEnds {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let cut = |user: &str, id, why| {
            self.inflight.cut(user, id, why);
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = self.store.follow_ends(&cut) => {}
        }
    }
}

/// How often store housekeeping runs.
pub(super) const HOUSEKEEPING_TICK: Duration = Duration::from_millis(10);

pub(super) struct Housekeeping {
    pub(super) store: Arc<dyn StreamStore>,
    pub(super) every: Duration,
    /// How often to check a shared store's connection (`store.health_interval`); `None`
    /// for the memory store.
    pub(super) health: Option<Duration>,
    pub(super) up: prometheus::IntGauge,
}

impl Housekeeping {
    /// `PING` the store: a connection Redis closed while this instance was idle is
    /// replaced here, not by the next request (which would fail). Logs once per change.
    async fn check_health(&self, was_up: &mut Option<bool>) {
        let result = self.store.ping().await;
        let up = result.is_ok();
        self.up.set(i64::from(up));
        if *was_up != Some(up) {
            match result {
                Ok(()) if was_up.is_some() => log::info!("the store answers again"),
                Ok(()) => {}
                Err(e) => log::warn!("the store does not answer its health check: {e}"),
            }
            *was_up = Some(up);
        }
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        self.up.set(1);
        let Some(every) = self.health else {
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tick.tick() => self.store.maintain(),
                }
            }
        };
        // The first check runs at once: a wrong password or an unreachable Redis is one
        // line at start, not a surprise at the first viewer.
        let mut health = tokio::time::interval(every);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.store.maintain(),
                _ = health.tick() => self.check_health(&mut was_up).await,
            }
        }
    }
}
