//! A short local memory of refusals, in front of a shared store (`store.refusal_cache`).
//!
//! With the Redis store every refused open is a round trip, so a user at the limit who
//! keeps retrying (a player's retry loop, many screens on one account) costs Redis a script
//! per request, and the instance a round trip of latency per refusal. Like the local cache
//! of over-limit keys in Envoy's rate-limit service, an instance may answer such a user
//! itself for a short while after the store refused it.
//!
//! It only ever refuses, so the limit stays exact: what it trades is how soon a slot freed
//! elsewhere is seen. A remembered refusal ends
//! - at the latest after `store.refusal_cache`,
//! - when the user's earliest lease can expire (the refusal's own `Retry-After`), so a lease
//!   that runs out is never seen late,
//! - at once when this instance ends one of the user's streams or gives a failed open back.
//!
//! A stream ended on another instance is seen up to `store.refusal_cache` late. Off (`0s`)
//! by default: every open then asks the store.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::sync::Cache;
use prometheus::IntCounter;

use super::{
    CutReason, Gone, GoneReason, LeaseInfo, OnEnd, OpenWith, Opened, RuleKind, StoreError,
    StreamStore, UserRule, UserRules,
};
use crate::identity::StreamId;

/// Most users remembered at once; beyond it moka evicts the least recently used (which
/// only means asking the store again).
const CAPACITY: u64 = 100_000;

/// Counters of slots freed here (ends, failed opens), by a hash of the user. A refusal the
/// store decided before such a free must not be remembered after it: see `open`.
const FREED_SHARDS: usize = 64;

#[derive(Clone, Copy)]
struct Refusal {
    /// The limit the store refused against (a user's limit may differ per request policy).
    limit: u32,
    active: u32,
    /// When the user's earliest lease can expire.
    frees_at: Instant,
    /// When this memory of the refusal ends.
    until: Instant,
}

pub struct RefusalCache {
    inner: Arc<dyn StreamStore>,
    refused: Cache<Arc<str>, Refusal>,
    keep: Duration,
    answered: IntCounter,
    freed: [AtomicU64; FREED_SHARDS],
    shard_of: RandomState,
}

impl RefusalCache {
    /// Remember `inner`'s refusals for up to `keep`; `answered` counts refusals answered
    /// from memory.
    pub fn new(inner: Arc<dyn StreamStore>, keep: Duration, answered: IntCounter) -> Self {
        Self {
            inner,
            refused: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(keep)
                .build(),
            keep,
            answered,
            freed: std::array::from_fn(|_| AtomicU64::new(0)),
            shard_of: RandomState::new(),
        }
    }

    fn freed(&self, user: &str) -> &AtomicU64 {
        &self.freed[(self.shard_of.hash_one(user) as usize) % FREED_SHARDS]
    }

    /// A slot of `user` was freed here: forget the refusal, and keep refusals decided
    /// before this moment (still on their way back from the store) from being remembered.
    fn forget(&self, user: &str) {
        self.freed(user).fetch_add(1, Ordering::AcqRel);
        self.refused.invalidate(user);
    }

    /// The remembered refusal of `user` against `limit`, if it still stands at `now`.
    fn remembered(&self, user: &str, limit: u32, now: Instant) -> Option<Refusal> {
        self.refused
            .get(user)
            .filter(|r| r.limit == limit && now < r.until)
    }
}

