//! Reliability under abuse, bounded and automated: a soak of 10 000 streams with a random mix
//! of endings, and 10 000 concurrent opens for one user in waves, on both stores.
//!
//! The soak's size is `STREAMGATE_SOAK_STREAMS` (default 10 000, the CI form); set it higher
//! for the long form, e.g. `STREAMGATE_SOAK_STREAMS=200000 cargo test --release --test soak`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const LIMIT: u32 = 3;
const USERS: u64 = 100;

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Open, fetch two segments on the stream, walk away (the TTL ends it).
    Normal,
    /// Open, fetch a segment, then DELETE.
    Ended,
    /// Open on a slow body and close the connection after the status line.
    Abort,
    /// The origin answers 500 to the opening request.
    Origin500,
    /// The origin closes mid-body.
    OriginReset,
}

async fn one_stream(proxy: &Proxy, user: &str, kind: Kind) -> Vec<u16> {
    let mut statuses = Vec::new();
    match kind {
        Kind::Normal | Kind::Ended => {
            let r = proxy.watch("/watch/play", user, None).await;
            statuses.push(r.status().as_u16());
            if r.status() != 200 {
                return statuses;
            }
            let id = stream_id(&r);
            let _ = r.bytes().await;
            for seg in 0..2 {
                let r = proxy
                    .watch(&format!("/watch/seg{seg}"), user, Some(&id))
                    .await;
                statuses.push(r.status().as_u16());
                let _ = r.bytes().await;
            }
            if let Kind::Ended = kind {
                statuses.push(proxy.delete(user, &id).await.status().as_u16());
            }
        }
        Kind::Abort => {
            let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            let req = format!(
                "GET /watch/slow?chunks=5&ms=10 HTTP/1.1\r\nHost: t\r\nSession-Id: {user}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            // Read at least the status line's first 12 bytes ("HTTP/1.1 200"), then leave.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 64];
            while buf.len() < 12 {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let line = String::from_utf8_lossy(&buf);
            statuses.push(line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0));
            drop(s);
        }
        Kind::Origin500 => {
            statuses.push(
                proxy
                    .watch("/watch/fail", user, None)
                    .await
                    .status()
                    .as_u16(),
            );
        }
        Kind::OriginReset => {
            let r = proxy.watch("/watch/reset", user, None).await;
            statuses.push(r.status().as_u16());
            let _ = r.bytes().await;
        }
    }
    statuses
}

async fn soak(proxy: Arc<Proxy>, origin: &Origin, streams: u64) {
    let gate = Arc::new(Semaphore::new(64));
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let user = format!("user{}", rng.next() % USERS);
        let kind = match rng.next() % 10 {
            0..=3 => Kind::Normal,
            4..=5 => Kind::Ended,
            6..=7 => Kind::Abort,
            8 => Kind::Origin500,
            _ => Kind::OriginReset,
        };
        let permit = gate.clone().acquire_owned().await.unwrap();
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let out = one_stream(&proxy, &user, kind).await;
            drop(permit);
            out
        }));
    }
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        for s in t.await.unwrap() {
            *by_status.entry(s).or_default() += 1;
        }
    }
    eprintln!("soak of {streams} streams: statuses {by_status:?}");
    for s in by_status.keys() {
        // 500 is the origin's own answer passed through; nothing else may be a 5xx. A
        // DELETE that comes more than a TTL after the stream's last request finds it
        // expired already: 404, which is right.
        assert!(
            matches!(s, 200 | 204 | 401 | 404 | 500),
            "unexpected status {s}: {by_status:?}"
        );
    }
    assert!(by_status.get(&200).copied().unwrap_or(0) > 0);
    assert!(
        by_status.get(&401).copied().unwrap_or(0) > 0,
        "the limit was exercised"
    );

    // No user was ever served more streams at once than the limit.
    assert!(
        origin.max_concurrent_any() <= LIMIT as usize,
        "a user had {} concurrent streams",
        origin.max_concurrent_any()
    );
}

