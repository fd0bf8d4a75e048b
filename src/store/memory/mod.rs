//! The embedded store: one process, nothing to set up, leases in a moka cache.
//!
//! One cache entry per user holds that user's few leases behind a lock of its own. A
//! decision (prune, count, admit) runs under that lock, so it is atomic per user. moka
//! only decides *when an idle user is dropped*: an entry's moka deadline covers every
//! lease in it, held ones included, plus a little slack.
//!
//! Writes to moka are the expensive part of a decision (a new node, a timer-wheel move, an
//! eviction notification), so a decision writes only when it must:
//! - **Fast path**: a decision that cannot need a later deadline than the entry already has
//!   (a refusal or a listing always; a renewal, a release or an admission while
//!   `now + TTL` is within the deadline) reads the entry with a moka `get` and changes
//!   the leases in place under the entry's lock. A player renewing every few seconds costs
//!   one write per slack period, not two per request.
//! - **Slow path**: anything else (a new user, a deadline to push out, a lease ended early,
//!   an entry left empty) runs in moka's per-key `and_compute_with`, which serialises it
//!   with every other slow path of that user and with moka's own eviction of it. An entry
//!   removed or expired is marked `dead` under its lock, so a fast path that raced with it
//!   retries on the slow path instead of deciding on a stale entry.
//! - **Held leases** cannot expire while their request runs, but moka's deadline for them
//!   is finite (pinning an entry for ever would be a write on every hold and every release).
//!   Entries with a hold are registered in a small sharded set instead; housekeeping (a tick
//!   of at most TTL/4) keeps their deadline at least one TTL ahead, pushing it out by half a
//!   TTL more than that when it falls short: one write per held user per half TTL, and a
//!   hold survives unless housekeeping stalls for a whole TTL.
//!
//! The slack (`TTL/8`, at most 1 s) is how long an idle user's entry may outlive its last
//! lease, and so how long the `active` gauge may count a lease that has run out.
//!
//! Users are keyed in the cache by a 128-bit keyed hash of their session id ([`UserKey`]),
//! not by the string: an inline 16-byte key saves the string's own allocation per user
//! (docs/benchmarks.md#micro-benchmarks has the bytes per lease today) and, while moka
//! probes its table, the comparison of strings behind a pointer. The hash key is random per process, so colliding two users on
//! purpose is infeasible, and by chance it takes ~2^64 users.
//!
//! Capacity: moka's size-based eviction is *not* used, because it would silently drop live
//! leases (and let a user past the limit). Instead the number of users is counted exactly
//! and a new user past `max_users` gets [`StoreError::Full`] (a `503`); existing users are
//! never affected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::warn;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::SegmentedCache;

use super::{
    Gone, GoneReason, LeaseCounters, LeaseInfo, OpenWith, Opened, RuleKind, StoreError,
    StreamStore, Tuning, UserRule, UserRules,
};

mod api;
mod entry;
mod held;
mod keys;
mod marks;
mod rules;
#[cfg(test)]
mod tests;

use crate::identity::StreamId;
use entry::{Lease, LeaseExpiry, Reach, UserEntry, UserState};
use held::{deregister, held_shard, HeldShard};
use keys::{UserKey, UserKeyHash, UserKeys};
use marks::Marks;

/// Independent moka caches the users are spread over. When many leases expire at once,
/// moka compacts a cache's table in one go on whichever thread trips it (a request's);
/// spread over segments, each compaction is a fraction of the table, so the stalls are
/// shorter (docs/tuning.md#housekeeping).
const SEGMENTS: usize = 8;

/// Shards of the set of users with a held lease (one lock each).
const HELD_SHARDS: usize = 16;

/// The embedded lease store. Call [`StreamStore::maintain`] at least every TTL/4: it keeps
/// users with a request in flight alive.
pub struct MemoryStore {
    cache: SegmentedCache<UserKey, Arc<UserEntry>, UserKeyHash>,
    keys: UserKeys,
    /// The lease TTL (and the slack it implies), which a reload may change.
    tuning: Tuning,
    epoch: Instant,
    users: Arc<AtomicU64>,
    max_users: u64,
    counters: LeaseCounters,
    held: Arc<[HeldShard]>,
    /// Ids ended for good and users cooling down from an eviction.
    marks: Marks,
}

