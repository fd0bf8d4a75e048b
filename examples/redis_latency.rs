//! Latency of the Redis store's decisions, unloaded: sequential open, renew, release and
//! end against a Redis at the given URL (one round trip each).
//!
//!     redis-server --port 6399 --save '' &
//!     cargo run --release --example redis_latency -- redis://127.0.0.1:6399 10000

use std::time::{Duration, Instant};

use streamgate::store::{LeaseCounters, Opened, RedisStore, StreamStore, Target};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let counters = LeaseCounters::unregistered();
    let store = RedisStore::new(
        Target::Single(url),
        "latency",
        Duration::from_secs(60),
        Duration::from_secs(1),
        counters,
    );
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for i in 0..n {
        let user = format!("user-{i}");
        let t = Instant::now();
        let Ok(Opened::Admitted(id)) = store.open(&user, 3).await else {
            panic!("open failed")
        };
        samples[0].push(t.elapsed());
        let t = Instant::now();
        assert!(store.renew(&user, id).await.unwrap());
        samples[1].push(t.elapsed());
        let t = Instant::now();
        store.release(&user, id, true).await.unwrap();
        samples[2].push(t.elapsed());
        let t = Instant::now();
        assert!(store.end(&user, id).await.unwrap());
        samples[3].push(t.elapsed());
    }
    for (name, s) in ["open", "renew", "release", "end"]
        .iter()
        .zip(samples.iter_mut())
    {
        s.sort();
        let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
        println!(
            "{name:8} n={} p50 {:?} p99 {:?} max {:?}",
            s.len(),
            pct(0.50),
            pct(0.99),
            s[s.len() - 1]
        );
    }
}