impl RefusalCache {
    /// Open through the store (under `id` when given), answering a fresh open from a
    /// remembered refusal first.
    async fn open_checked(
        &self,
        user: &str,
        limit: u32,
        id: Option<StreamId>,
    ) -> Result<Opened, StoreError> {
        let now = Instant::now();
        // Only a fresh open may be answered from memory (see `open_as`).
        if let Some(r) = self.remembered(user, limit, now).filter(|_| id.is_none()) {
            self.answered.inc();
            return Ok(Opened::Rejected {
                active: r.active,
                retry_after: r.frees_at.saturating_duration_since(now),
            });
        }
        let freed = self.freed(user);
        let before = freed.load(Ordering::Acquire);
        // A fresh open stays one for the store (which may then clean up after a timeout).
        let opened = match id {
            Some(id) => self.inner.open_as(user, limit, id).await?,
            None => self.inner.open(user, limit).await?,
        };
        if let Opened::Rejected {
            active,
            retry_after,
        } = opened
        {
            // Remember it only if no slot of this user was freed here while the store
            // decided; re-checked after the insert, since a free may land in between
            // (its `forget` then either sees the insert or is seen here).
            if freed.load(Ordering::Acquire) == before {
                let now = Instant::now();
                let frees_at = now + retry_after;
                let until = frees_at.min(now + self.keep);
                let refusal = Refusal {
                    limit,
                    active,
                    frees_at,
                    until,
                };
                self.refused.insert(Arc::from(user), refusal);
                if freed.load(Ordering::Acquire) != before {
                    self.refused.invalidate(user);
                }
            }
        }
        Ok(opened)
    }
}

#[async_trait]
impl StreamStore for RefusalCache {
    async fn open(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        self.open_checked(user, limit, None).await
    }

    /// A given id may be live already (a resume that raced another), and then the store
    /// renews it even at the limit: only the store can tell, so it is always asked.
    async fn open_as(&self, user: &str, limit: u32, id: StreamId) -> Result<Opened, StoreError> {
        self.open_checked(user, limit, Some(id)).await
    }

    async fn renew(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.inner.renew(user, id).await
    }

    async fn release(&self, user: &str, id: StreamId, keep: bool) -> Result<(), StoreError> {
        let r = self.inner.release(user, id, keep).await;
        if !keep {
            // A failed open gave its slot back.
            self.forget(user);
        }
        r
    }

    async fn end(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        let r = self.inner.end(user, id).await;
        self.forget(user);
        r
    }

    /// An evicting or replacing open changes what a remembered refusal would say: always
    /// the store's.
    async fn open_with(
        &self,
        user: &str,
        limit: u32,
        id: Option<StreamId>,
        with: &OpenWith,
    ) -> Result<Opened, StoreError> {
        self.inner.open_with(user, limit, id, with).await
    }

    async fn end_for_good(
        &self,
        user: &str,
        id: StreamId,
        reason: GoneReason,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let r = self.inner.end_for_good(user, id, reason, ttl).await;
        self.forget(user);
        r
    }

    async fn gone(&self, user: &str, id: StreamId) -> Result<Option<Gone>, StoreError> {
        self.inner.gone(user, id).await
    }

    /// A new rule changes what a remembered refusal would say: forget it.
    async fn set_rule(&self, user: &str, rule: UserRule, ttl: Duration) -> Result<(), StoreError> {
        let r = self.inner.set_rule(user, rule, ttl).await;
        self.forget(user);
        r
    }

    async fn clear_rule(&self, user: &str, kind: RuleKind) -> Result<bool, StoreError> {
        let r = self.inner.clear_rule(user, kind).await;
        self.forget(user);
        r
    }

    async fn rules(&self, user: &str) -> Result<UserRules, StoreError> {
        self.inner.rules(user).await
    }

    async fn list(&self, user: &str) -> Result<Vec<LeaseInfo>, StoreError> {
        self.inner.list(user).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn hold_refresh_interval(&self) -> Option<Duration> {
        self.inner.hold_refresh_interval()
    }

    fn retune(&self, lease_ttl: Duration, timeout: Duration) {
        self.inner.retune(lease_ttl, timeout);
    }

    async fn refresh(&self, user: &str, id: StreamId) -> Result<Option<CutReason>, StoreError> {
        self.inner.refresh(user, id).await
    }

    async fn follow_ends(&self, on_end: &OnEnd<'_>) {
        // A slot freed elsewhere: this instance's remembered refusal is out of date too.
        let forget_then = |user: &str, id: StreamId, why: CutReason| {
            self.forget(user);
            on_end(user, id, why);
        };
        self.inner.follow_ends(&forget_then).await
    }

    fn maintain(&self) {
        self.refused.run_pending_tasks();
        self.inner.maintain();
    }
}

#[cfg(test)]
mod tests;
