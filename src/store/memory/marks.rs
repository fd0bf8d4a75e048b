//! What the memory store remembers beside leases, each for its own time: stream ids ended
//! for good (evicted, or ended through the admin API), so their next request is `410`,
//! users cooling down from an eviction, and the admin API's per-user rules (a limit
//! override, a block). A small moka cache of its own, apart from the
//! users' entries, so a mark never keeps a user's entry (and its deadline) alive.
//!
//! Marks are written under the user's lock, in the same step as the eviction or end they
//! record. The cache is bounded ([`MAX_MARKS`]): past it moka drops the least useful mark,
//! and the worst that does is let an evicted player open its id again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::keys::UserKey;
use crate::identity::StreamId;
use crate::store::{Gone, RuleKind, UserRule, UserRules};

/// The most marks kept (~100 bytes each).
const MAX_MARKS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Gone(UserKey, StreamId),
    Cooldown(UserKey),
    Rule(UserKey, RuleKind),
}

#[derive(Debug, Clone, Copy)]
enum What {
    Gone(Gone),
    Cooldown,
    Limit(u32),
    Block,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    what: What,
    /// Store milliseconds (the store's epoch) until which the mark holds.
    until_ms: u64,
    ttl: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
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

pub(super) struct Marks {
    marks: Cache<Key, Mark>,
    /// A rule was ever set: until then a decision looks none up.
    rules_used: AtomicBool,
}

impl Marks {
    pub(super) fn new() -> Self {
        Self {
            marks: Cache::builder()
                .max_capacity(MAX_MARKS)
                .expire_after(ByTtl)
                .build(),
            rules_used: AtomicBool::new(false),
        }
    }

    fn put(&self, key: Key, what: What, now: u64, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mark = Mark {
            what,
            until_ms: now + ms(ttl),
            ttl,
        };
        self.marks.insert(key, mark);
    }

    fn get(&self, key: Key, now: u64) -> Option<Mark> {
        self.marks.get(&key).filter(|m| m.until_ms > now)
    }

    /// Set a per-user rule for `ttl`.
    pub(super) fn set_rule(&self, user: UserKey, rule: UserRule, now: u64, ttl: Duration) {
        self.rules_used.store(true, Ordering::Release);
        let (kind, what) = match rule {
            UserRule::Limit(n) => (RuleKind::Limit, What::Limit(n)),
            UserRule::Block => (RuleKind::Block, What::Block),
        };
        self.put(Key::Rule(user, kind), what, now, ttl);
    }

    /// Clear a per-user rule; whether there was one.
    pub(super) fn clear_rule(&self, user: UserKey, kind: RuleKind, now: u64) -> bool {
        let had = self.get(Key::Rule(user, kind), now).is_some();
        self.marks.invalidate(&Key::Rule(user, kind));
        had
    }

    /// The user's rules now, each with the time it has left.
    pub(super) fn rules(&self, user: UserKey, now: u64) -> UserRules {
        if !self.rules_used.load(Ordering::Acquire) {
            return UserRules::default();
        }
        let left = |m: &Mark| Duration::from_millis(m.until_ms - now);
        let limit = self
            .get(Key::Rule(user, RuleKind::Limit), now)
            .and_then(|m| match m.what {
                What::Limit(n) => Some((n, left(&m))),
                _ => None,
            });
        let blocked = self
            .get(Key::Rule(user, RuleKind::Block), now)
            .map(|m| left(&m));
        UserRules { limit, blocked }
    }

    /// Remember `id` of `user` as gone for `ttl` (a zero `ttl` remembers nothing).
    pub(super) fn bury(&self, user: UserKey, id: StreamId, gone: Gone, now: u64, ttl: Duration) {
        self.put(Key::Gone(user, id), What::Gone(gone), now, ttl);
    }

    pub(super) fn gone(&self, user: UserKey, id: StreamId, now: u64) -> Option<Gone> {
        match self.get(Key::Gone(user, id), now)?.what {
            What::Gone(g) => Some(g),
            _ => None,
        }
    }

    /// Start `user`'s cooldown: `cooldown` from `now`.
    pub(super) fn cool(&self, user: UserKey, now: u64, cooldown: Duration) {
        self.put(Key::Cooldown(user), What::Cooldown, now, cooldown);
    }

    /// How long `user` still cools down from their last eviction (`None`: not at all).
    pub(super) fn cooling(&self, user: UserKey, now: u64) -> Option<Duration> {
        let m = self.get(Key::Cooldown(user), now)?;
        Some(Duration::from_millis(m.until_ms - now))
    }

    pub(super) fn maintain(&self) {
        self.marks.run_pending_tasks();
    }
}
