//! What the memory store remembers beside leases, each for its own time: stream ids ended
//! for good (evicted, or ended through the admin API), so their next request is `410`, and
//! users cooling down from an eviction. A small moka cache of its own, apart from the
//! users' entries, so a mark never keeps a user's entry (and its deadline) alive.
//!
//! Marks are written under the user's lock, in the same step as the eviction or end they
//! record. The cache is bounded ([`MAX_MARKS`]): past it moka drops the least useful mark,
//! and the worst that does is let an evicted player open its id again.

use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::keys::UserKey;
use crate::identity::StreamId;
use crate::store::Gone;

/// The most marks kept (~100 bytes each).
const MAX_MARKS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Gone(UserKey, StreamId),
    Cooldown(UserKey),
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    gone: Option<Gone>,
    /// Store milliseconds (the store's epoch) until which the mark holds.
    until_ms: u64,
    ttl: Duration,
}

struct ByTtl;

impl Expiry<Key, Mark> for ByTtl {
    fn expire_after_create(&self, _: &Key, m: &Mark, _: Instant) -> Option<Duration> {
        Some(m.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        m: &Mark,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(m.ttl)
    }
}

pub(super) struct Marks(Cache<Key, Mark>);

impl Marks {
    pub(super) fn new() -> Self {
        Self(
            Cache::builder()
                .max_capacity(MAX_MARKS)
                .expire_after(ByTtl)
                .build(),
        )
    }

    /// Remember `id` of `user` as gone for `ttl` (a zero `ttl` remembers nothing).
    pub(super) fn bury(&self, user: UserKey, id: StreamId, gone: Gone, now: u64, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let until_ms = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 4);
        let mark = Mark {
            gone: Some(gone),
            until_ms,
            ttl,
        };
        self.0.insert(Key::Gone(user, id), mark);
    }

    pub(super) fn gone(&self, user: UserKey, id: StreamId, now: u64) -> Option<Gone> {
        self.0
            .get(&Key::Gone(user, id))
            .filter(|m| m.until_ms > now)
            .and_then(|m| m.gone)
    }

    /// Start `user`'s cooldown: `cooldown` from `now`.
    pub(super) fn cool(&self, user: UserKey, now: u64, cooldown: Duration) {
        if cooldown.is_zero() {
            return;
        }
        let until_ms = now + u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX / 4);
        let mark = Mark {
            gone: None,
            until_ms,
            ttl: cooldown,
        };
        self.0.insert(Key::Cooldown(user), mark);
    }

    /// How long `user` still cools down from their last eviction (`None`: not at all).
    pub(super) fn cooling(&self, user: UserKey, now: u64) -> Option<Duration> {
        let m = self.0.get(&Key::Cooldown(user))?;
        (m.until_ms > now).then(|| Duration::from_millis(m.until_ms - now))
    }

    pub(super) fn maintain(&self) {
        self.0.run_pending_tasks();
    }
}
