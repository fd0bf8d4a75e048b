//! Faults at both ends: hanging origins, slowloris clients, oversized bodies, thousands of
//! idle keep-alive connections, and Redis killed under load. Through all of it the proxy
//! answers `/health` and never lets a limit slip.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET /health` on an already open connection; true when it answered 200.
async fn health_on(s: &mut TcpStream) -> bool {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    buf[..n].starts_with(b"HTTP/1.1 200")
}

async fn health_ok(proxy: &Proxy) {
    let r = proxy.client.get(proxy.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Open `limit` streams, then check the next one is refused.
async fn limit_holds(proxy: &Proxy, user: &str, limit: usize) {
    for _ in 0..limit {
        assert_eq!(proxy.watch("/watch", user, None).await.status(), 200);
    }
    assert_eq!(proxy.watch("/watch", user, None).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_accepts_then_hangs_times_out_and_frees_the_slot() {
    let origin = Origin::start().await;
    let mut cfg = TestConfig::new(&origin).limit(1);
    cfg.config.upstream.read_timeout = duration("300ms");
    let proxy = Proxy::start(&cfg).await;
    for _ in 0..3 {
        let r = proxy.watch("/watch/hang", "abc", None).await;
        assert_eq!(r.status(), 504);
    }
    assert_eq!(proxy.metric("streamgate_active_streams").await, 0.0);
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 200);
    proxy
        .counted("streamgate_upstream_errors_total{kind=\"timeout\"}", 3.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_do_not_starve_anyone() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut dribblers = Vec::new();
    for i in 0..300 {
        let (addr, stop) = (proxy.addr, stop.clone());
        dribblers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req = format!("GET /watch HTTP/1.1\r\nHost: t\r\nSession-Id: slow{i}\r\nX-Pad: ");
            // One byte every 20 ms, never finishing the header (bounded: until told).
            for b in req.bytes().chain(std::iter::repeat(b'a')) {
                if stop.load(Ordering::Relaxed) || s.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        health_ok(&proxy).await;
    }
    limit_holds(&proxy, "abc", 3).await;
    stop.store(true, Ordering::Relaxed);
    for d in dribblers {
        d.await.unwrap();
    }
    assert_eq!(
        origin.seen().iter().filter(|s| s.path == "/watch").count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_keepalive_connections_cost_no_answers() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(health_on(&mut s).await);
        idle.push(s); // kept open and idle
    }
    let t = Instant::now();
    health_ok(&proxy).await;
    limit_holds(&proxy, "abc", 3).await;
    eprintln!(
        "with 2000 idle connections: /health + 4 watch requests in {:?}",
        t.elapsed()
    );
    // The idle connections are still usable.
    assert!(health_on(&mut idle[1999]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_stream_through_and_big_responses_too() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    let r = proxy
        .client
        .post(proxy.url("/watch/upload"))
        .header("Session-Id", "abc")
        .body(vec![b'x'; 16 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = stream_id(&r);
    let r = proxy
        .watch("/watch/big?bytes=8388608", "abc", Some(&id))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 8 << 20);
    health_ok(&proxy).await;
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_for_ten_seconds_under_load_then_back() {
    let mut redis = RedisServer::start();
    let origin = Origin::start().await;
    let cfg = TestConfig::new(&origin)
        .limit(3)
        .ttl("2s")
        .redis(&redis.url(), "fault", "deny");
    let proxy = Arc::new(Proxy::start(&cfg).await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<u16, usize>::new();
            let user = format!("user{}", w % 4);
            while !stop.load(Ordering::Relaxed) {
                let r = proxy.watch("/watch/slow?chunks=2&ms=5", &user, None).await;
                let status = r.status().as_u16();
                let id = r
                    .headers()
                    .get("stream-id")
                    .map(|v| v.to_str().unwrap().to_string());
                let _ = r.bytes().await;
                *seen.entry(status).or_default() += 1;
                if let (200, Some(id)) = (status, id) {
                    let _ = proxy.delete(&user, &id).await;
                }
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.stop();
    // While Redis is down the proxy answers fast: /health stays up, /ready says no.
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(10) {
        health_ok(&proxy).await;
        let r = proxy.client.get(proxy.url("/ready")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    redis.restart();
    proxy.until_ready(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = std::collections::BTreeMap::<u16, usize>::new();
    for w in workers {
        for (s, n) in w.await.unwrap() {
            *total.entry(s).or_default() += n;
        }
    }
    eprintln!("statuses under a 10 s Redis outage: {total:?}");
    assert!(
        total.keys().all(|s| matches!(s, 200 | 401 | 503)),
        "{total:?}"
    );
    assert!(
        total.get(&503).copied().unwrap_or(0) > 0,
        "the outage was seen"
    );
    assert!(total.get(&200).copied().unwrap_or(0) > 0);
    assert!(origin.max_concurrent_any() <= 3, "a limit slipped");
    // Exact again afterwards.
    limit_holds(&proxy, "after", 3).await;
}
