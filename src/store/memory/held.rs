//! The users with a request in flight, whose deadlines housekeeping keeps ahead.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::entry::UserEntry;
use super::keys::{UserKey, UserKeyHash};

/// The users with a held lease, whose deadlines housekeeping keeps ahead of the clock.
pub(super) type HeldShard = Mutex<HashMap<UserKey, Arc<UserEntry>, UserKeyHash>>;

/// Which shard of [`MemoryStore::held`] a user is in.
pub(super) fn held_shard(held: &[HeldShard], key: UserKey) -> &HeldShard {
    // The key is already a uniform hash.
    &held[(key as usize) % held.len()]
}

/// Take `entry` out of the held set, unless the key now names another entry.
pub(super) fn deregister(held: &[HeldShard], key: UserKey, entry: &Arc<UserEntry>) {
    let mut shard = held_shard(held, key).lock();
    if shard.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
        shard.remove(&key);
    }
}
