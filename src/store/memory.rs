//! The embedded store: one process, nothing to set up, leases in a moka cache.
//!
//! One cache entry per user holds that user's few leases behind a mutex. A decision (prune,
//! count, admit) runs under that mutex, so it is atomic per user: 200 concurrent opens for
//! one user admit exactly the limit.
//!
//! moka decides when an entry may be *evicted* (its memory reclaimed); our own lease
//! deadlines decide what is *live*. The entry's moka deadline (`keep_until`) is always later
//! than every live lease, with slack, so eviction can never drop a live lease, and most
//! decisions need no moka write at all: a read (`get`) and the user's mutex. Only creating a
//! user, or pushing the deadline out (at most about once per TTL per user), writes to moka.
//! A request in flight keeps its user's entry pinned: held users are listed, and the
//! housekeeping tick pushes their deadline out while they are held.
//!
//! Capacity: moka's size-based eviction is *not* used, because it would silently drop live
//! leases (and let a user past the limit). Instead the number of users is counted exactly
//! and a new user past `max_users` gets [`StoreError::Full`] (a `503`); existing users are
//! never affected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;
use parking_lot::Mutex;
use uuid::Uuid;

use super::{LeaseCounters, LeaseInfo, Opened, StoreError, StreamStore};
use crate::identity::StreamId;

/// Eviction slack beyond the latest live lease: entries are reclaimed at most this much
/// after they die, and in exchange most decisions do not touch moka's write path.
const MIN_SLACK_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy)]
struct Lease {
    id: StreamId,
    /// Milliseconds since the store's epoch; meaningful only when `holds == 0`.
    expires_at: u64,
    /// Requests of this stream in flight.
    holds: u32,
}

impl Lease {
    fn live(&self, now: u64) -> bool {
        self.holds > 0 || self.expires_at > now
    }
}

#[derive(Debug, Default)]
struct UserState {
    leases: Vec<Lease>,
    /// Sum of the leases' holds: requests of this user in flight.
    holds: u32,
    /// moka has dropped this entry: a decision that reached it through an earlier read
    /// must start again on the live entry.
    evicted: bool,
}

/// One user's leases.
#[derive(Debug, Default)]
struct UserEntry {
    state: Mutex<UserState>,
    /// Store milliseconds until which moka keeps this entry.
    keep_until: AtomicU64,
    /// Times this entry was stored again over itself and not yet reported by moka.
    self_puts: AtomicU64,
}

/// moka asks us how long an entry may live; we answer from `keep_until`.
struct LeaseExpiry {
    epoch: Instant,
}

impl LeaseExpiry {
    fn remaining(&self, entry: &UserEntry, at: Instant) -> Option<Duration> {
        let until = self.epoch + Duration::from_millis(entry.keep_until.load(Ordering::Acquire));
        Some(until.saturating_duration_since(at))
    }
}

impl Expiry<String, Arc<UserEntry>> for LeaseExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<UserEntry>,
        created_at: Instant,
    ) -> Option<Duration> {
        self.remaining(value, created_at)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<UserEntry>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(value, updated_at)
    }
}

/// What an operation needs from moka after it ran.
enum After {
    /// Nothing: the entry's deadline already covers every live lease.
    Done,
    /// Push the entry's deadline out to this (store ms), re-storing it.
    Extend(u64),
    /// The entry is empty: remove it.
    Remove,
}

/// The embedded lease store.
pub struct MemoryStore {
    cache: Cache<String, Arc<UserEntry>>,
    ttl_ms: u64,
    slack_ms: u64,
    epoch: Instant,
    users: Arc<AtomicU64>,
    max_users: u64,
    counters: LeaseCounters,
    /// Users with a request in flight, whose entries the housekeeping tick keeps alive.
    held: Mutex<HashMap<String, Arc<UserEntry>>>,
}

