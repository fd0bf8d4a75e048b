//! Streams are leases: issued, renewed, held while in flight, expired, ended, given back.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETTLE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carrying_the_stream_id_renew_without_counting() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    let r = proxy.watch("/watch", "abc", None).await;
    assert_eq!(r.status(), 200);
    let id = stream_id(&r);
    for i in 0..5 {
        let r = proxy
            .watch(&format!("/watch/seg{i}.ts"), "abc", Some(&id))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(stream_id(&r), id, "the same stream continues");
    }
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 401);
    assert_eq!(
        proxy
            .settled(
                "streamgate_stream_decisions_total{outcome=\"renewed\"}",
                5.0
            )
            .await,
        5.0
    );
}

/// The response echoes what the request sent when it already is the canonical form, and
/// the canonical form otherwise (a Stream-Id sent in upper case); so does the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_the_canonical_stream_id_and_the_session_id() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1).identity("echo = true")).await;
    let r = proxy.watch("/watch", "Abc", None).await;
    assert_eq!(r.headers()["session-id"], "Abc");
    assert_eq!(
        r.headers()["cache-control"],
        "private",
        "an answer naming its user is for that user only"
    );
    let id = stream_id(&r);
    assert_eq!(id, id.to_lowercase());
    for sent in [id.clone(), id.to_uppercase()] {
        let r = proxy.watch("/watch/seg.ts", "Abc", Some(&sent)).await;
        assert_eq!(r.status(), 200, "a renewal, however the id is spelled");
        assert_eq!(r.headers()["session-id"], "Abc");
        assert_eq!(stream_id(&r), id);
        let seen = origin.seen();
        let last = seen.last().expect("the origin saw the renewal");
        assert_eq!(last.headers.get("stream-id"), Some(&id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_stream_id_never_renews_their_lease() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1).ttl("2s")).await;
    let a = stream_id(&proxy.watch("/watch", "alice", None).await);
    // Bob presenting Alice's id opens a stream of his own: ids are looked up within their
    // user only, so it is opened under that id in Bob's leases, and Alice's is untouched.
    let r = proxy.watch("/watch", "bob", Some(&a)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(stream_id(&r), a, "resumed under the id it named, as Bob's");
    assert_eq!(
        proxy
            .settled(
                "streamgate_stream_decisions_total{outcome=\"resumed\"}",
                1.0
            )
            .await,
        1.0
    );
    // ...and Bob is now at his limit, Alice still at hers.
    assert_eq!(proxy.watch("/watch", "bob", None).await.status(), 401);
    assert_eq!(proxy.watch("/watch", "alice", None).await.status(), 401);
    // Bob keeps presenting Alice's id; Alice's lease must still run out.
    proxy
        .eventually(SETTLE, "alice's lease expires", || async {
            let _ = proxy.watch("/watch", "bob", Some(&a)).await;
            proxy.watch("/watch", "alice", None).await.status() == 200
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_stream_id_opens_a_stream_under_that_id_and_malformed_is_400() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = proxy.watch("/watch", "abc", Some(&unknown)).await;
    assert_eq!(r.status(), 200);
    let issued = stream_id(&r);
    // A player that comes back after its lease ran out still names it: one lease again.
    assert_eq!(issued, unknown);
    assert_eq!(origin.seen()[0].headers.get("stream-id"), Some(&issued));
    // An unknown id is an admission like any other.
    let r = proxy
        .watch("/watch", "abc", Some(&uuid::Uuid::new_v4().to_string()))
        .await;
    assert_eq!(r.status(), 401);

    for bad in ["nope", "", "12345678-1234-1234-1234-12345678901g"] {
        let r = proxy.watch("/watch", "abc", Some(bad)).await;
        assert_eq!(r.status(), 400, "{bad:?}");
        assert_eq!(json_body(r).await["error"], "invalid_stream_id");
    }
    let r = proxy
        .client
        .get(proxy.url("/watch"))
        .header("Session-Id", "abc")
        .header("Stream-Id", &issued)
        .header("Stream-Id", &issued)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expires_after_ttl_of_silence() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1).ttl("1s")).await;
    let id = stream_id(&proxy.watch("/watch", "abc", None).await);
    let r = proxy.watch("/watch", "abc", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["retry-after"], "1");
    proxy
        .eventually(SETTLE, "the lease expires", || async {
            proxy.watch("/watch", "abc", None).await.status() == 200
        })
        .await;
    // The expired id no longer continues anything.
    let r = proxy.watch("/watch", "abc", Some(&id)).await;
    assert_eq!(r.status(), 401);
    proxy
        .eventually(SETTLE, "expiry is counted", || async {
            proxy
                .metric("streamgate_stream_decisions_total{outcome=\"expired\"}")
                .await
                >= 1.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_never_expires() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1).ttl("300ms")).await;
    let mut held = proxy.watch("/watch/gate", "abc", None).await;
    assert_eq!(held.status(), 200);
    origin.wait_gated(1).await;
    // Well past the TTL, the in-flight stream still holds the slot.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 401);
    assert_eq!(proxy.metric("streamgate_inflight_requests").await, 1.0);
    origin.open_gate(1);
    while held.chunk().await.unwrap().is_some() {}
    // Then the TTL runs from the end of the last request.
    proxy
        .eventually(
            SETTLE,
            "the lease expires after the request ends",
            || async { proxy.watch("/watch", "abc", None).await.status() == 200 },
        )
        .await;
    // The request that just got its 200 ends (Pingora's logging phase) just after.
    proxy
        .eventually(SETTLE, "no request in flight", || async {
            proxy.metric("streamgate_inflight_requests").await == 0.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_a_stream_at_once() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    let id = stream_id(&proxy.watch("/watch", "abc", None).await);
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 401);

    // Another user cannot end it.
    let r = proxy.delete("mallory", &id).await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_body(r).await["error"], "stream_not_found");

    let r = proxy.delete("abc", &id).await;
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 200);

    let r = proxy.delete("abc", &id).await;
    assert_eq!(r.status(), 404);

    let r = proxy
        .client
        .delete(proxy.url("/watch"))
        .header("Session-Id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"], "stream_id_required");

    let r = proxy
        .client
        .delete(proxy.url("/watch"))
        .header("Stream-Id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"], "session_id_required");
    assert!(
        origin.seen().iter().all(|s| s.method == "GET"),
        "DELETE is never forwarded"
    );
}