fn soak_streams() -> u64 {
    std::env::var("STREAMGATE_SOAK_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_memory_store_leaks_nothing_and_never_exceeds_the_limit() {
    let origin = Origin::start().await;
    let proxy = Arc::new(Proxy::start(&TestConfig::new(&origin).limit(LIMIT).ttl("300ms")).await);
    soak(proxy.clone(), &origin, soak_streams()).await;
    // Once the TTLs pass, nothing is left: no leaked lease, no leaked hold.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active = proxy.metric("streamgate_active_streams").await;
        let inflight = proxy.metric("streamgate_inflight_requests").await;
        if active == 0.0 && inflight == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leases left after the TTLs: active {active}, in flight {inflight}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_redis_store_leaks_nothing_and_never_exceeds_the_limit() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let cfg =
        TestConfig::new(&origin)
            .limit(LIMIT)
            .ttl("300ms")
            .redis(&redis.url(), "soak", "deny");
    let proxy = Arc::new(Proxy::start(&cfg).await);
    soak(proxy.clone(), &origin, soak_streams() / 2).await;
    proxy
        .eventually(Duration::from_secs(15), "every hold ends", || async {
            proxy.metric("streamgate_inflight_requests").await == 0.0
        })
        .await;
    // Redis holds no lease once the TTL has passed: every key has expired or emptied.
    let mut conn = redis.connection();
    proxy
        .eventually(
            Duration::from_secs(15),
            "every lease expires in Redis",
            || {
                let keys: Vec<String> = redis::cmd("KEYS").arg("soak:*").query(&mut conn).unwrap();
                let live: usize = keys
                    .iter()
                    .map(|k| {
                        // What describes the leases (`:meta`) expires with them.
                        let kind: String = redis::cmd("TYPE")
                            .arg(k)
                            .query(&mut redis.connection())
                            .unwrap();
                        if kind != "zset" {
                            return usize::from(kind != "none");
                        }
                        let (s, us): (i64, i64) =
                            redis::cmd("TIME").query(&mut redis.connection()).unwrap();
                        let now = s * 1000 + us / 1000;
                        redis::cmd("ZCOUNT")
                            .arg(k)
                            .arg(format!("({now}"))
                            .arg("+inf")
                            .query::<usize>(&mut redis.connection())
                            .unwrap()
                    })
                    .sum();
                async move { live == 0 }
            },
        )
        .await;
}

/// 10 000 opens for one user, in waves of 500 concurrent: every wave admits exactly what
/// the limit leaves free, then the admitted streams are ended for the next wave.
async fn waves(proxies: &[&Proxy]) {
    const WAVES: usize = 20;
    const WAVE: usize = 500;
    for wave in 0..WAVES {
        let tasks: Vec<_> = (0..WAVE)
            .map(|i| {
                let p = proxies[i % proxies.len()];
                let (client, url) = (p.client.clone(), p.url("/watch"));
                tokio::spawn(async move {
                    let r = client
                        .get(url)
                        .header("Session-Id", "hot")
                        .send()
                        .await
                        .unwrap();
                    let id = r
                        .headers()
                        .get("stream-id")
                        .map(|v| v.to_str().unwrap().to_string());
                    (r.status().as_u16(), id)
                })
            })
            .collect();
        let mut admitted = Vec::new();
        for t in tasks {
            let (status, id) = t.await.unwrap();
            match status {
                200 => admitted.push(id.unwrap()),
                401 => {}
                s => panic!("wave {wave}: unexpected status {s}"),
            }
        }
        assert_eq!(admitted.len(), LIMIT as usize, "wave {wave}");
        for id in admitted {
            assert_eq!(proxies[0].delete("hot", &id).await.status(), 204);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_contended_opens_admit_exactly_the_limit_memory() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(LIMIT)).await;
    waves(&[&proxy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_contended_opens_admit_exactly_the_limit_redis_two_instances() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let cfg = TestConfig::new(&origin)
        .limit(LIMIT)
        .redis(&redis.url(), "waves", "deny");
    let a = Proxy::start(&cfg).await;
    let b = Proxy::start(&cfg).await;
    waves(&[&a, &b]).await;
}

/// The same waves on one instance that remembers refusals (`store.refusal_cache`): most of
/// each wave is refused from memory, the three DELETEs between waves make it forget, and
/// every wave still admits exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_contended_opens_admit_exactly_the_limit_redis_remembered_refusals() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let mut cfg = TestConfig::new(&origin)
        .limit(LIMIT)
        .redis(&redis.url(), "waves", "deny");
    cfg.config.store.refusal_cache = duration("10s");
    let proxy = Proxy::start(&cfg).await;
    waves(&[&proxy]).await;
    let cached = proxy.metric("streamgate_store_cached_refusals_total").await;
    assert!(cached > 0.0, "refusals were answered from memory");
    eprintln!("waves with remembered refusals: {cached} of 9940 refusals from memory");
}
