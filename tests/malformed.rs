//! Bad requests, table-driven: each gets a clear 4xx, never a 5xx, a hang or a panic, and
//! none of them reaches the origin or slips past the limit.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send `request` on a fresh connection; return the response status line's code.
async fn status_of(proxy: &Proxy, request: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Some bad requests are refused before they are fully sent: ignore write errors.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the proxy hung instead of answering");
    let line = String::from_utf8_lossy(&buf);
    let code = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok());
    code.unwrap_or_else(|| panic!("no status line in {line:?}"))
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_request_gets_a_clear_4xx() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    let stream = uuid::Uuid::new_v4().to_string();
    let long_user = "u".repeat(200);
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(40 * 1024));
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = format!("/watch/{}", "a".repeat(70 * 1024));

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("missing Session-Id", get("/watch", ""), 400),
        ("empty Session-Id", get("/watch", "Session-Id: \r\n"), 400),
        ("Session-Id over 128 bytes", get("/watch", &format!("Session-Id: {long_user}\r\n")), 400),
        ("non-ASCII Session-Id", [&get("/watch", "")[..get("/watch", "").len() - 2], "Session-Id: caf\u{e9}\r\n\r\n".as_bytes()].concat(), 400),
        ("control character in Session-Id", get("/watch", "Session-Id: a\x01b\r\n"), 400),
        ("DEL in Session-Id", get("/watch", "Session-Id: a\x7fb\r\n"), 400),
        ("Session-Id twice", get("/watch", "Session-Id: a\r\nSession-Id: b\r\n"), 400),
        ("Stream-Id twice", get("/watch", &format!("Session-Id: a\r\nStream-Id: {stream}\r\nStream-Id: {stream}\r\n")), 400),
        ("malformed Stream-Id", get("/watch", "Session-Id: a\r\nStream-Id: 42\r\n"), 400),
        ("empty Stream-Id", get("/watch", "Session-Id: a\r\nStream-Id: \r\n"), 400),
        ("TRACE on a watch route", b"TRACE /watch HTTP/1.1\r\nHost: t\r\nSession-Id: a\r\n\r\n".to_vec(), 405),
        ("unknown method", b"BREW /watch HTTP/1.1\r\nHost: t\r\nSession-Id: a\r\n\r\n".to_vec(), 405),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), 405),
        ("dot-dot path around the limit", get("/health/../watch", "Session-Id: a\r\n"), 400),
        ("encoded dot-dot path", get("/x/%2e%2e/watch", "Session-Id: a\r\n"), 400),
        ("double slash", get("//watch", "Session-Id: a\r\n"), 400),
        ("encoded slash", get("/watch%2Fseg", "Session-Id: a\r\n"), 400),
        ("HTTP/1.0 without Session-Id", b"GET /watch HTTP/1.0\r\n\r\n".to_vec(), 400),
        ("absolute-form URI without Session-Id", b"GET http://evil.example/watch HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(), 400),
        ("Transfer-Encoding with Content-Length", b"POST /watch HTTP/1.1\r\nHost: t\r\nSession-Id: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("non-numeric Content-Length", b"POST /watch HTTP/1.1\r\nHost: t\r\nSession-Id: a\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        ("conflicting Content-Lengths", b"POST /watch HTTP/1.1\r\nHost: t\r\nSession-Id: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), 400),
        ("unknown Transfer-Encoding", b"POST /watch HTTP/1.1\r\nHost: t\r\nSession-Id: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 400),
        ("oversized headers", get("/watch", &format!("Session-Id: a\r\n{huge_header}")), 431),
        ("many headers", get("/watch", &many_headers), 400),
        ("70 KiB URI", get(&long_uri, "Session-Id: a\r\n"), 431),
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("header without colon", get("/watch", "SessionId\r\n"), 400),
        ("space before colon", get("/watch", "Session-Id : a\r\n"), 400),
        ("obsolete line folding", get("/watch", "Session-Id: a\r\n b\r\n"), 400),
        ("HTTP/2 preface on the HTTP/1 port", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400),
        ("DELETE without Stream-Id", b"DELETE /watch HTTP/1.1\r\nHost: t\r\nSession-Id: a\r\n\r\n".to_vec(), 400),
    ];
    assert!(cases.len() >= 20);
    for (name, request, want) in &cases {
        let got = status_of(&proxy, request).await;
        assert_eq!(got, *want, "{name}");
    }
    assert_eq!(origin.served(), 0, "no bad request reached the origin");
    // The limit is untouched and the proxy still serves.
    assert_eq!(proxy.metric("streamgate_active_streams").await, 0.0);
    assert_eq!(proxy.watch("/watch", "a", None).await.status(), 200);
    assert_eq!(
        proxy.watch("/%77atch", "a", None).await.status(),
        401,
        "an encoded spelling of /watch is still counted"
    );
}

/// Issue #16 item 5: spellings that origins fold onto a watch route (case, `;` parameters,
/// trailing dots and spaces, double encoding, overlong UTF-8, a tab, `GET *`) are refused
/// or counted, never forwarded uncounted; headers an origin may read as the identity are
/// dropped; HTTP/1.1 without `Host` and a listed `Content-Length` are `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_origins_fold_onto_watch_routes_never_pass_uncounted() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(3)).await;
    for _ in 0..3 {
        assert_eq!(proxy.watch("/watch", "u", None).await.status(), 200);
    }
    let served = origin.served();
    let spellings = [
        "/WATCH",
        "/Watch",
        "/watch;jsessionid=1",
        "/watch;/seg.ts",
        "/;x/watch",
        "/other/..;/watch",
        "/watch%3B",
        "/watch.",
        "/watch%2e",
        "/watch%20",
        "/%2577atch",
        "/watch%C0%AF..%C0%AFx",
        "/watch\tx",
        "*",
    ];
    for path in spellings {
        let got = status_of(&proxy, &get(path, "Session-Id: u\r\n")).await;
        assert!(got == 400 || got == 401, "{path:?} got {got}");
    }
    assert_eq!(origin.served(), served, "none reached the origin");
    assert_eq!(
        status_of(&proxy, &get("/WATCH/seg.ts", "Session-Id: u\r\n")).await,
        401,
        "case does not get around the limit: counted, and refused at it"
    );

    for (name, request) in [
        (
            "HTTP/1.1 without Host",
            b"GET /other HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "Content-Length: 5, 5",
            b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nabcde".to_vec(),
        ),
    ] {
        assert_eq!(status_of(&proxy, &request).await, 400, "{name}");
    }
    assert_eq!(origin.served(), served);

    // Lookalike identity headers never reach the origin, on any route.
    let r = raw(
        proxy.addr,
        b"GET /watch/a HTTP/1.1\r\nHost: t\r\nSession-Id: v\r\nSession_Id: forged\r\nSession.Id: forged\r\nStream_Id: forged\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = raw(
        proxy.addr,
        b"GET /other HTTP/1.1\r\nHost: t\r\nsession_id: forged\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = origin.seen();
    for s in &seen[seen.len() - 2..] {
        for h in ["session_id", "session.id", "stream_id"] {
            assert!(
                !s.headers.contains_key(h),
                "{h} reached the origin: {:?}",
                s.headers
            );
        }
    }
    assert_eq!(
        seen[seen.len() - 2]
            .headers
            .get("session-id")
            .map(String::as_str),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_on_watch_requests_are_forwarded_and_refused_ones_drained() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    // A heartbeat POST with a body is forwarded like any watch request.
    let r = proxy
        .client
        .post(proxy.url("/watch/heartbeat"))
        .header("Session-Id", "a")
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A refused POST with a body still gets its 401, and the connection stays usable.
    let r = proxy
        .client
        .post(proxy.url("/watch"))
        .header("Session-Id", "a")
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        proxy
            .client
            .get(proxy.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Read one response from `s` until the proxy closes the connection (or 10 s pass); its
/// status, its head (lowercase) and its body.
async fn answer_of(s: &mut tokio::net::TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Issue #16 item 15: a request head is bounded in bytes (`server.max_request_head`: `431`
/// as soon as it is passed, not once 1 MiB is buffered) and in time
/// (`server.request_head_timeout`: `408`, from the connection's opening, however slowly
/// the bytes trickle in), each a JSON answer that closes the connection; idle time
/// between requests on a kept-alive connection is not counted. Pingora's own answers
/// before any hook (unparsable head, `CONNECT`) are JSON too, without `Server: Pingora`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_bounded_in_bytes_and_time_and_answered_in_json() {
    use std::time::Instant;
    use tokio::net::TcpStream;
    let origin = Origin::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&origin)
            .server("max_request_head = 8192")
            .server("request_head_timeout = \"1s\""),
    )
    .await;

    // A head just under the bound is served.
    let fits = format!("X-Pad: {}\r\n", "a".repeat(7000));
    assert_eq!(status_of(&proxy, &get("/health", &fits)).await, 200);

    // A header that never ends: refused once the bound is passed, while the client is
    // still sending (it would otherwise go on to 1 MiB).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /watch HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        .await
        .unwrap();
    let mut sent = 0;
    let chunk = [b'a'; 1024];
    while sent < 64 * 1024 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let (status, head, body) = answer_of(&mut s).await;
    assert_eq!(status, 431, "{head}");
    assert_eq!(error_code(&body), "request_header_fields_too_large");
    assert!(head.contains("connection: close"), "{head}");

    // A head trickled in a byte every 100 ms: 408 at the timeout, counted from the
    // connection's opening.
    let opened = Instant::now();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let trickle = async {
        for b in
            b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut buf = Vec::new();
    tokio::select! {
        _ = trickle => panic!("the whole trickled head was read without an answer"),
        _ = rd.read_to_end(&mut buf) => {}
    }
    let took = opened.elapsed();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"request_head_timeout\""), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );

    // A connection that sends nothing at all gets the same answer.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let (status, _, body) = answer_of(&mut s).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (408, "request_head_timeout")
    );

    // Idle time between two requests of a kept-alive connection is not head time.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let health = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    for round in 0..2 {
        s.write_all(health).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.ends_with(b"{\"status\":\"UP\"}") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("round {round}: no answer"))
                .unwrap();
            assert!(n > 0, "round {round}: the connection closed");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 "), "round {round}");
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }

    // Pingora's own answers, before any hook: JSON, and no `Server: Pingora`.
    for (request, want, code) in [
        (&b"GARBAGE\r\n\r\n"[..], 400, "malformed_request"),
        (
            &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
            405,
            "method_not_allowed",
        ),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let (status, head, body) = answer_of(&mut s).await;
        assert_eq!(status, want, "{head}");
        assert_eq!(error_code(&body), code);
        assert!(!head.contains("server:"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
    }
    assert_eq!(origin.served(), 0);
    assert_eq!(
        proxy
            .metric("streamgate_refused_request_heads_total{reason=\"timeout\"}")
            .await,
        2.0
    );
    assert_eq!(
        proxy
            .metric("streamgate_refused_request_heads_total{reason=\"too_large\"}")
            .await,
        1.0
    );
}