/// Issue #16 item 1 (memory store): `DELETE` while a response is streaming ends that
/// response too, so the limit holds at the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cuts_the_streams_requests_in_flight() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(3)).await;
    ending_streams_cuts_their_responses(&origin, &proxy, &proxy).await;
    proxy
        .eventually(SETTLE, "every cut request's hold is released", || async {
            proxy.metric("streamgate_inflight_requests").await == 0.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_open_gives_the_slot_back() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    // Upstream 5xx: the slot is back before the answer arrives, so retries are admitted
    // (and fail again) rather than refused.
    for _ in 0..3 {
        assert_eq!(proxy.watch("/watch/fail", "abc", None).await.status(), 500);
    }
    // Upstream closes mid-body.
    let r = proxy.watch("/watch/reset", "abc", None).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a truncated body is an error for the client"
    );
    proxy
        .eventually(SETTLE, "the reset stream is given back", || async {
            proxy.metric("streamgate_active_streams").await == 0.0
        })
        .await;
    // The slot is free at once: a working stream is admitted.
    let r = proxy.watch("/watch", "abc", None).await;
    assert_eq!(r.status(), 200);
    // A failed renewal does not end a working stream.
    let id = stream_id(&r);
    assert_eq!(
        proxy.watch("/watch/fail", "abc", Some(&id)).await.status(),
        500
    );
    assert_eq!(proxy.watch("/watch", "abc", Some(&id)).await.status(), 200);
}