impl MemoryStore {
    pub fn new(lease_ttl: Duration, max_users: u64, counters: LeaseCounters) -> Self {
        let users = Arc::new(AtomicU64::new(0));
        let listener_users = users.clone();
        let listener_counters = counters.clone();
        let epoch = Instant::now();
        let cache = Cache::builder()
            .expire_after(LeaseExpiry { epoch })
            .eviction_listener(move |_user, entry: Arc<UserEntry>, cause| {
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
                st.evicted = true;
                // Everything left in an expired entry had run out; count it once, here.
                let n = std::mem::take(&mut st.leases).len() as u64;
                if expired {
                    listener_counters.expired.inc_by(n);
                    listener_counters.active.sub(n as i64);
                }
            })
            .build();
        let ttl_ms = u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX / 4);
        Self {
            cache,
            ttl_ms,
            slack_ms: ttl_ms.max(MIN_SLACK_MS),
            epoch,
            users,
            max_users,
            counters,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 4)
    }

    /// Users with an entry (live or not yet evicted).
    pub fn users(&self) -> u64 {
        self.users.load(Ordering::Relaxed)
    }

    /// Prune, run `f`, and work out what the entry needs from moka. Runs under the user's
    /// mutex. `user` and `entry` are for the held-users list.
    fn decide<R>(
        &self,
        user: &str,
        entry: &Arc<UserEntry>,
        st: &mut UserState,
        now: u64,
        f: &mut impl FnMut(&mut Vec<Lease>, u64) -> R,
    ) -> Option<(R, After)> {
        if st.evicted {
            return None;
        }
        let before = st.leases.len();
        st.leases.retain(|l| l.live(now));
        let expired = (before - st.leases.len()) as u64;
        if expired > 0 {
            self.counters.expired.inc_by(expired);
            self.counters.active.sub(expired as i64);
        }
        let out = f(&mut st.leases, now);
        let holds: u32 = st.leases.iter().map(|l| l.holds).sum();
        match (st.holds, holds) {
            (0, h) if h > 0 => {
                self.held.lock().insert(user.to_owned(), entry.clone());
            }
            (h, 0) if h > 0 => {
                self.held.lock().remove(user);
            }
            _ => {}
        }
        st.holds = holds;
        if st.leases.is_empty() {
            return Some((out, After::Remove));
        }
        // A held lease needs the entry for at least one more TTL (the tick extends it
        // further while it stays held); an idle one until it runs out.
        let needed = st
            .leases
            .iter()
            .map(|l| {
                if l.holds > 0 {
                    now + self.ttl_ms
                } else {
                    l.expires_at
                }
            })
            .max()
            .unwrap_or(now);
        if entry.keep_until.load(Ordering::Acquire) >= needed {
            Some((out, After::Done))
        } else {
            Some((out, After::Extend(needed + self.slack_ms)))
        }
    }

    /// Run `f` on the user's leases atomically (expired leases already pruned). With
    /// `create`, a missing user gets a new entry; otherwise `f` sees an empty list and
    /// nothing is stored. `f` may run twice if the entry is evicted under the fast path (its
    /// first result is then discarded: it ran on an entry nobody can see any more).
    fn with_user<R>(
        &self,
        user: &str,
        create: bool,
        mut f: impl FnMut(&mut Vec<Lease>, u64) -> R,
    ) -> Result<R, StoreError> {
        // Fast path: a moka read and the user's mutex; moka is written only when the
        // entry's deadline must move.
        if let Some(entry) = self.cache.get(user) {
            let mut st = entry.state.lock();
            let now = self.now_ms();
            let decided = self.decide(user, &entry, &mut st, now, &mut f);
            drop(st);
            if let Some((out, after)) = decided {
                if self.settle(user, &entry, after) {
                    return Ok(out);
                }
            }
        }
        // Slow path: the whole decision inside moka's per-key compute.
        let now = self.now_ms();
        let mut out = None;
        let mut full = false;
        self.cache.entry_by_ref(user).and_compute_with(|current| {
            let (entry, existed) = match current {
                Some(e) => (e.into_value(), true),
                None if !create => {
                    out = Some(f(&mut Vec::new(), now));
                    return Op::Nop;
                }
                None => {
                    if self.users.fetch_add(1, Ordering::Relaxed) >= self.max_users {
                        self.users.fetch_sub(1, Ordering::Relaxed);
                        full = true;
                        return Op::Nop;
                    }
                    (Arc::new(UserEntry::default()), false)
                }
            };
            let mut st = entry.state.lock();
            let decided = self.decide(user, &entry, &mut st, now, &mut f);
            drop(st);
            // The entry moka hands to a compute is live; an evicted one here would be a
            // moka bug, answered as a store error rather than a wrong decision.
            let Some((o, after)) = decided else {
                return Op::Nop;
            };
            out = Some(o);
            match after {
                After::Done => Op::Nop,
                After::Remove if existed => Op::Remove,
                After::Remove => {
                    // A new entry that stayed empty is never stored.
                    self.users.fetch_sub(1, Ordering::Relaxed);
                    Op::Nop
                }
                After::Extend(until) => {
                    entry.keep_until.fetch_max(until, Ordering::AcqRel);
                    if existed {
                        entry.self_puts.fetch_add(1, Ordering::AcqRel);
                    }
                    Op::Put(entry)
                }
            }
        });
        if full {
            return Err(StoreError::Full);
        }
        out.ok_or_else(|| StoreError::Protocol("cache compute did not run".into()))
    }

    /// Apply what a fast-path decision needs from moka. `false` when the entry is no longer
    /// the one in the cache (it was evicted under us).
    fn settle(&self, user: &str, entry: &Arc<UserEntry>, after: After) -> bool {
        if let After::Done = after {
            // `decide` only says Done when the deadline already covers every live lease,
            // so moka cannot have evicted this entry with anything live in it.
            return true;
        }
        let mut same = false;
        self.cache
            .entry_by_ref(user)
            .and_compute_with(|current| match current {
                Some(e) if Arc::ptr_eq(e.value(), entry) => {
                    same = true;
                    match after {
                        After::Extend(until) => {
                            entry.keep_until.fetch_max(until, Ordering::AcqRel);
                            entry.self_puts.fetch_add(1, Ordering::AcqRel);
                            Op::Put(e.into_value())
                        }
                        // Another decision may have added a lease since.
                        After::Remove if entry.state.lock().leases.is_empty() => Op::Remove,
                        _ => Op::Nop,
                    }
                }
                _ => Op::Nop,
            });
        same
    }

    fn open_now(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        let ttl = self.ttl_ms;
        let opened = self.with_user(user, true, |leases, now| {
            if leases.len() >= limit as usize {
                let soonest = leases
                    .iter()
                    .map(|l| {
                        if l.holds > 0 {
                            ttl
                        } else {
                            l.expires_at.saturating_sub(now)
                        }
                    })
                    .min()
                    .unwrap_or(0);
                return Opened::Rejected {
                    active: u32::try_from(leases.len()).unwrap_or(u32::MAX),
                    retry_after: Duration::from_millis(soonest),
                };
            }
            let id = Uuid::new_v4();
            // Grow one lease at a time: most users hold one or two streams, and `push` would
            // otherwise reserve room for four.
            leases.reserve_exact(1);
            leases.push(Lease {
                id,
                expires_at: now + ttl,
                holds: 1,
            });
            Opened::Admitted(id)
        })?;
        if matches!(opened, Opened::Admitted(_)) {
            self.counters.active.inc();
        }
        Ok(opened)
    }

    fn release_now(&self, user: &str, id: StreamId, keep: bool) -> Result<(), StoreError> {
        let ttl = self.ttl_ms;
        let removed = self.with_user(user, false, |leases, now| {
            let Some(pos) = leases.iter().position(|l| l.id == id) else {
                return false;
            };
            let lease = &mut leases[pos];
            lease.holds = lease.holds.saturating_sub(1);
            if lease.holds > 0 {
                return false;
            }
            if keep {
                lease.expires_at = now + ttl;
                false
            } else {
                leases.swap_remove(pos);
                true
            }
        })?;
        if removed {
            self.counters.active.dec();
        }
        Ok(())
    }

    /// Keep held users' entries alive, then let moka evict what has expired.
    fn housekeeping(&self) {
        let now = self.now_ms();
        let horizon = now + self.ttl_ms + self.slack_ms / 2;
        let due: Vec<(String, Arc<UserEntry>)> = self
            .held
            .lock()
            .iter()
            .filter(|(_, e)| e.keep_until.load(Ordering::Acquire) < horizon)
            .map(|(u, e)| (u.clone(), e.clone()))
            .collect();
        for (user, entry) in due {
            let until = now + self.ttl_ms + self.slack_ms;
            if !self.settle(&user, &entry, After::Extend(until)) {
                // A stale listing of an entry that is gone: forget it.
                let mut held = self.held.lock();
                if held.get(&user).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                    held.remove(&user);
                }
            }
        }
        self.cache.run_pending_tasks();
    }

    #[cfg(test)]
    fn with_slack(mut self, slack: Duration) -> Self {
        self.slack_ms = slack.as_millis() as u64;
        self
    }
}

