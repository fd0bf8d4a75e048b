//! The embedded store: one process, nothing to set up, leases in a moka cache.
//!
//! One cache entry per user holds that user's few leases. Every operation runs inside
//! moka's per-key `and_compute_with`, which serialises operations on one user, so a
//! decision (prune, count, admit) is atomic. An entry's expiry is computed from its leases:
//! never while a request is in flight, otherwise when the last lease runs out, so idle users
//! cost nothing once moka evicts them.
//!
//! Users are keyed in the cache by a 128-bit keyed hash of their session id ([`UserKey`]),
//! not by the string: an inline 16-byte key saves the string's own allocation (610 -> 546
//! bytes per single-lease user) and, while moka probes its table, the comparison of
//! strings behind a pointer. The hash key is random per process, so colliding two users on
//! purpose is infeasible, and by chance it takes ~2^64 users.
//!
//! Capacity: moka's size-based eviction is *not* used, because it would silently drop live
//! leases (and let a user past the limit). Instead the number of users is counted exactly
//! and a new user past `max_users` gets [`StoreError::Full`] (a `503`); existing users are
//! never affected.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::SegmentedCache;
use moka::Expiry;
use parking_lot::Mutex;
use uuid::Uuid;

use super::{LeaseCounters, LeaseInfo, Opened, StoreError, StreamStore};
use crate::identity::StreamId;

/// Independent moka caches the users are spread over. When many leases expire at once,
/// moka compacts a cache's table in one go on whichever thread trips it (a request's);
/// spread over segments, each compaction is a fraction of the table, so the stalls are
/// shorter (1 MiB-segment p99 during such a wave: 55-77 ms -> 33 ms, at -6 % req/s with
/// random users; docs/benchmarks.md).
const SEGMENTS: usize = 8;

/// `expire_in` value meaning "a request is in flight: do not expire".
const NEVER: u64 = u64::MAX;

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

/// One user's leases.
#[derive(Debug, Default)]
struct UserEntry {
    leases: Mutex<Vec<Lease>>,
    /// Milliseconds until the entry may expire, as of its last update ([`NEVER`] if held).
    expire_in: AtomicU64,
    /// The deadline moka was last given, in store milliseconds ([`NEVER`] if held). A
    /// decision that leaves it where it was changes the leases in place and skips the
    /// write to moka (a refused open, a second request on a held stream).
    deadline: AtomicU64,
    /// Times this entry was stored again over itself and not yet reported by moka.
    self_puts: AtomicU64,
}

