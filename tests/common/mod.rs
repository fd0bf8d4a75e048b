//! Test harness: the real proxy (built by the library's own `server::build`, [`proxy`]) on
//! free loopback ports, in front of a real HTTP/1.1 origin written here on raw tokio
//! sockets ([`origin`]) so that tests can make it slow, gated, failing, resetting or
//! hanging; and the assertions several test binaries share.
#![allow(dead_code)]

pub mod certs;
pub mod media;
mod origin;
mod proxy;
pub mod redis_server;

pub use origin::*;
pub use proxy::*;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port that was free a moment ago (Pingora binds by address, so we must pick one), and
/// never one this test process was given before: the kernel may hand the same free port to
/// two calls in a row, and a proxy's listener and metrics port must differ.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`): a port
/// from inside it can be taken, between this call and the server's bind, as the source
/// port of any outgoing connection the tests make, and Pingora then retries its bind while
/// the service does not listen (a CI run failed so: its metrics were refused mid-test).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.saturating_sub(1));
    if hi > lo + 1000 {
        for _ in 0..1000 {
            let span = u128::from(hi - lo);
            let port = lo + (uuid::Uuid::new_v4().as_u128() % span) as u16;
            if given.contains(&port) {
                continue;
            }
            if StdListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port not given out before in 1000 tries")
}

/// 200 concurrent opens for one user, alternating between the proxies: (admitted, refused).
pub async fn crowd(proxies: &[&Proxy], user: &str) -> (usize, usize) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let p = proxies[i % proxies.len()];
            let client = p.client.clone();
            let url = p.url("/watch/slow?chunks=2&ms=10");
            let user = user.to_string();
            tokio::spawn(async move {
                let r = client
                    .get(url)
                    .header("Session-Id", user)
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                s
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            401 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, refused)
}

/// The `Stream-Id` a response carries.
pub fn stream_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("stream-id")
        .expect("response has a Stream-Id")
        .to_str()
        .unwrap()
        .to_string()
}

/// The `Retry-After` of a refusal, in seconds.
pub fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .expect("ASCII Retry-After")
        .parse()
        .expect("whole seconds")
}

/// The JSON body of a response the proxy answered itself, checking its content type.
pub async fn json_body(r: reqwest::Response) -> serde_json::Value {
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(ct, "application/json", "proxy answers are JSON");
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Issue #16 item 1, on any store: three rounds of "open three streams on a slow 10 s body
/// through `open_on`, `DELETE` each through `delete_on`". Each ended stream's response is
/// cut (the client's body ends in an error long before 10 s), the origin stops serving it,
/// and the origin never serves the user more than the limit (3) at once.
pub async fn ending_streams_cuts_their_responses(
    origin: &Origin,
    open_on: &Proxy,
    delete_on: &Proxy,
) {
    let user = "cut-me";
    for round in 0..3 {
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let r = open_on
                .watch("/watch/slow?chunks=100&ms=100", user, None)
                .await;
            assert_eq!(r.status(), 200, "round {round}: the slot was free again");
            bodies.push(r);
        }
        let started = std::time::Instant::now();
        for r in &bodies {
            let d = delete_on.delete(user, &stream_id(r)).await;
            let st = d.status();
            assert_eq!(st, 204, "{}", d.text().await.unwrap());
        }
        for mut r in bodies {
            let mut read = 0;
            let cut = loop {
                match r.chunk().await {
                    Ok(Some(c)) => read += c.len(),
                    Ok(None) => break false,
                    Err(_) => break true,
                }
            };
            assert!(
                cut,
                "round {round}: the whole body was served ({read} bytes)"
            );
        }
        // Within seconds, not the body's 10 (generous for a loaded debug build; the cut
        // itself comes at the next 100 ms chunk).
        let deadline = started + Duration::from_secs(5);
        while origin.live_streams(user) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the origin still serves an ended stream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        origin.max_concurrent(user) <= 3,
        "the origin served {} bodies to one user at once",
        origin.max_concurrent(user)
    );
}

/// Read a response to its end: whether it was cut (an error before the end).
pub async fn was_cut(mut r: reqwest::Response) -> bool {
    loop {
        match r.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

/// Send raw bytes and read whatever comes back until the peer closes or `within` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// See [`Proxy::metric`]: `text` is a Prometheus text exposition.
pub fn sum_series(text: &str, series: &str) -> f64 {
    fn split(s: &str) -> (&str, Vec<&str>) {
        match s.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect(),
            ),
            None => (s, Vec::new()),
        }
    }
    let (name, want) = split(series);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (s, value) = l.rsplit_once(' ')?;
            let (n, labels) = split(s);
            (n == name && want.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
