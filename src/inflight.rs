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
//!
//! The same table is how ending a stream reaches its requests in flight: [`StreamInflight::
//! cut`] marks every slot of the stream, the proxy fails each marked response at its next
//! body chunk (the client sees the connection close), and [`StreamInflight::wait_released`]
//! waits until they are gone. Without it a `DELETE` freed the slot while the response went
//! on, and one user could be served any number of bodies at once.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::identity::StreamId;
use crate::store::{CutReason, StoreError};

const SHARDS: usize = 16;

type Key = (Arc<str>, StreamId);

/// Whether a stream's requests in flight must stop, and who waits for them to.
#[derive(Default)]
struct Cut {
    /// 0 while not cut, else the [`CutReason`] (1 ended, 2 evicted, 3 replaced).
    cut: AtomicU8,
    released: tokio::sync::Notify,
}

impl Cut {
    fn reason(&self) -> Option<CutReason> {
        match self.cut.load(Ordering::Acquire) {
            0 => None,
            2 => Some(CutReason::Evicted),
            3 => Some(CutReason::Replaced),
            _ => Some(CutReason::Ended),
        }
    }
}

struct Entry {
    n: u32,
    cut: Arc<Cut>,
}

/// In-flight requests per (user, stream), in shards with a lock each.
pub struct StreamInflight {
    max: u32,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
}

/// One request's place in [`StreamInflight`]; dropping it gives the place back.
pub struct Slot {
    table: Arc<StreamInflight>,
    key: Key,
    cut: Arc<Cut>,
}

impl Slot {
    /// Why the stream was ended while this request was in flight (`None`: it was not):
    /// stop serving it.
    pub fn cut(&self) -> Option<CutReason> {
        self.cut.reason()
    }
}

impl StreamInflight {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    fn shard(&self, id: &StreamId) -> &Mutex<HashMap<Key, Entry>> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    /// A place for one more request of `user`'s stream `id`, unless it has the most
    /// allowed in flight already.
    pub fn enter(self: &Arc<Self>, user: &Arc<str>, id: StreamId) -> Option<Slot> {
        let key = (user.clone(), id);
        let mut shard = self.shard(&id).lock();
        let e = shard.entry(key.clone()).or_insert_with(|| Entry {
            n: 0,
            cut: Arc::default(),
        });
        if e.n >= self.max {
            return None;
        }
        e.n += 1;
        let cut = e.cut.clone();
        drop(shard);
        Some(Slot {
            table: self.clone(),
            key,
            cut,
        })
    }

    /// Requests of `user`'s stream `id` in flight here.
    pub fn count(&self, user: &str, id: StreamId) -> u32 {
        let key: Key = (user.into(), id);
        self.shard(&id).lock().get(&key).map_or(0, |e| e.n)
    }

    /// Mark every request of `user`'s stream `id` in flight here to be stopped, for
    /// `why`; how many there are.
    pub fn cut(&self, user: &str, id: StreamId, why: CutReason) -> u32 {
        let key: Key = (user.into(), id);
        let code = match why {
            CutReason::Ended => 1,
            CutReason::Evicted => 2,
            CutReason::Replaced => 3,
        };
        match self.shard(&id).lock().get(&key) {
            Some(e) => {
                e.cut.cut.store(code, Ordering::Release);
                e.n
            }
            None => 0,
        }
    }

    /// End a stream: its requests in flight here are cut first, then (once they have let
    /// go, at most `within` later) `end_lease`, the store's end, runs; the store tells
    /// other instances, which cut theirs. Whether there was anything to end (a cut
    /// opening request gives its lease back as it fails: ended all the same).
    pub async fn end<F>(
        &self,
        user: &str,
        id: StreamId,
        within: Duration,
        end_lease: F,
    ) -> Result<bool, StoreError>
    where
        F: std::future::Future<Output = Result<bool, StoreError>>,
    {
        let cut = self.cut(user, id, CutReason::Ended);
        if cut > 0 && !self.wait_released(user, id, within).await {
            log::warn!("stream {id}: requests still in flight {within:?} after it was ended");
        }
        Ok(end_lease.await? || cut > 0)
    }

    /// Wait (at most `within`) until no request of the stream is in flight here; whether
    /// none is.
    pub async fn wait_released(&self, user: &str, id: StreamId, within: Duration) -> bool {
        let key: Key = (user.into(), id);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let cut = match self.shard(&id).lock().get(&key) {
                Some(e) => e.cut.clone(),
                None => return true,
            };
            let released = cut.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.count(user, id) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.count(user, id) == 0;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self.table.shard(&self.key.1).lock();
        if let Some(e) = shard.get_mut(&self.key) {
            e.n -= 1;
            if e.n == 0 {
                shard.remove(&self.key);
                drop(shard);
                if self.cut().is_some() {
                    self.cut.released.notify_waiters();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cut_marks_the_streams_requests_and_waits_for_them() {
        let t = StreamInflight::new(8);
        let a: Arc<str> = "a".into();
        let (id, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let s1 = t.enter(&a, id).unwrap();
        let s2 = t.enter(&a, id).unwrap();
        let untouched = t.enter(&a, other).unwrap();
        assert_eq!(t.cut("a", id, CutReason::Ended), 2);
        assert!(s1.cut() == Some(CutReason::Ended) && s2.cut().is_some());
        assert!(
            untouched.cut().is_none(),
            "another stream of the user goes on"
        );
        assert!(!t.wait_released("a", id, Duration::from_millis(20)).await);
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.wait_released("a", id, Duration::from_secs(5)).await })
        };
        drop(s1);
        tokio::task::yield_now().await;
        drop(s2);
        assert!(waiter.await.unwrap(), "released once both ended");
        assert!(
            t.enter(&a, id).is_some_and(|s| s.cut().is_none()),
            "a new request starts fresh"
        );
    }

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
        assert_eq!(
            t.cut(&a, id, CutReason::Ended),
            0,
            "nothing in flight to cut"
        );
        assert!(
            t.shards.iter().all(|s| s.lock().is_empty()),
            "nothing left behind"
        );
    }
}
