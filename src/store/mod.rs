//! Where active streams (leases) live, behind one trait so the proxy never knows which.
//!
//! A user's leases are decided atomically per user: each operation is one indivisible step
//! in the store (under the user's own lock in the memory store, one Lua script in Redis),
//! so 200 concurrent opens for one user admit exactly the limit. Every store answers the
//! same contract (`tests/store_contract.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prometheus::{IntCounter, IntGauge};

use crate::identity::StreamId;

pub mod memory;
pub mod redis;
pub mod refusals;

pub use self::redis::{RedisStore, Target};
pub use memory::MemoryStore;
pub use refusals::RefusalCache;

/// The outcome of asking to open a new stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A new lease was created and is held by the calling request.
    Admitted(StreamId),
    /// The id asked for in [`StreamStore::open_as`] was live already: it took one more
    /// hold on it, as a renewal would.
    Renewed(StreamId),
    /// The user already has `active` live leases, which is the limit.
    Rejected {
        active: u32,
        /// Time until the earliest of the user's leases could expire.
        retry_after: Duration,
    },
    /// Admitted (`id`, held by the caller) in the place of the user's lease `evicted`,
    /// which was ended in the same step and remembered as evicted ([`Gone`]).
    Evicted { id: StreamId, evicted: StreamId },
    /// At the limit within `streams.evict_cooldown` of the user's last eviction: refused
    /// instead of evicting again, so two devices cannot evict each other for ever.
    CoolingDown {
        active: u32,
        /// Time until the cooldown ends.
        retry_after: Duration,
    },
    /// The user is blocked (a [`UserRule::Block`]) for `retry_after` more.
    Blocked { retry_after: Duration },
    /// Admitted (`id`) in the place of `replaced`, the lease the same device held: an app
    /// restart, the next episode, a seek that refetched the master playlist.
    Replaced { id: StreamId, replaced: StreamId },
}

/// A device, as the store keys it: a hash of the user and the device id (never the id).
pub type DeviceKey = u64;

/// What an open may do beside admitting under the limit ([`StreamStore::open_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenWith {
    /// At the limit, evict instead of refusing (`streams.on_limit`).
    pub at_limit: Option<AtLimit>,
    /// The opening device (`streams.device_header`): a lease it already holds is replaced.
    pub device: Option<DeviceKey>,
}

/// A per-user rule the admin API sets, kept in the store so every instance obeys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRule {
    /// This many concurrent streams instead of the plan's or the config's limit.
    Limit(u32),
    /// No open and no renewal: `403 user_blocked`.
    Block,
}

/// Which rule ([`UserRule`]) to clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Limit,
    Block,
}

/// A user's rules in force, each with the time it has left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRules {
    pub limit: Option<(u32, Duration)>,
    pub blocked: Option<Duration>,
}

/// What an open at the limit may do instead of refusing (`streams.on_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtLimit {
    pub evict: Evict,
    /// After an eviction, the user's next limit hit within this is refused.
    pub cooldown: Duration,
    /// How long an evicted id is remembered ([`Gone`]).
    pub tombstone_ttl: Duration,
}

/// Which lease an open at the limit ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    /// The least recently renewed (a lease with a request in flight counts as renewed
    /// now, so it goes last).
    Oldest,
    /// The least recently renewed among leases with no request in flight and no renewal
    /// for this long; none such: refused.
    Idle(Duration),
}

/// Why a stream id is remembered as gone: its next request is `410`, never a new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// Ended to make room for another of the user's streams (`streams.on_limit`).
    Evicted,
    /// Ended through the admin API.
    Ended,
}

impl GoneReason {
    pub fn label(self) -> &'static str {
        match self {
            GoneReason::Evicted => "evicted",
            GoneReason::Ended => "ended",
        }
    }

    pub fn from_label(s: &str) -> Option<Self> {
        match s {
            "evicted" => Some(GoneReason::Evicted),
            "ended" => Some(GoneReason::Ended),
            _ => None,
        }
    }
}

