//! One stream, one player: how many requests of each stream are in flight here.
//!
//! A stream id travels in URLs, and a URL is easy to pass around: without a cap, any
//! number of screens could share one lease. Real players keep only a few requests of a
//! stream in flight (a segment per rendition, a playlist reload, an LL-HLS part; measured in
//! `docs/players.md`), so `streams.max_inflight_per_stream` caps them well above that, and
//! one more is `429 stream_busy`. The count is per instance: behind a load balancer that
//! spreads one player's requests over several instances, each instance caps its share.
//!
//! A slot is an RAII [`Slot`] kept in the request context, so it is given back however the
//! request ends.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::identity::StreamId;

const SHARDS: usize = 16;

type Key = (Arc<str>, StreamId);

/// In-flight requests per (user, stream), in shards with a lock each.
pub struct StreamInflight {
    max: u32,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Key, u32>>>,
}

/// One request's place in [`StreamInflight`]; dropping it gives the place back.
pub struct Slot {
    table: Arc<StreamInflight>,
    key: Key,
}

impl StreamInflight {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    fn shard(&self, id: &StreamId) -> &Mutex<HashMap<Key, u32>> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    /// A place for one more request of `user`'s stream `id`, unless it has the most
    /// allowed in flight already.
    pub fn enter(self: &Arc<Self>, user: &Arc<str>, id: StreamId) -> Option<Slot> {
        let key = (user.clone(), id);
        let mut shard = self.shard(&id).lock();
        let n = shard.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(shard);
        Some(Slot {
            table: self.clone(),
            key,
        })
    }

    /// Requests of `user`'s stream `id` in flight here.
    #[cfg(test)]
    pub fn count(&self, user: &Arc<str>, id: StreamId) -> u32 {
        let key = (user.clone(), id);
        self.shard(&id).lock().get(&key).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self.table.shard(&self.key.1).lock();
        if let Some(n) = shard.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_stream_of_each_user_and_gives_places_back() {
        let t = StreamInflight::new(2);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let id = uuid::Uuid::new_v4();
        let s1 = t.enter(&a, id).unwrap();
        let s2 = t.enter(&a, id).unwrap();
        assert!(t.enter(&a, id).is_none(), "third request of one stream");
        // The same id under another user is another stream.
        let other = t.enter(&b, id).unwrap();
        assert_eq!(t.count(&a, id), 2);
        drop(s1);
        assert_eq!(t.count(&a, id), 1);
        let s3 = t.enter(&a, id).unwrap();
        drop((s2, s3, other));
        assert_eq!(t.count(&a, id), 0);
        assert!(
            t.shards.iter().all(|s| s.lock().is_empty()),
            "nothing left behind"
        );
    }
}
