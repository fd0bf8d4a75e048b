//! The memory store's decision path (open, renew, end) at 1 k, 100 k and 1 M users: the
//! cost should stay flat as the number of users grows.
//!
//!     cargo bench --bench decisions

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::executor::block_on;
use streamgate::store::{LeaseCounters, MemoryStore, Opened, StreamStore};
use uuid::Uuid;

/// The binary's allocator, so the figures are what `streamgate` itself would see.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn store_with(users: usize) -> (MemoryStore, Vec<(String, Uuid)>) {
    let counters = LeaseCounters::unregistered();
    let store = MemoryStore::new(Duration::from_secs(3600), 10_000_000, counters);
    let leases = (0..users)
        .map(|i| {
            let user = format!("user-{i}");
            let Ok(Opened::Admitted(id)) = block_on(store.open(&user, 3)) else {
                panic!("prefill refused")
            };
            block_on(store.release(&user, id, true)).unwrap();
            (user, id)
        })
        .collect();
    (store, leases)
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_store");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    for users in [1_000usize, 100_000, 1_000_000] {
        let (store, mut leases) = store_with(users);
        let mut i = 0usize;
        let mut next = move || {
            // A fixed stride through the users defeats the CPU cache like real traffic.
            i = (i + 7_919) % users;
            i
        };
        group.bench_function(BenchmarkId::new("open+release", users), |b| {
            b.iter(|| {
                let (user, _) = &leases[next()];
                if let Ok(Opened::Admitted(id)) = block_on(store.open(user, 3)) {
                    block_on(store.release(user, id, false)).unwrap();
                }
            })
        });
        group.bench_function(BenchmarkId::new("renew+release", users), |b| {
            b.iter(|| {
                let (user, id) = &leases[next()];
                assert!(block_on(store.renew(user, *id)).unwrap());
                block_on(store.release(user, *id, true)).unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("end+open", users), |b| {
            b.iter(|| {
                let k = next();
                let (user, id) = &mut leases[k];
                assert!(block_on(store.end(user, *id)).unwrap());
                let Ok(Opened::Admitted(new)) = block_on(store.open(user, 3)) else {
                    panic!("reopen refused")
                };
                block_on(store.release(user, new, true)).unwrap();
                *id = new;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