/// Issue #16 item 4: an opening request whose answer is not a success gives its slot back
/// at once, whoever answered: the origin's 3xx/4xx, or the proxy refusing the request
/// after admitting it (`Connection: X-Forwarded-For` is a 400 that never reaches the
/// origin). A renewal's refusal keeps the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_that_is_not_a_success_gives_the_slot_back() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    for code in [302u16, 403, 404, 410, 416, 429] {
        for _ in 0..2 {
            let r = proxy
                .watch(&format!("/watch/status?code={code}"), "abc", None)
                .await;
            assert_eq!(r.status().as_u16(), code, "not refused by the limit");
        }
    }
    let served = origin.served();
    for _ in 0..3 {
        let answer = raw(
            proxy.addr,
            b"GET /watch/x HTTP/1.1\r\nHost: t\r\nSession-Id: abc\r\nConnection: X-Forwarded-For\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    }
    assert_eq!(origin.served(), served, "refused before the origin");
    let r = proxy.watch("/watch", "abc", None).await;
    assert_eq!(r.status(), 200, "every failed open gave its slot back");
    let id = stream_id(&r);
    assert_eq!(
        proxy
            .watch("/watch/status?code=404", "abc", Some(&id))
            .await
            .status(),
        404
    );
    assert_eq!(
        proxy.watch("/watch", "other-stream", None).await.status(),
        200,
        "another user is unaffected"
    );
    assert_eq!(
        proxy.watch("/watch", "abc", None).await.status(),
        401,
        "a renewal's 404 kept the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_never_blocks_the_user() {
    let origin = Origin::start().await;
    let mut cfg = TestConfig::new(&origin).limit(1);
    cfg.config.upstream.addrs = vec![format!("127.0.0.1:{}", free_port()).into()];
    let proxy = Proxy::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(proxy.watch("/watch", "abc", None).await.status(), 502);
    }
    assert_eq!(proxy.metric("streamgate_active_streams").await, 0.0);
    assert_eq!(proxy.metric("streamgate_inflight_requests").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_ends_the_hold_and_the_ttl_frees_the_slot() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1).ttl("500ms")).await;
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    sock.write_all(b"GET /watch/gate HTTP/1.1\r\nHost: x\r\nSession-Id: abc\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    origin.wait_gated(1).await;
    drop(sock); // the viewer closes the tab mid-body
    origin.open_gate(1);
    proxy
        .eventually(SETTLE, "the aborted request releases its hold", || async {
            proxy.metric("streamgate_inflight_requests").await == 0.0
        })
        .await;
    proxy
        .eventually(SETTLE, "the TTL frees the slot", || async {
            proxy.watch("/watch", "abc", None).await.status() == 200
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_opens_admit_exactly_the_limit() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin)).await;
    let (ok, refused) = crowd(&[&proxy], "crowd").await;
    assert_eq!((ok, refused), (3, 197));
    assert!(origin.max_concurrent("crowd") <= 3);
    assert_eq!(proxy.metric("streamgate_active_streams").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_requests_and_durations() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    let id = stream_id(&proxy.watch("/watch", "abc", None).await);
    proxy.watch("/watch", "abc", Some(&id)).await;
    proxy.watch("/watch", "abc", None).await;
    proxy.delete("abc", &id).await;
    // Holds are released in the logging phase, just after each response.
    proxy
        .eventually(SETTLE, "holds are released", || async {
            proxy.metric("streamgate_inflight_requests").await == 0.0
        })
        .await;
    let text = proxy.metrics().await;
    for line in [
        "streamgate_stream_decisions_total{outcome=\"admitted\",plan=\"default\"} 1",
        "streamgate_stream_decisions_total{outcome=\"renewed\",plan=\"default\"} 1",
        "streamgate_stream_decisions_total{outcome=\"rejected\",plan=\"default\"} 1",
        "streamgate_stream_decisions_total{outcome=\"ended\",plan=\"default\"} 1",
        "streamgate_requests_total{route=\"watch\",status=\"2xx\"} 3",
        "streamgate_requests_total{route=\"watch\",status=\"4xx\"} 1",
        "streamgate_requests_total{route=\"health\",status=\"2xx\"}",
        "streamgate_request_duration_seconds_count{route=\"watch\"} 4",
        "streamgate_active_streams 0",
        "streamgate_inflight_requests 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let r = proxy
        .client
        .get(format!("http://{}/nope", proxy.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