/// A remembered stream id: why, and when (Unix time in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    pub reason: GoneReason,
    pub at_unix_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One live lease, as listed for a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: StreamId,
    /// `None` while a request of the stream is in flight (it cannot expire then).
    pub expires_in: Option<Duration>,
    /// When it was opened (Unix ms), where the store knows.
    pub opened_unix_ms: Option<u64>,
    /// Its last renewal (Unix ms); `None` while in flight in the memory store (renewed now).
    pub renewed_unix_ms: Option<u64>,
    /// The first 8 hex digits of the hash of the device that opened it.
    pub device: Option<String>,
    /// The instance that opened it or, while a request holds it, refreshed it last.
    pub served_by: Option<String>,
}

/// Why a store could not decide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store holds its maximum number of users")]
    Full,
    #[error("the store did not answer in time")]
    Timeout,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store answered something unexpected: {0}")]
    Protocol(String),
    #[error("the store refused our credentials (authentication failed): check the password in store.url")]
    Auth,
}

impl StoreError {
    /// Label for the `kind` of the store-errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Full => "full",
            StoreError::Timeout => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Protocol(_) => "protocol",
            StoreError::Auth => "auth",
        }
    }
}

/// Metric handles a store updates for events only it sees (leases that time out).
#[derive(Clone)]
pub struct LeaseCounters {
    /// Live leases this store knows of.
    pub active: IntGauge,
    /// Leases that ended by expiry.
    pub expired: IntCounter,
}

/// Tests: the id of an admission, or a panic naming what came instead.
#[cfg(test)]
pub(crate) fn admitted(o: Opened) -> StreamId {
    match o {
        Opened::Admitted(id) => id,
        other => panic!("expected an admission, got {other:?}"),
    }
}

impl LeaseCounters {
    /// Handles registered nowhere: for a store outside a server (tests, benchmarks,
    /// examples).
    pub fn unregistered() -> Self {
        Self {
            active: IntGauge::new("streamgate_active_streams", "Live leases.")
                .unwrap_or_else(|_| unreachable!("a valid metric name")),
            expired: IntCounter::new("streamgate_expired_leases_total", "Expired leases.")
                .unwrap_or_else(|_| unreachable!("a valid metric name")),
        }
    }
}

/// The store settings a reload changes while running (`streams.lease_ttl`,
/// `store.timeout`), read at each use.
#[derive(Debug)]
pub struct Tuning {
    ttl_ms: AtomicU64,
    timeout_ms: AtomicU64,
}

impl Tuning {
    pub fn new(lease_ttl: Duration, timeout: Duration) -> Self {
        let t = Self {
            ttl_ms: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(0),
        };
        t.set(lease_ttl, timeout);
        t
    }

    pub fn set(&self, lease_ttl: Duration, timeout: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        self.ttl_ms.store(ms(lease_ttl), Ordering::Relaxed);
        self.timeout_ms.store(ms(timeout), Ordering::Relaxed);
    }

    /// The lease TTL, in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms.load(Ordering::Relaxed)
    }

    /// How long one store call may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// How long a memory-store entry may outlive what its leases need (saves rewrites).
    pub fn slack_ms(&self) -> u64 {
        (self.ttl_ms() / 8).clamp(1, 1_000)
    }
}

