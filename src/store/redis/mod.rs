//! The shared store: leases in Redis/Valkey, so many proxy instances enforce one exact limit.
//!
//! Each user's leases are one sorted set, `<prefix>:{<user>}:streams` (member = stream id,
//! score = expiry in Redis milliseconds). The `{<user>}` hash tag puts a user on one Redis
//! Cluster shard, and every operation is **one Lua script, one round trip** (`EVALSHA`,
//! loaded again on `NOSCRIPT` by the `redis` crate), atomic in Redis: prune what has run out,
//! count, admit or refuse, and set the key's own expiry so idle users cost nothing.
//!
//! A stream ended on purpose (`DELETE`, a failed open) leaves a tombstone in
//! `<prefix>:{<user>}:ended` for one TTL, so that a hold still refreshing it cannot bring it
//! back; a held lease that is simply *missing* (Redis flushed, restarted empty, failed over
//! to a replica that never saw it) is written back by its next refresh, or the limit would
//! lift under live streams.
//!
//! Time comes from Redis (`TIME` inside the script), never from the proxy, so instances
//! with skewed clocks agree. Redis cannot see in-flight requests, so a held lease is
//! refreshed every third of the TTL while its request runs ([`LeaseHold`] does it); if the
//! instance dies, the TTL alone frees the slot.
//!
//! Every call is bounded by `store.timeout`; the connection reconnects by itself when Redis
//! comes back, and a call made while Redis is down fails fast instead of hanging.
//!
//! [`LeaseHold`]: crate::lease::LeaseHold

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{RedisError, ScriptInvocation};
use tokio::sync::OnceCell;
use uuid::Uuid;

mod api;
mod conn;
mod scripts;

use self::conn::Conn;
pub use self::conn::Target;
use self::scripts::Scripts;

use super::{
    CutReason, Evict, Gone, GoneReason, LeaseCounters, LeaseInfo, OnEnd, OpenWith, Opened,
    RuleKind, StoreError, StreamStore, Tuning, UserRule, UserRules,
};
use crate::identity::StreamId;

/// Most abandoned opens being cleaned up at once; past it, their leases expire by TTL.
const MAX_CLEANUPS: usize = 4096;

/// How often an abandoned open's cleanup tries again while Redis does not answer.
const CLEANUP_RETRY: Duration = Duration::from_millis(250);

pub struct RedisStore {
    target: Target,
    /// PEM CA bundle to trust for `rediss://` instead of the system roots.
    tls_ca: Option<Vec<u8>>,
    conn: OnceCell<Conn>,
    scripts: Scripts,
    /// Opens given up on whose lease is being removed (see [`RedisStore::abandon`]).
    cleanups: Arc<tokio::sync::Semaphore>,
    prefix: String,
    tuning: Tuning,
    counters: LeaseCounters,
    /// `streams.evict_idle_after`: a held lease is refreshed more often than this, so it
    /// never looks idle to an eviction.
    idle_window: Duration,
    /// This instance, as the admin listing names the one that served a stream last.
    instance: String,
}

/// Whole milliseconds, as the scripts take them.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

fn unavailable(e: RedisError) -> StoreError {
    // Redis errors can quote the URL; keep only the kind and the server's own words.
    let detail = match e.detail() {
        Some(d) => format!("{:?}: {d}", e.kind()),
        None => format!("{:?}", e.kind()),
    };
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
    {
        StoreError::Auth
    } else if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(detail)
    }
}

