//! Bytes per active lease in the memory store, measured as the process's RSS growth.
//!
//!     cargo run --release --example lease_memory -- 1000000 1
//!     cargo run --release --example lease_memory -- 333334 3
//!
//! Arguments: users, leases per user (default 1 000 000 x 1).

use std::time::Duration;

use futures::executor::block_on;
use prometheus::{IntCounter, IntGauge};
use streamgate::store::{LeaseCounters, MemoryStore, Opened, StreamStore};

/// The binary's allocator, so the figure is what `streamgate` itself would use.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn main() {
    let mut args = std::env::args().skip(1);
    let users: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per_user: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let counters = LeaseCounters {
        active: IntGauge::new("a", "a").unwrap(),
        expired: IntCounter::new("e", "e").unwrap(),
    };
    let store = MemoryStore::new(Duration::from_secs(3600), users + 1, counters.clone());
    let before = rss_bytes();
    for u in 0..users {
        let user = format!("user-{u:010}");
        for _ in 0..per_user {
            match block_on(store.open(&user, per_user)) {
                Ok(Opened::Admitted(id)) => block_on(store.release(&user, id, true)).unwrap(),
                other => panic!("refused: {other:?}"),
            }
        }
    }
    store.maintain();
    let after = rss_bytes();
    let leases = counters.active.get() as u64;
    println!(
        "{users} users x {per_user} = {leases} leases: RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per lease ({:.0} per user)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / leases as f64,
        (after - before) as f64 / users as f64,
    );
}