impl MemoryStore {
    pub fn new(lease_ttl: Duration, max_users: u64, counters: LeaseCounters) -> Self {
        let users = Arc::new(AtomicU64::new(0));
        let held: Arc<[HeldShard]> = (0..HELD_SHARDS).map(|_| HeldShard::default()).collect();
        let (listener_users, listener_counters, listener_held) =
            (users.clone(), counters.clone(), held.clone());
        let cache = SegmentedCache::builder(SEGMENTS)
            .expire_after(LeaseExpiry)
            .eviction_listener(move |key: Arc<UserKey>, entry: Arc<UserEntry>, cause| {
                // moka reports our own re-`Put` of an entry as `Replaced`; those were
                // counted in `self_puts`. Any other replacement is an expired entry that a
                // new one took the place of.
                let expired = match cause {
                    RemovalCause::Replaced => {
                        let own = entry
                            .self_puts
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_ok();
                        if own {
                            return;
                        }
                        true
                    }
                    RemovalCause::Expired => true,
                    RemovalCause::Explicit | RemovalCause::Size => false,
                };
                listener_users.fetch_sub(1, Ordering::Relaxed);
                let mut st = entry.state.lock();
                st.dead = true;
                if st.registered {
                    st.registered = false;
                    deregister(&listener_held, *key, &entry);
                }
                if expired {
                    // Everything left in an expired entry had run out.
                    let n = st.leases.len() as u64;
                    listener_counters.expired.inc_by(n);
                    listener_counters.active.sub(n as i64);
                }
            })
            .build_with_hasher(UserKeyHash::default());
        Self {
            cache,
            keys: UserKeys::new(),
            tuning: Tuning::new(lease_ttl, Duration::ZERO),
            epoch: Instant::now(),
            users,
            max_users,
            counters,
            held,
            marks: Marks::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 4)
    }

    /// Users with an entry (live or not yet evicted).
    pub fn users(&self) -> u64 {
        self.users.load(Ordering::Relaxed)
    }

    /// Drop the leases that ran out, counting them as expired.
    fn prune(&self, leases: &mut Vec<Lease>, now: u64) {
        let before = leases.len();
        leases.retain(|l| l.live(now));
        let expired = (before - leases.len()) as u64;
        if expired > 0 {
            self.counters.expired.inc_by(expired);
            self.counters.active.sub(expired as i64);
        }
    }

    /// Keep the held set in step with whether the entry has a lease in flight.
    fn sync_held(&self, key: UserKey, entry: &Arc<UserEntry>, st: &mut UserState) {
        let held = st.held();
        if held == st.registered {
            return;
        }
        if held {
            held_shard(&self.held, key)
                .lock()
                .insert(key, entry.clone());
        } else {
            deregister(&self.held, key, entry);
        }
        st.registered = held;
    }

    /// Run the decision `f` on the user's leases atomically (expired leases already
    /// pruned). `reach` says whether `f` may need the entry to live longer. With `create`, a
    /// missing user gets a new entry; otherwise `f` sees an empty list and nothing is stored.
    fn with_user<R, F>(&self, user: &str, create: bool, reach: Reach, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Vec<Lease>, u64) -> R,
    {
        let key = self.keys.of(user);
        if reach == Reach::Shrinks {
            return self.compute(key, create, self.tuning.slack_ms(), f);
        }
        match self.in_place(key, create, reach, f) {
            Ok(out) => Ok(out),
            Err(f) => self.compute(key, create, self.tuning.slack_ms(), f),
        }
    }