impl RedisStore {
    pub fn new(
        target: Target,
        prefix: &str,
        lease_ttl: Duration,
        timeout: Duration,
        counters: LeaseCounters,
    ) -> Self {
        // rustls needs one process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            target,
            tls_ca: None,
            conn: OnceCell::new(),
            scripts: Scripts::new(),
            cleanups: Arc::new(tokio::sync::Semaphore::new(MAX_CLEANUPS)),
            prefix: prefix.to_owned(),
            tuning: Tuning::new(lease_ttl, timeout),
            counters,
            idle_window: Duration::MAX,
            instance: "streamgate".into(),
        }
    }

    /// Trust this PEM CA bundle (instead of the system roots) for `rediss://`.
    pub fn with_tls_ca(mut self, pem: Vec<u8>) -> Self {
        self.tls_ca = Some(pem);
        self
    }

    /// The one key holding a user's leases; the braces make it a Cluster hash tag.
    pub fn key(&self, user: &str) -> String {
        format!("{}:{{{}}}:streams", self.prefix, user)
    }

    /// Where ends are published, for every instance of this deployment.
    fn ends_channel(&self) -> String {
        format!("{}:ended", self.prefix)
    }

    /// Where evictions are published (apart from ends, so the cut is counted by reason).
    fn evictions_channel(&self) -> String {
        format!("{}:evicted", self.prefix)
    }

    /// Where replacements (a device's new stream in its old one's place) are published.
    fn replacements_channel(&self) -> String {
        format!("{}:replaced", self.prefix)
    }

    /// The user's devices: device hash -> the stream it opened last.
    pub fn devices_key(&self, user: &str) -> String {
        format!("{}:{{{}}}:devices", self.prefix, user)
    }

    /// The user's ids remembered as gone (evicted, ended for good): id -> "reason at until".
    pub fn gone_key(&self, user: &str) -> String {
        format!("{}:{{{}}}:gone", self.prefix, user)
    }

    /// The admin API's rules for the user: `limit` = "<n> <until>", `block` = "<until>".
    pub fn rules_key(&self, user: &str) -> String {
        format!("{}:{{{}}}:rules", self.prefix, user)
    }

    /// Set (with its own expiry) while the user cools down from an eviction.
    pub fn cooldown_key(&self, user: &str) -> String {
        format!("{}:{{{}}}:cooldown", self.prefix, user)
    }

    /// The user's streams: id -> "<opened ms> <instance that served it last>".
    pub fn meta_key(&self, user: &str) -> String {
        format!("{}:{{{}}}:meta", self.prefix, user)
    }

    /// Name this instance in the admin listing (`host:pid` by default at build).
    pub fn with_instance(mut self, instance: &str) -> Self {
        self.instance = instance.replace(' ', "_");
        self
    }

    /// Refresh held leases often enough that none looks idle for `streams.evict_idle_after`.
    pub fn with_idle_window(mut self, window: Duration) -> Self {
        self.idle_window = window;
        self
    }

    /// The user's tombstones: streams ended on purpose, for one TTL (same hash slot).
    pub fn ended_key(&self, user: &str) -> String {
        format!("{}:{{{}}}:ended", self.prefix, user)
    }

    /// Run one script invocation, bounded by the store timeout.
    async fn invoke<T: redis::FromRedisValue + Send>(
        &self,
        inv: ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(async { self.connect().await?.invoke(&inv).await })
            .await
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.tuning.timeout(), fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    fn count_expired(&self, n: i64) {
        if n > 0 {
            self.counters.expired.inc_by(n as u64);
        }
    }

    async fn renew_lease(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(self.key(user))
            .key(self.rules_key(user))
            .key(self.meta_key(user))
            .key(self.devices_key(user))
            .arg(id.to_string())
            .arg(self.tuning.ttl_ms());
        let (ok, expired): (i64, i64) = self.invoke(inv).await?;
        self.count_expired(expired);
        Ok(ok == 1)
    }

    /// A hold's refresh (and its release with `keep`): the lease written back if it went
    /// missing without being ended.
    async fn refresh_held(
        &self,
        user: &str,
        id: StreamId,
    ) -> Result<Option<CutReason>, StoreError> {
        let mut inv = self.scripts.refresh.prepare_invoke();
        inv.key(self.key(user))
            .key(self.ended_key(user))
            .key(self.gone_key(user))
            .key(self.meta_key(user))
            .arg(id.to_string())
            .arg(self.tuning.ttl_ms())
            .arg(&self.instance);
        let (outcome, expired): (i64, i64) = self.invoke(inv).await?;
        self.count_expired(expired);
        Ok(match outcome {
            0 => Some(CutReason::Ended),
            2 => {
                log::warn!("held stream {id} was missing from Redis (flushed, restarted or failed over?): written back");
                None
            }
            3 => Some(CutReason::Evicted),
            _ => None,
        })
    }

    /// An open the proxy gave up on (it timed out, so the client got `503`) may still run
    /// in Redis later: a paused or busy server executes it once it gets to it. Its lease
    /// would then count for a whole TTL with nobody watching. So its removal is sent at
    /// once and again until Redis answers (for at most one TTL, after which the lease is
    /// gone anyway). On the same multiplexed connection the removal runs after the open
    /// it follows; on a new connection the old one's unread open is never run.
    fn abandon(&self, user: &str, id: StreamId) {
        let Some(conn) = self.conn.get().cloned() else {
            return; // never connected: the open was never sent
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(permit) = self.cleanups.clone().try_acquire_owned() else {
            log::warn!("too many abandoned opens to clean up: stream {id} expires by TTL");
            return;
        };
        // `EVAL` with the whole script, not `EVALSHA`: a server that never ran it would
        // answer NOSCRIPT only after the pause, and the retry with the script would come
        // after the client's next open instead of right behind the abandoned one.
        let mut end = redis::cmd("EVAL");
        end.arg(scripts::end_source())
            .arg(4)
            .arg(self.key(user))
            .arg(self.ended_key(user))
            .arg(self.gone_key(user))
            .arg(self.meta_key(user))
            .arg(id.to_string())
            .arg(self.tuning.ttl_ms())
            .arg(self.ends_channel())
            .arg(user)
            .arg(0)
            .arg("")
            .arg("0");
        let (ttl_ms, timeout) = (self.tuning.ttl_ms(), self.tuning.timeout());
        rt.spawn(async move {
            let _permit = permit;
            let give_up = Instant::now() + Duration::from_millis(ttl_ms);
            loop {
                let done = tokio::time::timeout(timeout, conn.query::<(i64, i64)>(&end)).await;
                if matches!(done, Ok(Ok(_))) || Instant::now() >= give_up {
                    return;
                }
                tokio::time::sleep(CLEANUP_RETRY).await;
            }
        });
    }

    /// End a lease; with `gone`, remember its id as gone for that long. `tell`: publish the
    /// end so other instances cut its requests (not for a failed open giving its own slot
    /// back: its one request is the caller, and a cut would replace the origin's answer).
    async fn remove(
        &self,
        user: &str,
        id: StreamId,
        gone: Option<(GoneReason, Duration)>,
        tell: bool,
    ) -> Result<bool, StoreError> {
        let (reason, ms) = gone.map_or(("", 0), |(r, d)| (r.label(), millis(d)));
        let mut inv = self.scripts.end.prepare_invoke();
        inv.key(self.key(user))
            .key(self.ended_key(user))
            .key(self.gone_key(user))
            .key(self.meta_key(user))
            .arg(id.to_string())
            .arg(self.tuning.ttl_ms())
            .arg(self.ends_channel())
            .arg(user)
            .arg(ms)
            .arg(reason)
            .arg(if tell { "1" } else { "0" });
        let (ok, expired): (i64, i64) = self.invoke(inv).await?;
        self.count_expired(expired);
        Ok(ok == 1)
    }
}

impl RedisStore {
    /// Open under `id`; `fresh` when the id was made for this open (nobody else can hold
    /// it), so a timed-out open can be [abandoned](Self::abandon) safely.
    async fn open_id(
        &self,
        user: &str,
        limit: u32,
        id: StreamId,
        fresh: bool,
    ) -> Result<Opened, StoreError> {
        let mut inv = self.scripts.open.prepare_invoke();
        inv.key(self.key(user))
            .key(self.ended_key(user))
            .key(self.rules_key(user))
            .key(self.meta_key(user))
            .arg(limit)
            .arg(self.tuning.ttl_ms())
            .arg(id.to_string())
            .arg(&self.instance);
        let reply: Result<(i64, i64, i64, i64), _> = self.invoke(inv).await;
        if fresh && matches!(reply, Err(StoreError::Timeout)) {
            self.abandon(user, id);
        }
        let (admitted, active, retry_ms, expired) = reply?;
        self.count_expired(expired);
        let retry_after = Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
        if admitted == 5 {
            Ok(Opened::Blocked { retry_after })
        } else if admitted == 1 {
            Ok(Opened::Admitted(id))
        } else if admitted == 2 {
            Ok(Opened::Renewed(id))
        } else {
            Ok(Opened::Rejected {
                active: u32::try_from(active).unwrap_or(u32::MAX),
                retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
            })
        }
    }
}

#[cfg(test)]
mod tests;
