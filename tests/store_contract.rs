//! One contract, every store: the memory store, Redis, and Redis Cluster must all answer it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::{RedisCluster, RedisServer};
use prometheus::IntCounter;
use streamgate::store::{
    AtLimit, Evict, GoneReason, LeaseCounters, MemoryStore, OpenWith, Opened, RedisStore,
    RefusalCache, StreamStore, Target,
};
use uuid::Uuid;

fn counters() -> LeaseCounters {
    LeaseCounters::unregistered()
}

type Factory = Box<dyn Fn(Duration) -> Arc<dyn StreamStore>>;

fn memory() -> Factory {
    Box::new(|ttl| Arc::new(MemoryStore::new(ttl, 100_000, counters())))
}

fn redis(target: Target) -> Factory {
    Box::new(move |ttl| {
        // A fresh prefix per store keeps each check's keys apart in one server.
        let prefix = format!("t{}", Uuid::new_v4().simple());
        // A generous timeout: 200 concurrent scripts in a debug build on two busy cores
        // must not turn into errors, since the check judges exactness, not latency.
        Arc::new(RedisStore::new(
            target.clone(),
            &prefix,
            ttl,
            Duration::from_secs(2),
            counters(),
        ))
    })
}

async fn admitted(s: &Arc<dyn StreamStore>, user: &str, limit: u32) -> Uuid {
    match s.open(user, limit).await.expect("store answers") {
        Opened::Admitted(id) => id,
        other => panic!("expected admission, got {other:?}"),
    }
}

async fn refused(s: &Arc<dyn StreamStore>, user: &str, limit: u32) -> (u32, Duration) {
    match s.open(user, limit).await.expect("store answers") {
        Opened::Rejected {
            active,
            retry_after,
        } => (active, retry_after),
        other => panic!("expected rejection, got {other:?}"),
    }
}

/// Poll `open` until it admits (bounded: 10 s).
async fn admitted_eventually(s: &Arc<dyn StreamStore>, user: &str, limit: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Opened::Admitted(_) = s.open(user, limit).await.unwrap() {
            return;
        }
        assert!(Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn contract(make: Factory) {
    let ttl = Duration::from_secs(60);

    // Admission up to the limit, then refusal with the active count and a retry time.
    let s = make(ttl);
    s.ping().await.unwrap();
    let a = admitted(&s, "u", 2).await;
    let b = admitted(&s, "u", 2).await;
    assert_ne!(a, b);
    let (active, retry) = refused(&s, "u", 2).await;
    assert_eq!(active, 2);
    assert!(retry <= ttl && retry > Duration::from_secs(50), "{retry:?}");
    admitted(&s, "other-user", 2).await;
    let mut listed: Vec<Uuid> = s
        .list("u")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    listed.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(listed, want);

    // Renewal: only the owner, only live streams; back-to-back renewals (same clock tick)
    // all succeed.
    for _ in 0..20 {
        assert!(s.renew("u", a).await.unwrap());
        s.release("u", a, true).await.unwrap();
    }
    assert!(s.renew("u", a).await.unwrap());
    assert!(!s.renew("other-user", a).await.unwrap());
    assert!(!s.renew("u", Uuid::new_v4()).await.unwrap());
    s.release("u", a, true).await.unwrap();

    // End: only the owner; then the slot is free at once.
    assert!(!s.end("other-user", b).await.unwrap());
    assert!(s.end("u", b).await.unwrap());
    assert!(!s.end("u", b).await.unwrap());
    admitted(&s, "u", 2).await;

    // A failed open gives its slot back at once.
    let s = make(ttl);
    let c = admitted(&s, "f", 1).await;
    s.release("f", c, false).await.unwrap();
    assert!(s.list("f").await.unwrap().is_empty());
    admitted(&s, "f", 1).await;

    // A released lease lives for the TTL, then expires.
    let s = make(Duration::from_secs(1));
    let d = admitted(&s, "e", 1).await;
    s.release("e", d, true).await.unwrap();
    refused(&s, "e", 1).await;
    admitted_eventually(&s, "e", 1).await;
    assert!(
        !s.renew("e", d).await.unwrap(),
        "an expired stream cannot be renewed"
    );

    // Concurrent opens for one user admit exactly the limit.
    let s = make(ttl);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { matches!(s.open("crowd", 3).await, Ok(Opened::Admitted(_))) })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.unwrap());
    }
    assert_eq!(n, 3);
    assert_eq!(s.list("crowd").await.unwrap().len(), 3);

    // Opening under a given id (a paused player resuming): admitted under that id, counted
    // like any open; the same id again while live renews it (two resumes raced) and is not
    // counted twice; another user's namespace is separate; at the limit, refused.
    let s = make(ttl);
    let id = Uuid::new_v4();
    assert_eq!(s.open_as("r", 2, id).await.unwrap(), Opened::Admitted(id));
    assert_eq!(s.open_as("r", 2, id).await.unwrap(), Opened::Renewed(id));
    assert_eq!(s.list("r").await.unwrap().len(), 1);
    assert_eq!(
        s.open_as("other", 1, id).await.unwrap(),
        Opened::Admitted(id)
    );
    assert_eq!(
        s.list("r").await.unwrap().len(),
        1,
        "another user's open leaves r alone"
    );
    admitted(&s, "r", 2).await;
    assert!(matches!(
        s.open_as("r", 2, Uuid::new_v4()).await.unwrap(),
        Opened::Rejected { active: 2, .. }
    ));
    assert_eq!(
        s.open_as("r", 2, id).await.unwrap(),
        Opened::Renewed(id),
        "a live id at the limit is renewed, not refused"
    );
}

