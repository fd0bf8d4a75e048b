//! The hold a request has on its stream, as a value that cannot be forgotten.
//!
//! A [`LeaseHold`] lives in the request context from admission to `logging`, where it is
//! released with the request's outcome. If a request never reaches `logging` (a panicking
//! filter), `Drop` releases it instead, so a slot cannot leak through any path of Pingora's
//! lifecycle; a crashed process is covered by the lease TTL. For stores that cannot see
//! in-flight requests (Redis), the hold also keeps the lease fresh while the request runs.

use std::sync::Arc;

use log::warn;
use prometheus::IntGauge;
use tokio::task::JoinHandle;

use crate::identity::StreamId;
use crate::inflight::StreamInflight;
use crate::store::StreamStore;

/// How a request came to hold its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// The request opened the stream; if it fails, the stream is given back at once.
    Opened,
    /// The request continues a live stream.
    Renewed,
}

/// The one rule for what a request's end does to its stream's lease: an opened stream
/// whose request failed is given back at once (so a retry is admitted); anything else keeps
/// its lease for the TTL. Which endings count as failed: `proxy::hold_failed`.
pub fn keeps_lease(kind: HoldKind, failed: bool) -> bool {
    !(failed && kind == HoldKind::Opened)
}

pub struct LeaseHold {
    store: Arc<dyn StreamStore>,
    user: Arc<str>,
    id: StreamId,
    kind: HoldKind,
    inflight: IntGauge,
    refresher: Option<JoinHandle<()>>,
    released: bool,
}

impl LeaseHold {
    /// Take ownership of a hold the store has already granted. A refresh that finds the
    /// stream ended on purpose cuts its requests in flight in `table` (the backstop when
    /// the end's message to this instance was lost).
    pub fn new(
        store: Arc<dyn StreamStore>,
        user: Arc<str>,
        id: StreamId,
        kind: HoldKind,
        inflight: IntGauge,
        table: Option<Arc<StreamInflight>>,
    ) -> Self {
        inflight.inc();
        let refresher = store.hold_refresh_interval().and_then(|_| {
            let handle = tokio::runtime::Handle::try_current().ok()?;
            let (store, user) = (store.clone(), user.clone());
            Some(handle.spawn(async move {
                // The interval is read each time: a reload may shorten the TTL under a
                // long-held stream.
                while let Some(every) = store.hold_refresh_interval() {
                    tokio::time::sleep(every).await;
                    match store.refresh(&user, id).await {
                        Ok(None) => {}
                        Ok(Some(why)) => {
                            if let Some(t) = &table {
                                t.cut(&user, id, why);
                            }
                            return;
                        }
                        Err(e) => warn!("could not refresh held stream {id}: {e}"),
                    }
                }
            }))
        });
        Self {
            store,
            user,
            id,
            kind,
            inflight,
            refresher,
            released: false,
        }
    }

    /// Whether ending now with `failed` would give the stream back.
    pub fn gives_back(&self, failed: bool) -> bool {
        !keeps_lease(self.kind, failed)
    }

    fn settle(&mut self) {
        self.released = true;
        self.inflight.dec();
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
    }

    /// Release the hold. `failed` gives an opened stream back at once; a renewed stream
    /// always keeps its lease for the TTL.
    pub async fn release(mut self, failed: bool) {
        // No refresh after the release; the hold counts as in flight until the store has
        // the release (so `inflight_requests` at 0 means every lease is settled).
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        let keep = keeps_lease(self.kind, failed);
        if let Err(e) = self.store.release(&self.user, self.id, keep).await {
            warn!(
                "could not release stream {}: {e}; its lease will expire",
                self.id
            );
        }
        self.settle();
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.settle();
        // Dropped without `release`: the request ended abnormally, so count it as failed.
        let keep = keeps_lease(self.kind, true);
        let (store, user, id) = (self.store.clone(), self.user.clone(), self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = store.release(&user, id, keep).await;
                });
            }
            Err(_) => warn!("stream {id} dropped outside a runtime; its lease will expire"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LeaseCounters, MemoryStore, Opened};
    use std::time::Duration;

    fn setup() -> (Arc<MemoryStore>, IntGauge) {
        let counters = LeaseCounters::unregistered();
        let store = Arc::new(MemoryStore::new(Duration::from_secs(60), 10, counters));
        (store, IntGauge::new("i", "i").unwrap())
    }

    async fn open(store: &Arc<MemoryStore>) -> StreamId {
        match store.open("u", 1).await.unwrap() {
            Opened::Admitted(id) => id,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn dropping_an_opened_hold_gives_the_slot_back() {
        let (store, inflight) = setup();
        let id = open(&store).await;
        let hold = LeaseHold::new(
            store.clone(),
            "u".into(),
            id,
            HoldKind::Opened,
            inflight.clone(),
            None,
        );
        assert_eq!(inflight.get(), 1);
        drop(hold);
        assert_eq!(inflight.get(), 0);
        // The release runs on a spawned task; wait for it by yielding until it has.
        for _ in 0..100 {
            if store.list("u").await.unwrap().is_empty() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("dropped hold was not released");
    }

    #[tokio::test]
    async fn released_hold_keeps_lease_unless_failed_open() {
        let (store, inflight) = setup();
        let id = open(&store).await;
        LeaseHold::new(
            store.clone(),
            "u".into(),
            id,
            HoldKind::Opened,
            inflight.clone(),
            None,
        )
        .release(false)
        .await;
        assert_eq!(store.list("u").await.unwrap().len(), 1);
        assert!(store.renew("u", id).await.unwrap());
        // A failed renewal does not end the stream.
        LeaseHold::new(
            store.clone(),
            "u".into(),
            id,
            HoldKind::Renewed,
            inflight.clone(),
            None,
        )
        .release(true)
        .await;
        assert_eq!(store.list("u").await.unwrap().len(), 1);
        assert_eq!(inflight.get(), 0);
    }
}
