//! Several content servers (issue #14): active health checks, retries on a refused
//! connection, passive ejection, readiness, the three selections and weights, the `Host`
//! override, and upstream TLS (with the `tls` feature). Real origins on real sockets, one
//! of them stopped mid-test.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use streamgate::config::{Selection, UpstreamAddr, WeightedAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Active TCP checks every 100 ms: a stopped origin is out within a few rounds.
const FAST_CHECKS: &str = "[upstream.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\n\
                           timeout = \"200ms\"\nhealthy_after = 2\nunhealthy_after = 2\n";

fn config(addrs: &[SocketAddr], first: &Origin) -> TestConfig {
    let mut cfg = TestConfig::new(first);
    cfg.config.upstream.addrs = addrs.iter().map(|a| a.to_string().into()).collect();
    cfg.config.streams.limit = 10;
    cfg
}

/// `n` requests of as many users (`<prefix>0`, `<prefix>1`...), each answered 200.
async fn all_served(proxy: &Proxy, path: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let r = proxy.watch(path, &format!("{prefix}{i}"), None).await;
        assert_eq!(r.status(), 200, "{prefix}{i}");
    }
}

fn healthy(addr: SocketAddr) -> String {
    format!("streamgate_upstream_healthy{{upstream=\"{addr}\"}}")
}

fn sent_to(addr: SocketAddr) -> String {
    format!("streamgate_upstream_requests_total{{upstream=\"{addr}\"}}")
}

