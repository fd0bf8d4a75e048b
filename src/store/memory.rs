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

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::warn;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::SegmentedCache;
use moka::Expiry;
use parking_lot::Mutex;

use super::{LeaseCounters, LeaseInfo, Opened, StoreError, StreamStore};
use crate::identity::StreamId;

/// Independent moka caches the users are spread over. When many leases expire at once,
/// moka compacts a cache's table in one go on whichever thread trips it (a request's);
/// spread over segments, each compaction is a fraction of the table, so the stalls are
/// shorter (docs/tuning.md#housekeeping).
const SEGMENTS: usize = 8;

/// Shards of the set of users with a held lease (one lock each).
const HELD_SHARDS: usize = 16;

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

/// What an entry's lock guards.
#[derive(Debug, Default)]
struct UserState {
    leases: Vec<Lease>,
    /// The entry was removed from moka, or expired there: decide on the slow path.
    dead: bool,
    /// The entry is in [`MemoryStore::held`].
    registered: bool,
}

impl UserState {
    /// The latest instant any lease may still need, counting a held one as released now.
    fn needed_until(&self, now: u64, ttl: u64) -> u64 {
        self.leases
            .iter()
            .map(|l| if l.holds > 0 { now + ttl } else { l.expires_at })
            .max()
            .unwrap_or(now)
    }

    fn held(&self) -> bool {
        self.leases.iter().any(|l| l.holds > 0)
    }
}

/// One user's leases.
#[derive(Debug, Default)]
struct UserEntry {
    state: Mutex<UserState>,
    /// The deadline moka was last given, in store milliseconds (a lower bound of moka's
    /// own: moka starts counting `expire_in` a moment later). Written under `state`'s lock;
    /// read without it by housekeeping.
    deadline: AtomicU64,
    /// Milliseconds until the entry may expire, as of its last write to moka.
    expire_in: AtomicU64,
    /// Times this entry was stored again over itself and not yet reported by moka.
    self_puts: AtomicU64,
}

impl UserEntry {
    /// How long moka should keep the entry, as of its last write.
    fn expiry(&self) -> Duration {
        Duration::from_millis(self.expire_in.load(Ordering::Relaxed))
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

/// Hashes a [`UserKey`] for moka's table and the held set by folding its two halves.
/// The key already is a keyed hash (secret keys drawn per process), so its bits are uniform
/// and cannot be steered by clients; hashing it again with SipHash only cost time, most of
/// all when moka rehashes its whole table after many users expired.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }

    /// Not reached for a `UserKey` (a `u128` hashes through `write_u128`); kept correct
    /// for any other input by mixing each 8-byte word in.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

type UserKeyHash = BuildHasherDefault<FoldHasher>;

struct LeaseExpiry;

impl Expiry<UserKey, Arc<UserEntry>> for LeaseExpiry {
    fn expire_after_create(
        &self,
        _key: &UserKey,
        value: &Arc<UserEntry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.expiry())
    }

    fn expire_after_update(
        &self,
        _key: &UserKey,
        value: &Arc<UserEntry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expiry())
    }
}

/// How far a decision may move what the user's leases need, which picks its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Needs nothing later than the leases already need (a listing).
    Within,
    /// Never needs more than `now + TTL`: safe in place while that is within the deadline.
    UpToTtl,
    /// An open under this limit: a refusal (the user is at the limit) is [`Reach::Within`],
    /// an admission [`Reach::UpToTtl`].
    Open(u32),
    /// Removes leases: always on the slow path, so the deadline is brought back in.
    Shrinks,
}

/// The users with a held lease, whose deadlines housekeeping keeps ahead of the clock.
type HeldShard = Mutex<HashMap<UserKey, Arc<UserEntry>, UserKeyHash>>;

/// The embedded lease store. Call [`StreamStore::maintain`] at least every TTL/4: it keeps
/// users with a request in flight alive.
pub struct MemoryStore {
    cache: SegmentedCache<UserKey, Arc<UserEntry>, UserKeyHash>,
    keys: UserKeys,
    ttl_ms: u64,
    /// How long an entry may outlive what its leases need (saves rewrites).
    slack_ms: u64,
    epoch: Instant,
    users: Arc<AtomicU64>,
    max_users: u64,
    counters: LeaseCounters,
    held: Arc<[HeldShard]>,
}