    /// The fast path: decide under the entry's lock without writing to moka, when the
    /// decision fits within the deadline moka already has. Hands `f` back otherwise.
    fn in_place<R, F>(&self, key: UserKey, create: bool, reach: Reach, f: F) -> Result<R, F>
    where
        F: FnOnce(&mut Vec<Lease>, u64) -> R,
    {
        let Some(entry) = self.cache.get(&key) else {
            if create {
                return Err(f);
            }
            return Ok(f(&mut Vec::new(), self.now_ms()));
        };
        let mut st = entry.state.lock();
        let now = self.now_ms();
        if st.dead {
            return Err(f);
        }
        self.prune(&mut st.leases, now);
        let up_to_ttl = now + self.tuning.ttl_ms() <= entry.deadline.load(Ordering::Relaxed);
        let fits = match reach {
            Reach::Within => true,
            Reach::UpToTtl => up_to_ttl,
            Reach::Open(limit) => st.leases.len() >= limit as usize || up_to_ttl,
            Reach::Shrinks => false,
        };
        if !fits {
            return Err(f);
        }
        let out = f(&mut st.leases, now);
        self.sync_held(key, &entry, &mut st);
        let empty = st.leases.is_empty();
        drop(st);
        if empty {
            // Removes the entry if it is still empty.
            let _ = self.compute(key, false, self.tuning.slack_ms(), |_, _| ());
        }
        Ok(out)
    }

    /// The slow path: decide inside moka's per-key compute and write the entry's new
    /// deadline when it must move: `extra_ms` past what the leases need.
    fn compute<R>(
        &self,
        key: UserKey,
        create: bool,
        extra_ms: u64,
        f: impl FnOnce(&mut Vec<Lease>, u64) -> R,
    ) -> Result<R, StoreError> {
        let mut out = None;
        let mut full = false;
        self.cache.entry(key).and_compute_with(|current| {
            let existed = current.is_some();
            let entry = match current {
                Some(e) => e.into_value(),
                None if !create => {
                    out = Some(f(&mut Vec::new(), self.now_ms()));
                    return Op::Nop;
                }
                None => {
                    if self.users.fetch_add(1, Ordering::Relaxed) >= self.max_users {
                        self.users.fetch_sub(1, Ordering::Relaxed);
                        full = true;
                        return Op::Nop;
                    }
                    Arc::new(UserEntry::default())
                }
            };
            let mut st = entry.state.lock();
            let now = self.now_ms();
            self.prune(&mut st.leases, now);
            out = Some(f(&mut st.leases, now));
            self.sync_held(key, &entry, &mut st);
            if st.leases.is_empty() {
                st.dead = true;
                drop(st);
                if existed {
                    return Op::Remove;
                }
                // A new entry that stayed empty was never stored.
                self.users.fetch_sub(1, Ordering::Relaxed);
                return Op::Nop;
            }
            let needed = st.needed_until(now, self.tuning.ttl_ms());
            let deadline = entry.deadline.load(Ordering::Relaxed);
            if existed && needed <= deadline && deadline <= needed + 2 * self.tuning.slack_ms() {
                // moka already keeps the entry long enough, and not much longer.
                return Op::Nop;
            }
            let deadline = needed + extra_ms;
            entry.deadline.store(deadline, Ordering::Relaxed);
            entry
                .expire_in
                .store(deadline.saturating_sub(now), Ordering::Relaxed);
            if existed {
                entry.self_puts.fetch_add(1, Ordering::AcqRel);
            }
            drop(st);
            Op::Put(entry)
        });
        if full {
            return Err(StoreError::Full);
        }
        out.ok_or_else(|| StoreError::Protocol("cache compute did not run".into()))
    }

    /// Keep the deadlines of users with a held lease at least one TTL ahead.
    fn refresh_held(&self) {
        let horizon = self.now_ms() + self.tuning.ttl_ms();
        let due: Vec<(UserKey, Arc<UserEntry>)> = self
            .held
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .iter()
                    .filter(|(_, e)| e.deadline.load(Ordering::Relaxed) < horizon)
                    .map(|(k, e)| (*k, e.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (key, entry) in due {
            match self.cache.get(&key) {
                // A hold needs `now + TTL`, more than the deadline: the compute writes
                // half a TTL beyond it, so the next refresh is half a TTL away.
                Some(current) if Arc::ptr_eq(&current, &entry) => {
                    let _ = self.compute(key, false, self.tuning.ttl_ms() / 2, |_, _| ());
                }
                // Gone from moka while still holding: it expired. (If its hold ended and its
                // last lease with it since the scan, it was removed on purpose: no warning.)
                _ if entry.state.lock().held() => warn!(
                    "a user with a stream in flight expired before housekeeping extended it \
                     (housekeeping stalled for more than a lease TTL?)"
                ),
                _ => {}
            }
        }
    }
}
