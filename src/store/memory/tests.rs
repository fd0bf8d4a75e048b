//! The memory store's rules, decided without a proxy.

use std::hash::BuildHasher;

use super::*;

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
        LeaseCounters::unregistered(),
    )
}

use crate::store::admitted;

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
    if began.elapsed() < Duration::from_millis(s.tuning.slack_ms()) {
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
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id, list[0].expires_in), (id, None));
    assert!(list[0].renewed_unix_ms.is_none(), "held: renewed now");
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