/// An open at the limit with eviction (`streams.on_limit`).
fn evicting(evict: Evict, cooldown_ms: u64, tombstone_ms: u64) -> AtLimit {
    AtLimit {
        evict,
        cooldown: Duration::from_millis(cooldown_ms),
        tombstone_ttl: Duration::from_millis(tombstone_ms),
    }
}

/// An open that evicts as `at` says.
fn with(at: &AtLimit) -> OpenWith {
    OpenWith {
        at_limit: Some(*at),
        device: None,
    }
}

/// The id an evicting open admitted and the one it evicted, or a panic naming the answer.
async fn evicts(s: &Arc<dyn StreamStore>, user: &str, limit: u32, at: &AtLimit) -> (Uuid, Uuid) {
    match s.open_with(user, limit, None, &with(at)).await.unwrap() {
        Opened::Evicted { id, evicted } => (id, evicted),
        other => panic!("expected an eviction, got {other:?}"),
    }
}

/// Poll `check` (bounded: 10 s).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Eviction and remembered ids, the same on every store.
async fn eviction_contract(make: Factory) {
    let ttl = Duration::from_secs(60);
    let oldest = evicting(Evict::Oldest, 0, 60_000);

    // evict_oldest: under the limit an open is a plain admission; at it, the least
    // recently renewed lease is ended in the same step and remembered as evicted. A lease
    // held (a request in flight) counts as renewed now, so the idle one goes first.
    let s = make(ttl);
    let a = match s.open_with("e", 2, None, &with(&oldest)).await.unwrap() {
        Opened::Admitted(id) => id,
        other => panic!("under the limit: {other:?}"),
    };
    s.release("e", a, true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = admitted(&s, "e", 2).await;
    s.release("e", b, true).await.unwrap();
    let (c, evicted) = evicts(&s, "e", 2, &oldest).await;
    assert_eq!(evicted, a, "the least recently renewed");
    let gone = s.gone("e", a).await.unwrap().expect("a is remembered");
    assert_eq!(gone.reason, GoneReason::Evicted);
    assert!(s.gone("e", b).await.unwrap().is_none());
    assert!(!s.renew("e", a).await.unwrap(), "an evicted lease is gone");
    assert_eq!(s.list("e").await.unwrap().len(), 2);
    // c is held: b, idle, goes next.
    s.refresh("e", c).await.unwrap();
    let (_, evicted) = evicts(&s, "e", 2, &oldest).await;
    assert_eq!(evicted, b);
    assert_eq!(s.list("e").await.unwrap().len(), 2);
    // Ids are remembered per user.
    assert!(s.gone("other", a).await.unwrap().is_none());

    // evict_idle: only a lease without a renewal or hold refresh for the window; none:
    // refused as without eviction.
    let idle = evicting(Evict::Idle(Duration::from_millis(300)), 0, 60_000);
    let s = make(ttl);
    let held = admitted(&s, "i", 2).await;
    let quiet = admitted(&s, "i", 2).await;
    s.release("i", quiet, true).await.unwrap();
    assert!(matches!(
        s.open_with("i", 2, None, &with(&idle)).await.unwrap(),
        Opened::Rejected { active: 2, .. }
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // What a hold does while its request runs (Redis cannot see it otherwise).
    s.refresh("i", held).await.unwrap();
    let (_, evicted) = evicts(&s, "i", 2, &idle).await;
    assert_eq!(evicted, quiet, "the idle lease, never the held one");
    assert!(matches!(
        s.open_with("i", 2, None, &with(&idle)).await.unwrap(),
        Opened::Rejected { .. }
    ));

    // The cooldown: the next limit hit within it is refused, then eviction resumes.
    let cooling = evicting(Evict::Oldest, 300, 60_000);
    let s = make(ttl);
    let first = admitted(&s, "c", 1).await;
    s.release("c", first, true).await.unwrap();
    let (second, evicted) = evicts(&s, "c", 1, &cooling).await;
    assert_eq!(evicted, first);
    match s.open_with("c", 1, None, &with(&cooling)).await.unwrap() {
        Opened::CoolingDown {
            active,
            retry_after,
        } => {
            assert_eq!(active, 1);
            assert!(retry_after <= Duration::from_millis(300), "{retry_after:?}");
        }
        other => panic!("expected the cooldown, got {other:?}"),
    }
    until("the cooldown ends", || async {
        matches!(
            s.open_with("c", 1, None, &with(&cooling)).await.unwrap(),
            Opened::Evicted { evicted, .. } if evicted == second
        )
    })
    .await;

    // Ending for good remembers the id (for its TTL only); a plain end does not.
    let s = make(ttl);
    let k = admitted(&s, "k", 3).await;
    let plain = admitted(&s, "k", 3).await;
    assert!(s
        .end_for_good("k", k, GoneReason::Ended, Duration::from_millis(300))
        .await
        .unwrap());
    assert_eq!(
        s.gone("k", k).await.unwrap().map(|g| g.reason),
        Some(GoneReason::Ended)
    );
    let unknown = Uuid::new_v4();
    assert!(!s
        .end_for_good("k", unknown, GoneReason::Ended, ttl)
        .await
        .unwrap());
    assert!(
        s.gone("k", unknown).await.unwrap().is_none(),
        "nothing ended"
    );
    assert!(s.end("k", plain).await.unwrap());
    assert!(s.gone("k", plain).await.unwrap().is_none());
    until("the tombstone expires", || async {
        s.gone("k", k).await.unwrap().is_none()
    })
    .await;

    // Contended: 200 concurrent evicting opens of one user leave exactly the limit, and
    // every id evicted on the way is remembered.
    let s = make(ttl);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let s = s.clone();
            let at = oldest;
            tokio::spawn(async move { s.open_with("crowd", 3, None, &with(&at)).await.unwrap() })
        })
        .collect();
    let mut evicted = Vec::new();
    let mut admitted_n = 0;
    for t in tasks {
        match t.await.unwrap() {
            Opened::Admitted(_) => admitted_n += 1,
            Opened::Evicted { evicted: e, .. } => evicted.push(e),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((admitted_n, evicted.len()), (3, 197));
    assert_eq!(s.list("crowd").await.unwrap().len(), 3);
    let distinct: std::collections::HashSet<_> = evicted.iter().collect();
    assert_eq!(distinct.len(), 197, "each lease evicted once");
    for e in &evicted {
        assert!(s.gone("crowd", *e).await.unwrap().is_some());
    }
}

/// A device replaces its own lease: ten restarts of one device keep one lease; another
/// device counts on its own; the limit still holds for new devices.
async fn device_contract(make: Factory) {
    let s = make(Duration::from_secs(60));
    let tv = OpenWith {
        at_limit: None,
        device: Some(0x7465_6c65),
    };
    let mut last = match s.open_with("d", 2, None, &tv).await.unwrap() {
        Opened::Admitted(id) => id,
        other => panic!("{other:?}"),
    };
    for restart in 0..10 {
        match s.open_with("d", 2, None, &tv).await.unwrap() {
            Opened::Replaced { id, replaced } => {
                assert_eq!(replaced, last, "restart {restart} replaces the last stream");
                last = id;
            }
            other => panic!("restart {restart}: {other:?}"),
        }
        assert_eq!(s.list("d").await.unwrap().len(), 1);
    }
    assert!(s.renew("d", last).await.unwrap());
    let phone = OpenWith {
        at_limit: None,
        device: Some(0x7068_6f6e),
    };
    assert!(matches!(
        s.open_with("d", 2, None, &phone).await.unwrap(),
        Opened::Admitted(_)
    ));
    let tablet = OpenWith {
        at_limit: None,
        device: Some(0x7461_626c),
    };
    assert!(matches!(
        s.open_with("d", 2, None, &tablet).await.unwrap(),
        Opened::Rejected { active: 2, .. }
    ));
    // The same device id under another user is another device.
    assert!(matches!(
        s.open_with("e", 2, None, &tv).await.unwrap(),
        Opened::Admitted(_)
    ));
    assert_eq!(s.list("d").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_replaces_a_devices_own_lease() {
    device_contract(memory()).await;
    let server = RedisServer::start();
    device_contract(redis(Target::Single(server.url()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_keeps_the_contract() {
    contract(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_keeps_the_eviction_contract() {
    eviction_contract(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_the_eviction_contract() {
    let server = RedisServer::start();
    eviction_contract(redis(Target::Single(server.url()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_keeps_the_eviction_contract() {
    let cluster = RedisCluster::start();
    eviction_contract(redis(Target::Cluster(cluster.urls()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_the_contract() {
    let server = RedisServer::start();
    contract(redis(Target::Single(server.url()))).await;
}

/// Remembered refusals (`store.refusal_cache`) change nothing a single instance can see:
/// every end and failed open passes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_with_remembered_refusals_keeps_the_contract() {
    let server = RedisServer::start();
    let inner = redis(Target::Single(server.url()));
    contract(Box::new(move |ttl| {
        Arc::new(RefusalCache::new(
            inner(ttl),
            Duration::from_secs(10),
            IntCounter::new("c", "c").unwrap(),
        ))
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_keeps_the_contract() {
    let cluster = RedisCluster::start();
    contract(redis(Target::Cluster(cluster.urls()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_are_hash_tagged_by_user_and_expire_when_idle() {
    let server = RedisServer::start();
    let store = RedisStore::new(
        Target::Single(server.url()),
        "deploy1",
        Duration::from_secs(60),
        Duration::from_millis(500),
        counters(),
    );
    let id = match store.open("alice", 3).await.unwrap() {
        Opened::Admitted(id) => id,
        other => panic!("{other:?}"),
    };
    let mut conn = server.connection();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    // The leases, and what the admin listing shows of them (when opened, by which
    // instance), in the same hash slot.
    assert_eq!(
        keys,
        vec![
            "deploy1:{alice}:meta".to_string(),
            "deploy1:{alice}:streams".to_string()
        ]
    );
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&keys[1])
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(members, vec![id.to_string()]);
    // The keys themselves expire with the last lease, so an idle user costs nothing.
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        assert!(pttl > 55_000 && pttl <= 61_000, "{key}: {pttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_fails_fast_when_redis_is_down() {
    let port = common::free_port();
    let store = RedisStore::new(
        Target::Single(format!("redis://127.0.0.1:{port}")),
        "sg",
        Duration::from_secs(60),
        Duration::from_millis(100),
        counters(),
    );
    let t = Instant::now();
    assert!(store.open("u", 3).await.is_err());
    assert!(store.ping().await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}