#[async_trait]
impl StreamStore for MemoryStore {
    async fn open(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        self.open_now(user, limit)
    }

    async fn renew(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.with_user(user, false, |leases, _now| {
            match leases.iter_mut().find(|l| l.id == id) {
                Some(l) => {
                    l.holds += 1;
                    true
                }
                None => false,
            }
        })
    }

    async fn release(&self, user: &str, id: StreamId, keep: bool) -> Result<(), StoreError> {
        self.release_now(user, id, keep)
    }

    async fn end(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        let ended = self.with_user(user, false, |leases, _now| {
            let before = leases.len();
            leases.retain(|l| l.id != id);
            leases.len() < before
        })?;
        if ended {
            self.counters.active.dec();
        }
        Ok(ended)
    }

    async fn list(&self, user: &str) -> Result<Vec<LeaseInfo>, StoreError> {
        self.with_user(user, false, |leases, now| {
            leases
                .iter()
                .map(|l| LeaseInfo {
                    id: l.id,
                    expires_in: (l.holds == 0)
                        .then(|| Duration::from_millis(l.expires_at.saturating_sub(now))),
                })
                .collect()
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn maintain(&self) {
        self.housekeeping();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, IntGauge};

    fn store(ttl_ms: u64, max_users: u64) -> MemoryStore {
        MemoryStore::new(
            Duration::from_millis(ttl_ms),
            max_users,
            LeaseCounters {
                active: IntGauge::new("a", "a").unwrap(),
                expired: IntCounter::new("e", "e").unwrap(),
            },
        )
    }

    fn admitted(o: Opened) -> StreamId {
        match o {
            Opened::Admitted(id) => id,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    #[test]
    fn opens_up_to_the_limit_then_rejects_with_retry_after() {
        let s = store(60_000, 10);
        for _ in 0..3 {
            admitted(s.open_now("u", 3).unwrap());
        }
        match s.open_now("u", 3).unwrap() {
            Opened::Rejected {
                active,
                retry_after,
            } => {
                assert_eq!(active, 3);
                // All three are held, so the earliest they can expire is one TTL away.
                assert_eq!(retry_after, Duration::from_secs(60));
            }
            other => panic!("expected rejection, got {other:?}"),
        }
        assert_eq!(s.counters.active.get(), 3);
        // Other users are independent.
        admitted(s.open_now("v", 3).unwrap());
    }

    #[test]
    fn failed_open_gives_the_slot_back_at_once() {
        let s = store(60_000, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        s.release_now("u", id, false).unwrap();
        assert_eq!(s.counters.active.get(), 0);
        admitted(s.open_now("u", 1).unwrap());
    }

    #[test]
    fn released_lease_lives_for_the_ttl_then_expires() {
        let s = store(150, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        s.release_now("u", id, true).unwrap();
        assert!(matches!(
            s.open_now("u", 1).unwrap(),
            Opened::Rejected { .. }
        ));
        std::thread::sleep(Duration::from_millis(200));
        admitted(s.open_now("u", 1).unwrap());
        // moka evicts the expired entry lazily (its timer wheel ticks about once a
        // second); the counters settle when it does.
        settle(&s, |s| s.counters.expired.get() == 1);
        assert_eq!(s.counters.active.get(), 1);
    }

    #[test]
    fn held_lease_never_expires_until_released() {
        let s = store(100, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        s.maintain();
        assert!(matches!(
            s.open_now("u", 1).unwrap(),
            Opened::Rejected { .. }
        ));
        let list = futures_lite_block(s.list("u")).unwrap();
        assert_eq!(
            list,
            vec![LeaseInfo {
                id,
                expires_in: None
            }]
        );
    }

    #[test]
    fn a_held_user_is_never_evicted_while_housekeeping_runs() {
        // Tiny slack, so moka would evict within milliseconds if nothing kept it alive.
        let s = store(100, 10).with_slack(Duration::from_millis(10));
        let id = admitted(s.open_now("u", 1).unwrap());
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            s.maintain();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(s.users(), 1, "the held user's entry survived");
        assert!(matches!(
            s.open_now("u", 1).unwrap(),
            Opened::Rejected { .. }
        ));
        s.release_now("u", id, true).unwrap();
        // Released: the lease runs out after the TTL and the entry is then evicted.
        settle(&s, |s| s.users() == 0);
        admitted(s.open_now("u", 1).unwrap());
    }

    #[test]
    fn most_decisions_do_not_write_to_moka() {
        let s = store(60_000, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        s.release_now("u", id, true).unwrap();
        let entry = s.cache.get("u").unwrap();
        let puts_before = entry.self_puts.load(Ordering::Acquire);
        let keep_before = entry.keep_until.load(Ordering::Acquire);
        for _ in 0..100 {
            assert!(futures_lite_block(s.renew("u", id)).unwrap());
            s.release_now("u", id, true).unwrap();
        }
        // Within one slack window the deadline already covers every renewal.
        assert_eq!(entry.keep_until.load(Ordering::Acquire), keep_before);
        assert!(entry.self_puts.load(Ordering::Acquire) <= puts_before + 1);
    }

    #[test]
    fn renew_counts_holds_and_is_per_user() {
        let s = store(60_000, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        assert!(futures_lite_block(s.renew("u", id)).unwrap());
        assert!(!futures_lite_block(s.renew("other", id)).unwrap());
        // Two holds: one failed release does not remove it.
        s.release_now("u", id, false).unwrap();
        assert_eq!(futures_lite_block(s.list("u")).unwrap().len(), 1);
        s.release_now("u", id, true).unwrap();
        let list = futures_lite_block(s.list("u")).unwrap();
        assert!(list[0].expires_in.is_some());
    }

    #[test]
    fn end_removes_and_reports_unknown() {
        let s = store(60_000, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        assert!(!futures_lite_block(s.end("other", id)).unwrap());
        assert!(futures_lite_block(s.end("u", id)).unwrap());
        assert!(!futures_lite_block(s.end("u", id)).unwrap());
        assert_eq!(s.counters.active.get(), 0);
        s.maintain();
        assert_eq!(s.users(), 0);
    }

    #[test]
    fn max_users_refuses_new_users_but_keeps_existing_ones() {
        let s = store(60_000, 2);
        admitted(s.open_now("a", 3).unwrap());
        admitted(s.open_now("b", 3).unwrap());
        assert!(matches!(s.open_now("c", 3), Err(StoreError::Full)));
        admitted(s.open_now("a", 3).unwrap());
        assert_eq!(s.users(), 2);
    }

    #[test]
    fn expired_users_are_evicted_and_counted() {
        let s = store(100, 10).with_slack(Duration::from_millis(50));
        for u in ["a", "b"] {
            let id = admitted(s.open_now(u, 1).unwrap());
            s.release_now(u, id, true).unwrap();
        }
        settle(&s, |s| s.users() == 0);
        assert_eq!(s.counters.expired.get(), 2);
        assert_eq!(s.counters.active.get(), 0);
    }

    #[test]
    fn concurrent_opens_admit_exactly_the_limit() {
        let s = Arc::new(store(60_000, 10));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .filter(|_| matches!(s.open_now("u", 3), Ok(Opened::Admitted(_))))
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 3);
    }

    /// Run housekeeping until `done` holds (bounded: 5 s), as the background tick would.
    fn settle(s: &MemoryStore, done: impl Fn(&MemoryStore) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(s) {
            assert!(Instant::now() < deadline, "store did not settle in 5 s");
            s.maintain();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The memory store's futures never wait, so polling once finishes them.
    fn futures_lite_block<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }
}
