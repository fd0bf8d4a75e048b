//! One user's entry in the cache: the leases, their lock, and when moka may drop it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use parking_lot::Mutex;

use super::keys::UserKey;
use crate::identity::StreamId;

#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    pub(super) id: StreamId,
    /// Milliseconds since the store's epoch; meaningful only when `holds == 0`.
    pub(super) expires_at: u64,
    /// Requests of this stream in flight.
    pub(super) holds: u32,
    /// The device that opened it ([`crate::store::DeviceKey`]); 0: none named.
    pub(super) device: u64,
    /// When it was opened, in store milliseconds (for the admin listing).
    pub(super) opened_at: u64,
}

impl Lease {
    pub(super) fn live(&self, now: u64) -> bool {
        self.holds > 0 || self.expires_at > now
    }
}

/// What an entry's lock guards.
#[derive(Debug, Default)]
pub(super) struct UserState {
    pub(super) leases: Vec<Lease>,
    /// The entry was removed from moka, or expired there: decide on the slow path.
    pub(super) dead: bool,
    /// The entry is in [`MemoryStore::held`].
    pub(super) registered: bool,
}

impl UserState {
    /// The latest instant any lease may still need, counting a held one as released now.
    pub(super) fn needed_until(&self, now: u64, ttl: u64) -> u64 {
        self.leases
            .iter()
            .map(|l| if l.holds > 0 { now + ttl } else { l.expires_at })
            .max()
            .unwrap_or(now)
    }

    pub(super) fn held(&self) -> bool {
        self.leases.iter().any(|l| l.holds > 0)
    }
}

/// One user's leases.
#[derive(Debug, Default)]
pub(super) struct UserEntry {
    pub(super) state: Mutex<UserState>,
    /// The deadline moka was last given, in store milliseconds (a lower bound of moka's
    /// own: moka starts counting `expire_in` a moment later). Written under `state`'s lock;
    /// read without it by housekeeping.
    pub(super) deadline: AtomicU64,
    /// Milliseconds until the entry may expire, as of its last write to moka.
    pub(super) expire_in: AtomicU64,
    /// Times this entry was stored again over itself and not yet reported by moka.
    pub(super) self_puts: AtomicU64,
}

impl UserEntry {
    /// How long moka should keep the entry, as of its last write.
    pub(super) fn expiry(&self) -> Duration {
        Duration::from_millis(self.expire_in.load(Ordering::Relaxed))
    }
}

pub(super) struct LeaseExpiry;

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
pub(super) enum Reach {
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