/// The stream-lease store. All operations on one user are atomic with respect to each other.
#[async_trait]
pub trait StreamStore: Send + Sync + 'static {
    /// Open a new stream for `user` if it holds fewer than `limit` live leases. The new
    /// lease starts held (one request in flight).
    async fn open(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        self.open_as(user, limit, uuid::Uuid::new_v4()).await
    }

    /// [`Self::open`] under a given id: a player that comes back after its lease ran out
    /// still holds URLs naming it, and reopening under the same id makes it one lease
    /// again. Ids are looked up within `user` only, so this cannot touch another user's
    /// stream. If the id is live already (two such requests raced), it is renewed instead:
    /// [`Opened::Renewed`], not counted twice.
    async fn open_as(&self, user: &str, limit: u32, id: StreamId) -> Result<Opened, StoreError>;

    /// Continue a live stream of `user`: take one more hold on it. `false` when the stream
    /// is unknown, expired, or belongs to another user.
    async fn renew(&self, user: &str, id: StreamId) -> Result<bool, StoreError>;

    /// Drop one hold taken by `open` or `renew`. With `keep` the lease then lives for the
    /// TTL; without it (a failed open) the lease is removed at once.
    async fn release(&self, user: &str, id: StreamId, keep: bool) -> Result<(), StoreError>;

    /// End a stream now, whatever holds it has. `false` when it was not live.
    async fn end(&self, user: &str, id: StreamId) -> Result<bool, StoreError>;

    /// [`Self::open`] (or [`Self::open_as`] with `id`), and in the same atomic step: a
    /// lease `with.device` already holds is ended and its slot taken ([`Opened::Replaced`]);
    /// at the limit, `with.at_limit` ends one of the user's leases and admits in its place
    /// ([`Opened::Evicted`]) unless the user is cooling down from the last eviction.
    async fn open_with(
        &self,
        user: &str,
        limit: u32,
        id: Option<StreamId>,
        with: &OpenWith,
    ) -> Result<Opened, StoreError>;

    /// End a stream as [`Self::end`] does and remember its id as gone for `ttl`, so its
    /// next request is refused rather than opening it again. `false` when it was not live.
    async fn end_for_good(
        &self,
        user: &str,
        id: StreamId,
        reason: GoneReason,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Whether `user`'s stream `id` is remembered as gone (evicted or ended for good).
    async fn gone(&self, user: &str, id: StreamId) -> Result<Option<Gone>, StoreError>;

    /// Set a per-user rule for `ttl`; every open (and, for a block, every renewal) of the
    /// user obeys it in the same atomic step, on every instance.
    async fn set_rule(&self, user: &str, rule: UserRule, ttl: Duration) -> Result<(), StoreError>;

    /// Clear a per-user rule; whether there was one.
    async fn clear_rule(&self, user: &str, kind: RuleKind) -> Result<bool, StoreError>;

    /// The user's rules in force.
    async fn rules(&self, user: &str) -> Result<UserRules, StoreError>;

    /// The user's live leases.
    async fn list(&self, user: &str) -> Result<Vec<LeaseInfo>, StoreError>;

    /// Whether the store answers (for `/ready`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// How often a held lease must be refreshed while its request runs, for stores that
    /// cannot see in-flight requests themselves. `None`: holds never expire.
    fn hold_refresh_interval(&self) -> Option<Duration> {
        None
    }

    /// Push a held lease's expiry out by one TTL (see [`Self::hold_refresh_interval`]).
    /// `Some(why)` when the lease was ended on purpose meanwhile: the holder stops serving
    /// it (the backstop for an end whose message to this instance was lost).
    async fn refresh(&self, _user: &str, _id: StreamId) -> Result<Option<CutReason>, StoreError> {
        Ok(None)
    }

    /// Streams ended through other instances sharing this store, as they end: `on_end(user,
    /// id)` for each, so this instance cuts their requests in flight. Runs until dropped;
    /// a store no other instance uses has nothing to follow (the default waits forever).
    async fn follow_ends(&self, _on_end: &OnEnd<'_>) {
        std::future::pending::<()>().await
    }

    /// Take a reloaded `streams.lease_ttl` and `store.timeout` (see [`Tuning`]): the next
    /// call uses them; live leases keep their expiry until renewed.
    fn retune(&self, lease_ttl: Duration, timeout: Duration);

    /// Periodic housekeeping (evict expired users, settle gauges). The memory store also
    /// extends the deadlines of users with a request in flight here, so a server must call
    /// it at least every quarter of the lease TTL (`server/background.rs` does).
    fn maintain(&self) {}
}

/// Why a stream's requests in flight are cut (the `reason` of `streamgate_streams_cut_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// Ended by its player's `DELETE` or through the admin API.
    Ended,
    /// Evicted to make room for another of the user's streams.
    Evicted,
    /// Replaced by a new stream of the same device.
    Replaced,
}

impl CutReason {
    pub fn label(self) -> &'static str {
        match self {
            CutReason::Ended => "ended",
            CutReason::Evicted => "evicted",
            CutReason::Replaced => "replaced",
        }
    }
}

/// What a store calls for each stream ended elsewhere ([`StreamStore::follow_ends`]).
pub type OnEnd<'a> = dyn for<'u> Fn(&'u str, StreamId, CutReason) + Send + Sync + 'a;

/// Whole seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }
}
