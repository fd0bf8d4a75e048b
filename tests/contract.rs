//! The HTTP contract, line by line, against a running proxy and a real origin.

mod common;

use std::time::Duration;

use common::*;
use streamgate::config::OtherPaths;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_by_the_proxy_exactly() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let served_before = origin.served();
    let r = proxy.client.get(proxy.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), r#"{"status":"UP"}"#);
    assert_eq!(
        origin.served(),
        served_before,
        "/health must not be forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_when_the_store_does() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let r = proxy.client.get(proxy.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"status":"READY"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_streams_then_401_with_json_and_retry_after() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    for _ in 0..3 {
        let r = proxy.watch("/watch", "abc", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok /watch");
    }
    let r = proxy.watch("/watch", "abc", None).await;
    assert_eq!(r.status(), 401);
    let retry = retry_after(&r);
    // The leases were released just now with a 60 s TTL.
    assert!((58..=60).contains(&retry), "retry-after {retry}");
    let body = json_body(r).await;
    assert_eq!(body["error"], "stream_limit_exceeded");
    assert_eq!(body["limit"], 3);
    assert_eq!(body["active"], 3);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    // Another user is unaffected.
    assert_eq!(proxy.watch("/watch", "xyz", None).await.status(), 200);
    assert_eq!(
        origin.served(),
        4,
        "the refused request never reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_empty_or_bad_session_id_is_400_json() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;

    let r = proxy.client.get(proxy.url("/watch")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"], "session_id_required");

    let r = proxy.watch("/watch/x", "", None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"], "session_id_required");

    let long = "a".repeat(129);
    let r = proxy.watch("/watch", &long, None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"], "invalid_session_id");

    let r = proxy
        .client
        .get(proxy.url("/watch"))
        .header(
            "Session-Id",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"], "invalid_session_id");

    let r = proxy.watch("/watch", "a b", None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"], "invalid_session_id");

    assert_eq!(origin.served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_are_forwarded_unchanged_with_ids_both_ways() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let r = proxy.watch("/watch/movie/seg1.ts?q=1", "abc", None).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("session-id").is_none(),
        "a session id is a credential: not echoed unless identity.echo"
    );
    assert!(
        r.headers().get("cache-control").is_none(),
        "the origin's caching is left alone"
    );
    assert_eq!(
        r.headers()["x-origin"],
        "test",
        "upstream headers pass through"
    );
    assert_eq!(r.headers()["content-type"], "text/plain");
    let id = stream_id(&r);
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(r.text().await.unwrap(), "ok /watch/movie/seg1.ts");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/watch/movie/seg1.ts?q=1");
    assert_eq!(seen[0].headers.get("stream-id"), Some(&id));
    assert_eq!(
        seen[0].headers.get("session-id").map(String::as_str),
        Some("abc")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_statuses_pass_through() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let r = proxy.watch("/watch/fail", "abc", None).await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "origin failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_streams_through_without_buffering() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let mut r = proxy.watch("/watch/gate", "abc", None).await;
    assert_eq!(r.status(), 200);
    // The origin is holding the rest of the body at its gate: the first chunk can only
    // arrive here if the proxy streams.
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("first chunk was buffered")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first");
    origin.open_gate(1);
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"last");

    let r = proxy
        .watch("/watch/slow?chunks=10&ms=20", "abc", None)
        .await;
    let body = r.text().await.unwrap();
    assert_eq!(
        body,
        (0..10).map(|i| format!("chunk{i};")).collect::<String>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_are_forwarded_without_counting() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    for _ in 0..5 {
        let r = proxy
            .client
            .get(proxy.url("/catalog"))
            .header("Session-Id", "abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("stream-id").is_none());
    }
    // Even /watchlist is not a watch route.
    let r = proxy
        .client
        .get(proxy.url("/watchlist"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_can_be_refused_with_404_json() {
    let origin = Origin::start().await;
    let mut cfg = TestConfig::new(&origin);
    cfg.config.server.other_paths = OtherPaths::NotFound;
    let proxy = Proxy::start(&cfg).await;
    let r = proxy
        .client
        .get(proxy.url("/catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json_body(r).await["error"], "not_found");
    assert_eq!(origin.served(), 0);
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_json() {
    let origin = Origin::start().await;
    let mut cfg = TestConfig::new(&origin);
    cfg.config.upstream.addrs = vec![format!("127.0.0.1:{}", free_port()).into()];
    let proxy = Proxy::start(&cfg).await;
    let r = proxy.watch("/watch", "abc", None).await;
    assert_eq!(r.status(), 502);
    assert_eq!(json_body(r).await["error"], "upstream_unavailable");
    let r = proxy
        .client
        .get(proxy.url("/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(json_body(r).await["error"], "upstream_unavailable");
    proxy
        .counted("streamgate_upstream_errors_total{kind=\"connect\"}", 2.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_is_skipped_for_the_next_one() {
    let origin = Origin::start().await;
    let mut cfg = TestConfig::new(&origin);
    cfg.config.upstream.addrs = vec![
        format!("127.0.0.1:{}", free_port()).into(),
        origin.addr.to_string().into(),
    ];
    let proxy = Proxy::start(&cfg).await;
    for i in 0..4 {
        let r = proxy.watch("/watch", &format!("u{i}"), None).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_is_504_json() {
    let origin = Origin::start().await;
    let mut cfg = TestConfig::new(&origin);
    cfg.config.upstream.read_timeout = duration("300ms");
    let proxy = Proxy::start(&cfg).await;
    let r = proxy.watch("/watch/hang", "abc", None).await;
    assert_eq!(r.status(), 504);
    assert_eq!(json_body(r).await["error"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_a_4xx_not_a_5xx() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let out = raw(proxy.addr, b"GARBAGE\r\n\r\n", Duration::from_secs(3)).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 4"), "{out}");
    // The proxy still serves afterwards.
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 200);
}

/// The status codes of the HTTP/1.1 responses in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    // Bodies need not end in a newline, so a status line may follow one directly.
    raw.match_indices("HTTP/1.1 ")
        .filter_map(|(i, m)| raw.get(i + m.len()..i + m.len() + 3)?.parse().ok())
        .collect()
}

/// The `Stream-Id` response headers in `raw`, in order.
fn stream_ids(raw: &str) -> Vec<&str> {
    raw.split("\r\n")
        .filter_map(|l| l.strip_prefix("Stream-Id: "))
        .collect()
}

const HEALTH_AND_CLOSE: &str = "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_counted() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    // Four opens for one user and a health check, sent in one write before any answer.
    let open = "GET /watch HTTP/1.1\r\nHost: t\r\nSession-Id: piper\r\n\r\n";
    let request = format!("{}{HEALTH_AND_CLOSE}", open.repeat(4));
    let out = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [200, 200, 200, 401, 200], "{out}");
    assert!(out.ends_with(r#"{"status":"UP"}"#), "{out}");
    let mut ids = stream_ids(&out);
    assert_eq!(ids.len(), 3, "{out}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct streams: {out}");
    assert_eq!(
        origin.served(),
        3,
        "the refused fourth never reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_request_waits_for_the_streaming_response_before_it() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "GET /watch/gate HTTP/1.1\r\nHost: t\r\nSession-Id: pip\r\n\r\n\
         GET /watch/next HTTP/1.1\r\nHost: t\r\nSession-Id: pip\r\n\r\n{HEALTH_AND_CLOSE}"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(request.as_bytes()).await.unwrap();
    // The first response is streaming, held at the origin's gate, with the rest queued
    // behind it on the same connection.
    origin.wait_gated(1).await;
    origin.open_gate(1);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("the pipelined requests were never answered")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&out), [200, 200, 200], "{out}");
    let first = out.find("first").expect("the streamed body");
    let last = out.find("last").expect("the streamed body's end");
    let next = out
        .find("ok /watch/next")
        .expect("the second response's body");
    assert!(first < last && last < next, "responses out of order: {out}");
    let paths: Vec<String> = origin.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/watch/gate", "/watch/next"]);
    assert_eq!(stream_ids(&out).len(), 2, "two streams opened: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pipelining_off_only_the_first_pipelined_request_is_answered() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).pipelining(false)).await;
    let open = "GET /watch HTTP/1.1\r\nHost: t\r\nSession-Id: nopipe\r\n\r\n";
    let request = format!("{open}{open}{HEALTH_AND_CLOSE}");
    let out = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    // Pingora's own behaviour: answer the first, then close; the client retries the rest.
    assert_eq!(statuses(&out), [200], "{out}");
    assert_eq!(origin.served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_an_unread_body_closes_the_connection() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    // The body looks like a request of its own: it must never be served as one.
    let smuggled = "GET /watch/smuggled HTTP/1.1\r\nHost: t\r\nSession-Id: x\r\n\r\n";
    let request = format!(
        "POST /watch HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{smuggled}{HEALTH_AND_CLOSE}",
        smuggled.len()
    );
    let out = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [400], "{out}");
    assert!(out.contains("Connection: close"), "{out}");
    assert!(out.contains("session_id_required"), "{out}");
    assert_eq!(origin.served(), 0);

    // Without a body, a refusal keeps the connection for the client's next request.
    let request = format!("GET /watch HTTP/1.1\r\nHost: t\r\n\r\n{HEALTH_AND_CLOSE}");
    let out = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [400, 200], "{out}");
}

/// The `X-Forwarded-For` the origin saw for a watch request (no header sent) and for
/// another path (sent `203.0.113.9`), through a proxy built from `cfg`.
async fn forwarded_for_seen(cfg: impl Fn(&Origin) -> TestConfig) -> Vec<Option<String>> {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&cfg(&origin)).await;
    assert_eq!(proxy.watch("/watch", "ip", None).await.status(), 200);
    let r = proxy
        .client
        .get(proxy.url("/other"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    origin
        .seen()
        .into_iter()
        .map(|s| s.headers.get("x-forwarded-for").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_learns_the_client_address_from_x_forwarded_for() {
    let seen = forwarded_for_seen(TestConfig::new).await;
    let expected = ["127.0.0.1", "203.0.113.9, 127.0.0.1"].map(|v| Some(v.to_string()));
    assert_eq!(seen, expected);
    // Off: the client's header goes through as it came, and none is added.
    let seen = forwarded_for_seen(|o| TestConfig::new(o).forwarded_for(false)).await;
    assert_eq!(seen, [None, Some("203.0.113.9".to_string())]);
}