/// Which origin served each user's requests (by the session id the origin saw).
fn users_on(origins: &[&Origin]) -> HashMap<String, HashSet<usize>> {
    let mut on: HashMap<String, HashSet<usize>> = HashMap::new();
    for (i, o) in origins.iter().enumerate() {
        for seen in o.seen() {
            if let Some(u) = seen.headers.get("session-id") {
                on.entry(u.clone()).or_default().insert(i);
            }
        }
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_origin_is_retried_around_then_checked_out_and_back_in() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let a_addr = a.addr;
    // Passive ejection off: what takes A out here is the active check alone.
    let mut cfg = config(&[a.addr, b.addr], &a).table(FAST_CHECKS);
    cfg.config.upstream.unhealthy_after = 0;
    let proxy = Proxy::start(&cfg).await;
    proxy.until_ready(Duration::from_secs(5)).await;
    all_served(&proxy, "/watch/seg.ts", "u", 20).await;
    assert!(a.served() > 0 && b.served() > 0, "round robin uses both");

    // Stopped: before the checks notice, a refused connection is retried on B.
    drop(a);
    all_served(&proxy, "/watch/seg.ts", "v", 20).await;
    proxy
        .eventually(Duration::from_secs(5), "A is checked out", || async {
            proxy.metric(&healthy(a_addr)).await == 0.0
        })
        .await;
    // Known dead: not one attempt goes to it, and no viewer sees an error.
    let attempts = proxy.metric(&sent_to(a_addr)).await;
    let before = b.served();
    all_served(&proxy, "/watch/seg.ts", "w", 20).await;
    assert_eq!(proxy.metric(&sent_to(a_addr)).await, attempts);
    assert_eq!(b.served(), before + 20);
    assert_eq!(
        proxy
            .metric("streamgate_requests_total{route=\"watch\",status=\"5xx\"}")
            .await,
        0.0
    );

    // Back on the same address: checked in after `healthy_after` passes, and served.
    let a = Origin::start_at(a_addr).await;
    proxy
        .eventually(Duration::from_secs(5), "A is checked in", || async {
            proxy.metric(&healthy(a_addr)).await == 1.0
        })
        .await;
    all_served(&proxy, "/watch/seg.ts", "x", 20).await;
    assert!(a.served() >= 5, "A takes traffic again: {}", a.served());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_origin_down_requests_get_502_at_once_and_ready_fails() {
    let a = Origin::start().await;
    let a_addr = a.addr;
    let mut cfg = config(&[a.addr], &a).table(FAST_CHECKS);
    cfg.config.streams.limit = 1;
    let proxy = Proxy::start(&cfg).await;
    proxy.until_ready(Duration::from_secs(5)).await;
    drop(a);
    proxy
        .eventually(Duration::from_secs(5), "/ready fails", || async {
            proxy.status("/ready").await == 503
        })
        .await;
    let r = proxy.client.get(proxy.url("/ready")).send().await.unwrap();
    assert_eq!(json_body(r).await["error"], "upstream_unavailable");
    let attempts = proxy.metric(&sent_to(a_addr)).await;
    for _ in 0..3 {
        let r = proxy.watch("/watch/seg.ts", "alice", None).await;
        assert_eq!(r.status(), 502);
        assert_eq!(json_body(r).await["error"], "upstream_unavailable");
    }
    assert_eq!(
        proxy.metric(&sent_to(a_addr)).await,
        attempts,
        "no connection is tried to a server known dead"
    );
    // The refused opens held nothing: back up, alice (limit 1) is admitted at once.
    let a = Origin::start_at(a_addr).await;
    proxy.until_ready(Duration::from_secs(5)).await;
    assert_eq!(
        proxy.watch("/watch/seg.ts", "alice", None).await.status(),
        200
    );
    assert_eq!(a.served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_round_of_checks() {
    // One origin up, one never up: the first round decides on one probe each, so the
    // dead one is out before the first viewer (no `unhealthy_after` rounds of errors).
    let a = Origin::start().await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config(&[a.addr, dead], &a).table(
        "[upstream.health_check]\ninterval = \"300ms\"\nunhealthy_after = 5\n\
         [upstream]\nunhealthy_after = 0\n",
    );
    let proxy = Proxy::start(&cfg).await;
    proxy.until_ready(Duration::from_secs(5)).await;
    assert_eq!(proxy.metric(&healthy(dead)).await, 0.0);
    all_served(&proxy, "/watch/a", "u", 10).await;
    assert_eq!(proxy.metric(&sent_to(dead)).await, 0.0);
    assert_eq!(a.served(), 10);
}

/// An origin that answers every request with `status`, counting them.
async fn answering(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, count) = answering_checked(status, Arc::new(AtomicU16::new(status))).await;
    (addr, count)
}

/// Answer each request head read off `sock` with the status and body `answer` gives for
/// it (the head as text), until the client closes.
async fn serve_heads<S>(mut sock: S, answer: impl Fn(&str) -> (u16, String))
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 8192];
    let mut have = Vec::new();
    loop {
        let Ok(n) = sock.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        have.extend_from_slice(&buf[..n]);
        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&have[..end]).into_owned();
            have.drain(..end + 4);
            let (status, body) = answer(&head);
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// An origin answering `status`, but `GET /health` with whatever `check` holds (what an
/// operator draining it flips), counting the requests that are not checks.
async fn answering_checked(status: u16, check: Arc<AtomicU16>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (c, check) = (c.clone(), check.clone());
            tokio::spawn(serve_heads(sock, move |head| {
                if head.starts_with("GET /health ") {
                    let s = check.load(Ordering::SeqCst);
                    return (s, format!("status {s}"));
                }
                c.fetch_add(1, Ordering::SeqCst);
                (status, format!("status {status}"))
            }));
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_drains_a_server_that_asks_for_it() {
    // The operator's drain: the server's check path stops answering 200. New requests go
    // elsewhere once the checks see it; it comes back when the check passes again.
    let b = Origin::start().await;
    let check = Arc::new(AtomicU16::new(200));
    let (a, a_count) = answering_checked(200, check.clone()).await;
    let cfg = config(&[a, b.addr], &b).table(
        "[upstream.health_check]\nkind = \"http\"\npath = \"/health\"\nexpect_status = 200\n\
         interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_after = 2\nunhealthy_after = 2\n",
    );
    let proxy = Proxy::start(&cfg).await;
    proxy.until_ready(Duration::from_secs(5)).await;
    assert_eq!(proxy.metric(&healthy(a)).await, 1.0);
    check.store(503, Ordering::SeqCst);
    proxy
        .eventually(Duration::from_secs(5), "A is drained", || async {
            proxy.metric(&healthy(a)).await == 0.0
        })
        .await;
    let before = a_count.load(Ordering::SeqCst);
    all_served(&proxy, "/watch/a", "u", 20).await;
    assert_eq!(
        a_count.load(Ordering::SeqCst),
        before,
        "a drained server gets no request"
    );
    check.store(200, Ordering::SeqCst);
    proxy
        .eventually(Duration::from_secs(5), "A is back", || async {
            proxy.metric(&healthy(a)).await == 1.0
        })
        .await;
    all_served(&proxy, "/watch/a", "v", 20).await;
    assert_eq!(a_count.load(Ordering::SeqCst), before + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_answering_5xx_is_ejected_passively() {
    let good = Origin::start().await;
    let (bad, bad_count) = answering(503).await;
    let cfg = config(&[bad, good.addr], &good)
        .table("[upstream]\nunhealthy_after = 2\neject_for = \"1h\"\n");
    let proxy = Proxy::start(&cfg).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(
            proxy
                .watch("/watch/a", &format!("u{i}"), None)
                .await
                .status()
                .as_u16(),
        );
    }
    // Round robin sends it every other request until its second 503 in a row.
    assert_eq!(bad_count.load(Ordering::SeqCst), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 2);
    assert_eq!(good.served(), 10);
    let series = format!("streamgate_upstream_ejections_total{{upstream=\"{bad}\"}}");
    assert_eq!(proxy.metric(&series).await, 1.0);
    assert_eq!(proxy.metric(&healthy(bad)).await, 0.0);
    // The last usable server is never ejected: the good one's own 5xx do not take it out.
    for i in 0..4 {
        let r = proxy.watch("/watch/fail", &format!("f{i}"), None).await;
        assert_eq!(r.status(), 500);
    }
    assert_eq!(proxy.metric(&healthy(good.addr)).await, 1.0);
    assert_eq!(proxy.watch("/watch/a", "after", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_users_on_one_origin_and_moves_a_third() {
    let origins = [
        Origin::start().await,
        Origin::start().await,
        Origin::start().await,
    ];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let mut cfg = config(&addrs, &origins[0]).table(FAST_CHECKS);
    cfg.config.upstream.selection = Selection::Consistent;
    let proxy = Proxy::start(&cfg).await;
    proxy.until_ready(Duration::from_secs(5)).await;
    const USERS: usize = 1000;
    for round in 0..2 {
        for u in 0..USERS {
            let r = proxy
                .watch(&format!("/watch/seg{round}.ts"), &format!("user-{u}"), None)
                .await;
            assert_eq!(r.status(), 200);
        }
    }
    let [o0, o1, o2] = &origins;
    let before = users_on(&[o0, o1, o2]);
    assert_eq!(before.len(), USERS);
    assert!(
        before.values().all(|on| on.len() == 1),
        "each user on one origin"
    );
    for (i, o) in origins.iter().enumerate() {
        let n = before.values().filter(|on| on.contains(&i)).count();
        let even = USERS / 3;
        assert!(
            n.abs_diff(even) * 5 <= even,
            "origin {i} has {n} users, more than 20 % off {even}"
        );
        assert_eq!(o.served(), 2 * n);
    }

    // One origin stops: only its users move.
    let [o0, o1, o2] = origins;
    let dead = o2.addr;
    let moved_users: HashSet<String> = before
        .iter()
        .filter(|(_, on)| on.contains(&2))
        .map(|(u, _)| u.clone())
        .collect();
    drop(o2);
    proxy
        .eventually(
            Duration::from_secs(5),
            "the stopped origin is out",
            || async { proxy.metric(&healthy(dead)).await == 0.0 },
        )
        .await;
    let moves = proxy
        .metric("streamgate_upstream_selection_moves_total")
        .await;
    let served = [o0.served(), o1.served()];
    for u in 0..USERS {
        let r = proxy
            .watch("/watch/seg2.ts", &format!("user-{u}"), None)
            .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(o0.served() + o1.served(), served[0] + served[1] + USERS);
    let after = users_on(&[&o0, &o1]);
    for (u, on) in &after {
        if !moved_users.contains(u) {
            assert_eq!(on, &before[u], "{u} stayed where it was");
        }
    }
    let share = moved_users.len() as f64 / USERS as f64;
    assert!((0.2..0.47).contains(&share), "{share} of users moved");
    assert_eq!(
        proxy
            .metric("streamgate_upstream_selection_moves_total")
            .await
            - moves,
        moved_users.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_a_request_to_the_server_with_fewer_in_flight() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let mut cfg = config(&[a.addr, b.addr], &a);
    cfg.config.upstream.selection = Selection::LeastConn;
    let proxy = Arc::new(Proxy::start(&cfg).await);
    // Four long requests one after the other: each goes where fewer are in flight.
    let mut held = Vec::new();
    for i in 0..4 {
        // Counted before the request is sent: it may reach its origin at once.
        let before = gated(&a) + gated(&b);
        let p = proxy.clone();
        held.push(tokio::spawn(async move {
            p.watch("/watch/gate", &format!("g{i}"), None)
                .await
                .status()
        }));
        proxy
            .eventually(
                Duration::from_secs(5),
                "the request reached an origin",
                || async { gated(&a) + gated(&b) == before + 1 },
            )
            .await;
    }
    assert_eq!((gated(&a), gated(&b)), (2, 2));
    a.open_gate(2);
    b.open_gate(2);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
}

fn gated(o: &Origin) -> usize {
    o.seen()
        .iter()
        .filter(|s| s.path.ends_with("/gate"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_round_robin_traffic_and_host_is_overridden() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let mut cfg = config(&[], &a);
    cfg.config.upstream.addrs = vec![
        UpstreamAddr::Weighted(WeightedAddr {
            addr: a.addr.to_string(),
            weight: 3,
        }),
        b.addr.to_string().into(),
    ];
    cfg.config.upstream.host = Some("media.example.com".into());
    let proxy = Proxy::start(&cfg).await;
    all_served(&proxy, "/watch/a", "u", 400).await;
    assert_eq!((a.served(), b.served()), (300, 100));
    assert!(a
        .seen()
        .iter()
        .all(|s| s.headers.get("host").map(String::as_str) == Some("media.example.com")));
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use common::certs::make_certs_for;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// An HTTPS origin answering `tls <Host header>` to every request.
    async fn https_origin(dir: &std::path::Path) -> (SocketAddr, Arc<AtomicUsize>) {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("origin.crt"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("origin.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, c) = (acceptor.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    serve_heads(tls, move |head| {
                        c.fetch_add(1, Ordering::SeqCst);
                        let head = head.to_lowercase();
                        let host = head.lines().find_map(|l| l.strip_prefix("host: "));
                        (200, format!("tls {}", host.unwrap_or("")))
                    })
                    .await
                });
            }
        });
        (addr, count)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_https_origin_is_verified_against_its_ca_and_named_by_host() {
        let dir = tempfile::tempdir().unwrap();
        make_certs_for(dir.path(), "origin", "origin.test", "DNS:origin.test");
        let (addr, count) = https_origin(dir.path()).await;
        let origin = Origin::start().await;
        let mut cfg = config(&[addr], &origin)
            .table("[upstream.health_check]\nkind = \"tcp\"\ninterval = \"1s\"\n");
        let u = &mut cfg.config.upstream;
        u.tls = true;
        u.host = Some("origin.test".into());
        u.ca_file = Some(dir.path().join("ca.crt"));
        let proxy = Proxy::start(&cfg).await;
        proxy.until_ready(Duration::from_secs(5)).await;
        let r = proxy.watch("/watch/a", "alice", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "tls origin.test");
        assert!(count.load(Ordering::SeqCst) >= 1);

        // The same origin with the system's CAs (which never signed it): refused, 502.
        let mut cfg = config(&[addr], &origin);
        cfg.config.upstream.tls = true;
        cfg.config.upstream.sni = Some("origin.test".into());
        let proxy = Proxy::start(&cfg).await;
        let before = count.load(Ordering::SeqCst);
        let r = proxy.watch("/watch/a", "bob", None).await;
        assert_eq!(r.status(), 502);
        assert_eq!(json_body(r).await["error"], "upstream_unavailable");
        assert_eq!(
            count.load(Ordering::SeqCst),
            before,
            "no request over an unverified link"
        );
    }
}
