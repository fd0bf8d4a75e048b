use super::*;
use crate::store::{LeaseCounters, MemoryStore};

/// The real store these tests put behind the cache.
fn memory(ttl: Duration) -> MemoryStore {
    let counters = LeaseCounters::unregistered();
    MemoryStore::new(ttl, 1_000, counters)
}

fn cached(ttl: Duration, keep: Duration) -> (RefusalCache, IntCounter) {
    let inner = memory(ttl);
    let answered = IntCounter::new("c", "c").unwrap();
    (
        RefusalCache::new(Arc::new(inner), keep, answered.clone()),
        answered,
    )
}

use crate::store::admitted;

#[tokio::test]
async fn a_refusal_is_answered_from_memory_until_a_local_end_forgets_it() {
    let (s, answered) = cached(Duration::from_secs(60), Duration::from_secs(60));
    let id = admitted(s.open("u", 1).await.unwrap());
    s.release("u", id, true).await.unwrap();
    assert!(matches!(
        s.open("u", 1).await,
        Ok(Opened::Rejected { active: 1, .. })
    ));
    assert_eq!(answered.get(), 0, "the first refusal comes from the store");
    let Ok(Opened::Rejected { retry_after, .. }) = s.open("u", 1).await else {
        panic!("the second open must be refused");
    };
    assert_eq!(answered.get(), 1, "the second from memory");
    assert!(retry_after <= Duration::from_secs(60) && retry_after > Duration::from_secs(50));
    // Another user, or the same user against another limit, still asks the store.
    admitted(s.open("v", 1).await.unwrap());
    let other = admitted(s.open("u", 2).await.unwrap());
    // Ending a stream here frees a slot: the refusal is forgotten, the store asked again.
    assert!(s.end("u", other).await.unwrap());
    assert!(matches!(s.open("u", 1).await, Ok(Opened::Rejected { .. })));
    assert_eq!(answered.get(), 1, "asked the store after the end");
    assert!(matches!(s.open("u", 1).await, Ok(Opened::Rejected { .. })));
    assert_eq!(answered.get(), 2, "and remembered its answer again");
    assert!(s.end("u", id).await.unwrap());
    admitted(s.open("u", 1).await.unwrap());
}

/// The memory store, whose `open` can be held between its decision and its answer.
struct Paused {
    inner: MemoryStore,
    pause: std::sync::atomic::AtomicBool,
    decided: tokio::sync::Notify,
    resume: tokio::sync::Notify,
}

#[async_trait]
impl StreamStore for Paused {
    async fn open_as(&self, user: &str, limit: u32, id: StreamId) -> Result<Opened, StoreError> {
        let r = self.inner.open_as(user, limit, id).await;
        if self.pause.load(Ordering::SeqCst) {
            self.decided.notify_one();
            self.resume.notified().await;
        }
        r
    }
    async fn renew(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.inner.renew(user, id).await
    }
    async fn release(&self, user: &str, id: StreamId, keep: bool) -> Result<(), StoreError> {
        self.inner.release(user, id, keep).await
    }
    async fn end(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.inner.end(user, id).await
    }
    fn retune(&self, lease_ttl: Duration, timeout: Duration) {
        self.inner.retune(lease_ttl, timeout);
    }
    async fn list(&self, user: &str) -> Result<Vec<LeaseInfo>, StoreError> {
        self.inner.list(user).await
    }
    async fn open_with(
        &self,
        user: &str,
        limit: u32,
        id: Option<StreamId>,
        with: &OpenWith,
    ) -> Result<Opened, StoreError> {
        self.inner.open_with(user, limit, id, with).await
    }
    async fn end_for_good(
        &self,
        user: &str,
        id: StreamId,
        reason: GoneReason,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.end_for_good(user, id, reason, ttl).await
    }
    async fn gone(&self, user: &str, id: StreamId) -> Result<Option<Gone>, StoreError> {
        self.inner.gone(user, id).await
    }
    async fn set_rule(&self, user: &str, rule: UserRule, ttl: Duration) -> Result<(), StoreError> {
        self.inner.set_rule(user, rule, ttl).await
    }
    async fn clear_rule(&self, user: &str, kind: RuleKind) -> Result<bool, StoreError> {
        self.inner.clear_rule(user, kind).await
    }
    async fn rules(&self, user: &str) -> Result<UserRules, StoreError> {
        self.inner.rules(user).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A refusal the store decided before a stream was ended here, but that comes back
/// after it, is stale: it must not be remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_overtaken_by_a_local_end_is_not_remembered() {
    let paused = Arc::new(Paused {
        inner: memory(Duration::from_secs(60)),
        pause: Default::default(),
        decided: Default::default(),
        resume: Default::default(),
    });
    let answered = IntCounter::new("c", "c").unwrap();
    let s = Arc::new(RefusalCache::new(
        paused.clone(),
        Duration::from_secs(60),
        answered.clone(),
    ));
    let id = admitted(s.open("u", 1).await.unwrap());
    paused.pause.store(true, Ordering::SeqCst);
    let refused = tokio::spawn({
        let s = s.clone();
        async move { s.open("u", 1).await }
    });
    paused.decided.notified().await;
    assert!(s.end("u", id).await.unwrap());
    paused.pause.store(false, Ordering::SeqCst);
    paused.resume.notify_one();
    assert!(matches!(
        refused.await.unwrap(),
        Ok(Opened::Rejected { .. })
    ));
    admitted(s.open("u", 1).await.unwrap());
    assert_eq!(answered.get(), 0);
}

#[tokio::test]
async fn a_failed_open_forgets_the_refusal_and_a_kept_release_does_not() {
    let (s, answered) = cached(Duration::from_secs(60), Duration::from_secs(60));
    let a = admitted(s.open("u", 2).await.unwrap());
    let b = admitted(s.open("u", 2).await.unwrap());
    assert!(matches!(s.open("u", 2).await, Ok(Opened::Rejected { .. })));
    s.release("u", a, true).await.unwrap();
    assert!(matches!(s.open("u", 2).await, Ok(Opened::Rejected { .. })));
    assert_eq!(answered.get(), 1);
    s.release("u", b, false).await.unwrap();
    admitted(s.open("u", 2).await.unwrap());
}

#[tokio::test]
async fn a_remembered_refusal_ends_when_the_earliest_lease_can_expire() {
    // Leases of 200 ms, refusals kept for up to a minute: the lease decides.
    let (s, _) = cached(Duration::from_millis(200), Duration::from_secs(60));
    let id = admitted(s.open("u", 1).await.unwrap());
    s.release("u", id, true).await.unwrap();
    let t = Instant::now();
    assert!(matches!(s.open("u", 1).await, Ok(Opened::Rejected { .. })));
    loop {
        if let Opened::Admitted(_) = s.open("u", 1).await.unwrap() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "never admitted again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(t.elapsed() < Duration::from_secs(2));
}