impl UserEntry {
    fn expiry(&self) -> Option<Duration> {
        match self.expire_in.load(Ordering::Relaxed) {
            NEVER => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// A user as the cache knows it: two independent keyed SipHashes of the session id.
type UserKey = u128;

/// Maps session ids to [`UserKey`]s with keys drawn at random for this process.
struct UserKeys(RandomState, RandomState);

impl UserKeys {
    fn new() -> Self {
        Self(RandomState::new(), RandomState::new())
    }

    fn of(&self, user: &str) -> UserKey {
        (u128::from(self.0.hash_one(user)) << 64) | u128::from(self.1.hash_one(user))
    }
}

struct LeaseExpiry;

impl Expiry<UserKey, Arc<UserEntry>> for LeaseExpiry {
    fn expire_after_create(
        &self,
        _key: &UserKey,
        value: &Arc<UserEntry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        value.expiry()
    }

    fn expire_after_update(
        &self,
        _key: &UserKey,
        value: &Arc<UserEntry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        value.expiry()
    }
}

/// The embedded lease store.
pub struct MemoryStore {
    cache: SegmentedCache<UserKey, Arc<UserEntry>>,
    keys: UserKeys,
    ttl_ms: u64,
    epoch: Instant,
    users: Arc<AtomicU64>,
    max_users: u64,
    counters: LeaseCounters,
}

impl MemoryStore {
    pub fn new(lease_ttl: Duration, max_users: u64, counters: LeaseCounters) -> Self {
        let users = Arc::new(AtomicU64::new(0));
        let listener_users = users.clone();
        let listener_counters = counters.clone();
        let cache = SegmentedCache::builder(SEGMENTS)
            .expire_after(LeaseExpiry)
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
                if expired {
                    // Everything left in an expired entry had run out.
                    let n = entry.leases.lock().len() as u64;
                    listener_counters.expired.inc_by(n);
                    listener_counters.active.sub(n as i64);
                }
            })
            .build();
        Self {
            cache,
            keys: UserKeys::new(),
            ttl_ms: u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX / 2),
            epoch: Instant::now(),
            users,
            max_users,
            counters,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Users with an entry (live or not yet evicted).
    pub fn users(&self) -> u64 {
        self.users.load(Ordering::Relaxed)
    }

    /// Run `f` on the user's leases atomically (expired leases already pruned). With
    /// `create`, a missing user gets a new entry; otherwise `f` sees an empty list and
    /// nothing is stored.
    fn with_user<R>(
        &self,
        user: &str,
        create: bool,
        f: impl FnOnce(&mut Vec<Lease>, u64) -> R,
    ) -> Result<R, StoreError> {
        let now = self.now_ms();
        let mut out = None;
        let mut full = false;
        self.cache
            .entry(self.keys.of(user))
            .and_compute_with(|current| {
                let existed = current.is_some();
                let entry = match current {
                    Some(e) => e.into_value(),
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
                        Arc::new(UserEntry::default())
                    }
                };
                let mut leases = entry.leases.lock();
                let before = leases.len();
                leases.retain(|l| l.live(now));
                let expired = (before - leases.len()) as u64;
                if expired > 0 {
                    self.counters.expired.inc_by(expired);
                    self.counters.active.sub(expired as i64);
                }
                out = Some(f(&mut leases, now));
                if leases.is_empty() {
                    drop(leases);
                    if existed {
                        return Op::Remove;
                    }
                    // A new entry that stayed empty was never stored.
                    self.users.fetch_sub(1, Ordering::Relaxed);
                    return Op::Nop;
                }
                let deadline = if leases.iter().any(|l| l.holds > 0) {
                    NEVER
                } else {
                    leases.iter().map(|l| l.expires_at).max().unwrap_or(now)
                };
                if existed && entry.deadline.load(Ordering::Relaxed) == deadline {
                    // moka already expires the entry at this deadline; the leases were
                    // changed in place, under the entry's lock.
                    return Op::Nop;
                }
                entry.deadline.store(deadline, Ordering::Relaxed);
                let expire_in = match deadline {
                    NEVER => NEVER,
                    at => at.saturating_sub(now),
                };
                entry.expire_in.store(expire_in, Ordering::Relaxed);
                if existed {
                    entry.self_puts.fetch_add(1, Ordering::AcqRel);
                }
                drop(leases);
                Op::Put(entry)
            });
        if full {
            return Err(StoreError::Full);
        }
        out.ok_or_else(|| StoreError::Protocol("cache compute did not run".into()))
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
        self.cache.run_pending_tasks();
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
    fn user_keys_are_stable_per_user_and_distinct_between_users() {
        let keys = UserKeys::new();
        assert_eq!(keys.of("alice"), keys.of("alice"));
        let distinct: std::collections::HashSet<_> =
            (0..10_000).map(|i| keys.of(&format!("user-{i}"))).collect();
        assert_eq!(distinct.len(), 10_000);
        // Another process (another random key) maps the same user elsewhere.
        assert_ne!(UserKeys::new().of("alice"), keys.of("alice"));
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
    fn decisions_that_keep_the_deadline_skip_moka_but_expiry_follows_the_leases() {
        let s = store(150, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        // A second request on the held stream and a refused open keep the deadline (held:
        // never), so they change the leases in place without a write to moka.
        assert!(futures_lite_block(s.renew("u", id)).unwrap());
        assert!(matches!(
            s.open_now("u", 1).unwrap(),
            Opened::Rejected { .. }
        ));
        s.release_now("u", id, true).unwrap();
        let entry = s.cache.get(&s.keys.of("u")).expect("stored");
        assert_eq!(
            entry.deadline.load(Ordering::Relaxed),
            NEVER,
            "still held once"
        );
        // The last release moves the deadline: written, so moka expires the entry on time.
        s.release_now("u", id, true).unwrap();
        assert_ne!(entry.deadline.load(Ordering::Relaxed), NEVER);
        assert!(matches!(
            s.open_now("u", 1).unwrap(),
            Opened::Rejected { .. }
        ));
        settle(&s, |s| s.counters.expired.get() == 1 && s.users() == 0);
        assert_eq!(s.counters.active.get(), 0);
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
        let s = store(100, 10);
        for u in ["a", "b"] {
            let id = admitted(s.open_now(u, 1).unwrap());
            s.release_now(u, id, true).unwrap();
        }
        settle(&s, |s| s.users() == 0);
        assert_eq!(s.counters.expired.get(), 2);
        assert_eq!(s.counters.active.get(), 0);
    }

    #[test]
    fn concurrent_opens_and_ends_keep_the_gauge_exact() {
        // Ending a user's last stream removes the entry while other threads open streams
        // for the same user: no lease may be lost or counted twice.
        let s = Arc::new(store(60_000, 10));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..3_000 {
                        if let Ok(Opened::Admitted(id)) = s.open_now("u", 3) {
                            s.release_now("u", id, true).unwrap();
                            assert!(futures_lite_block(s.end("u", id)).unwrap(), "lease lost");
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(futures_lite_block(s.list("u")).unwrap().is_empty());
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