/// Which shard of [`MemoryStore::held`] a user is in.
fn held_shard(held: &[HeldShard], key: UserKey) -> &HeldShard {
    // The key is already a uniform hash.
    &held[(key as usize) % held.len()]
}

/// Take `entry` out of the held set, unless the key now names another entry.
fn deregister(held: &[HeldShard], key: UserKey, entry: &Arc<UserEntry>) {
    let mut shard = held_shard(held, key).lock();
    if shard.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
        shard.remove(&key);
    }
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
        let ttl_ms = u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX / 4);
        Self {
            cache,
            keys: UserKeys::new(),
            ttl_ms,
            slack_ms: (ttl_ms / 8).clamp(1, 1_000),
            epoch: Instant::now(),
            users,
            max_users,
            counters,
            held,
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
            return self.compute(key, create, self.slack_ms, f);
        }
        match self.in_place(key, create, reach, f) {
            Ok(out) => Ok(out),
            Err(f) => self.compute(key, create, self.slack_ms, f),
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
        let up_to_ttl = now + self.ttl_ms <= entry.deadline.load(Ordering::Relaxed);
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
            let _ = self.compute(key, false, self.slack_ms, |_, _| ());
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
            let needed = st.needed_until(now, self.ttl_ms);
            let deadline = entry.deadline.load(Ordering::Relaxed);
            if existed && needed <= deadline && deadline <= needed + 2 * self.slack_ms {
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
        let horizon = self.now_ms() + self.ttl_ms;
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
                    let _ = self.compute(key, false, self.ttl_ms / 2, |_, _| ());
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

    #[cfg(test)]
    fn open_now(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        self.open_as_now(user, limit, uuid::Uuid::new_v4())
    }

    fn open_as_now(&self, user: &str, limit: u32, id: StreamId) -> Result<Opened, StoreError> {
        let ttl = self.ttl_ms;
        let opened = self.with_user(user, true, Reach::Open(limit), |leases, now| {
            if let Some(l) = leases.iter_mut().find(|l| l.id == id) {
                l.holds += 1;
                return Opened::Renewed(id);
            }
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
        let reach = if keep { Reach::UpToTtl } else { Reach::Shrinks };
        let removed = self.with_user(user, false, reach, |leases, now| {
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
    async fn open_as(&self, user: &str, limit: u32, id: StreamId) -> Result<Opened, StoreError> {
        self.open_as_now(user, limit, id)
    }

    async fn renew(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.with_user(user, false, Reach::UpToTtl, |leases, _now| {
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
        let ended = self.with_user(user, false, Reach::Shrinks, |leases, _now| {
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
        self.with_user(user, false, Reach::Within, |leases, now| {
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
        self.refresh_held();
        self.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, IntGauge};

    #[test]
    fn user_keys_hash_to_their_folded_halves() {
        let h = UserKeyHash::default();
        let key: UserKey = (0x0123_4567_89ab_cdef_u128 << 64) | 0xfedc_ba98_7654_3210;
        assert_eq!(
            h.hash_one(key),
            0x0123_4567_89ab_cdef ^ 0xfedc_ba98_7654_3210
        );
        assert_eq!(
            h.hash_one(Arc::new(key)),
            h.hash_one(key),
            "moka hashes an Arc<key>"
        );
        // Any other input still goes through a mix that tells inputs apart.
        assert_ne!(h.hash_one("user-a"), h.hash_one("user-b"));
        assert_ne!(h.hash_one([0u8; 9]), h.hash_one([0u8; 10]));
    }

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
    fn decisions_within_the_deadline_skip_moka_but_expiry_follows_the_leases() {
        let s = store(150, 10);
        let began = Instant::now();
        let id = admitted(s.open_now("u", 1).unwrap());
        let entry = s.cache.get(&s.keys.of("u")).expect("stored");
        let deadline = entry.deadline.load(Ordering::Relaxed);
        // A second request on the held stream, a refused open and the releases fit within
        // the deadline the open wrote: they change the leases in place.
        assert!(futures_lite_block(s.renew("u", id)).unwrap());
        assert!(matches!(
            s.open_now("u", 1).unwrap(),
            Opened::Rejected { .. }
        ));
        s.release_now("u", id, true).unwrap();
        s.release_now("u", id, true).unwrap();
        if began.elapsed() < Duration::from_millis(s.slack_ms) {
            // (On a machine slow enough to take longer, a write was due.)
            assert_eq!(entry.deadline.load(Ordering::Relaxed), deadline);
        }
        let list = futures_lite_block(s.list("u")).unwrap();
        assert!(list[0].expires_in.is_some(), "released");
        assert!(matches!(
            s.open_now("u", 1).unwrap(),
            Opened::Rejected { .. }
        ));
        // The entry still expires once the released lease has run out.
        settle(&s, |s| s.counters.expired.get() == 1 && s.users() == 0);
        assert_eq!(s.counters.active.get(), 0);
        admitted(s.open_now("u", 1).unwrap());
    }

    #[test]
    fn held_lease_outlives_the_ttl_while_housekeeping_ticks() {
        let s = store(100, 10);
        let id = admitted(s.open_now("u", 1).unwrap());
        let entry = s.cache.get(&s.keys.of("u")).expect("stored");
        let mut writes = 0;
        let mut last = entry.deadline.load(Ordering::Relaxed);
        // Five TTLs, with housekeeping on the server's tick (TTL/4).
        let began = Instant::now();
        while began.elapsed() < Duration::from_millis(500) {
            s.maintain();
            std::thread::sleep(Duration::from_millis(25));
            assert!(matches!(
                s.open_now("u", 1).unwrap(),
                Opened::Rejected { .. }
            ));
            let d = entry.deadline.load(Ordering::Relaxed);
            writes += u64::from(d != last);
            last = d;
        }
        // Each refresh buys half a TTL beyond the TTL it must keep: at most one write per
        // 50 ms, however the ticks fell.
        let most = began.elapsed().as_millis() as u64 / 50 + 1;
        assert!(
            writes <= most,
            "{writes} refreshes, at most {most} expected"
        );
        let list = futures_lite_block(s.list("u")).unwrap();
        assert_eq!(
            list,
            vec![LeaseInfo {
                id,
                expires_in: None
            }]
        );
        // Released, it lives one TTL more and then goes.
        s.release_now("u", id, true).unwrap();
        settle(&s, |s| s.users() == 0);
        assert_eq!(s.counters.expired.get(), 1);
        assert_eq!(s.counters.active.get(), 0);
        assert!(s.held.iter().all(|shard| shard.lock().is_empty()));
    }

    #[test]
    fn holds_survive_concurrent_renewals_past_many_ttls() {
        // Two streams held for ten TTLs while four threads renew and release them and try to
        // open more: no open may ever be admitted, and nothing may be lost.
        let s = Arc::new(store(100, 10));
        let ids = [
            admitted(s.open_now("u", 2).unwrap()),
            admitted(s.open_now("u", 2).unwrap()),
        ];
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let keeper = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    s.maintain();
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        };
        let until = Instant::now() + Duration::from_secs(1);
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let s = s.clone();
                let id = ids[i % 2];
                std::thread::spawn(move || {
                    let mut rounds = 0u32;
                    while Instant::now() < until {
                        assert!(futures_lite_block(s.renew("u", id)).unwrap(), "lease lost");
                        assert!(
                            matches!(s.open_now("u", 2), Ok(Opened::Rejected { .. })),
                            "admitted past the limit"
                        );
                        s.release_now("u", id, true).unwrap();
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        for w in workers {
            assert!(w.join().unwrap() > 0);
        }
        // The original holds are still there after a whole second (ten TTLs).
        assert_eq!(futures_lite_block(s.list("u")).unwrap().len(), 2);
        assert!(matches!(s.open_now("u", 2), Ok(Opened::Rejected { .. })));
        for id in ids {
            s.release_now("u", id, false).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        keeper.join().unwrap();
        assert_eq!(s.counters.active.get(), 0);
        s.maintain();
        assert_eq!(s.users(), 0);
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
