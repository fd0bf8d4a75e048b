use super::*;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::MemoryStore;
use pingora::proxy::ProxyHttp;

fn gate(extra: &str) -> StreamGate {
    let config = Config::from_toml(&format!(
        "[upstream]\naddrs = [\"127.0.0.1:9\"]\n[streams]\nlimit = 1\n{extra}"
    ))
    .unwrap();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let store = Arc::new(MemoryStore::new(
        config.streams.lease_ttl,
        100,
        metrics.lease_counters(),
    ));
    StreamGate::new(
        &config,
        store,
        metrics,
        crate::drain::Drain::new(Duration::ZERO, Duration::ZERO),
        crate::access_log::AccessLog::off(prometheus::IntCounter::new("d", "d").unwrap()),
        crate::reload::shared(&config, &crate::jwt::Runtime::default()).unwrap(),
        crate::upstream::Upstreams::new(&config.upstream, &prometheus::Registry::new()).unwrap(),
    )
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

#[tokio::test]
async fn opens_renews_refuses_and_ends_without_a_socket() {
    let g = gate("");
    let mut ctx = g.new_ctx();
    let r = req("GET", "/watch/a.ts", &[("Session-Id", "u")]);
    assert!(matches!(g.admit(&r, &mut ctx).await, Ok(Forward)));
    let id = ctx.stream_id.unwrap();
    assert_eq!(ctx.decision, Some(Decision::Admitted));
    drop(ctx);

    let mut ctx = g.new_ctx();
    let r = req(
        "GET",
        &format!("/watch/b.ts?sg_stream={id}"),
        &[("Session-Id", "u")],
    );
    assert!(matches!(g.admit(&r, &mut ctx).await, Ok(Forward)));
    assert_eq!(ctx.decision, Some(Decision::Renewed));

    let mut other = g.new_ctx();
    let r = req("GET", "/watch/c.ts", &[("Session-Id", "u")]);
    match g.admit(&r, &mut other).await {
        Err(Answer::LimitExceeded {
            limit: 1,
            active: 1,
            ..
        }) => {}
        a => panic!("{a:?}"),
    }
    drop(ctx);

    let mut ctx = g.new_ctx();
    let r = req(
        "DELETE",
        "/watch",
        &[("Session-Id", "u"), ("Stream-Id", &id.to_string())],
    );
    assert!(matches!(g.admit(&r, &mut ctx).await, Err(Answer::Ended)));
    let mut ctx = g.new_ctx();
    assert!(matches!(
        g.admit(&r, &mut ctx).await,
        Err(Answer::StreamNotFound)
    ));
}

#[tokio::test]
async fn bad_identity_busy_streams_and_manifest_redirects() {
    let g = gate("max_inflight_per_stream = 1");
    let mut ctx = g.new_ctx();
    let r = req("GET", "/watch", &[]);
    match g.admit(&r, &mut ctx).await {
        Err(a @ Answer::Identity(_)) => assert_eq!(a.code(), Some("session_id_required")),
        a => panic!("{a:?}"),
    }
    // A manifest that opens a stream is redirected to the stream's own URL.
    let mut ctx = g.new_ctx();
    let r = req("GET", "/watch/v/index.m3u8?x=1", &[("Session-Id", "u")]);
    let id = match g.admit(&r, &mut ctx).await {
        Err(Answer::Redirect { location, .. }) => {
            let l = location.to_str().unwrap().to_string();
            assert!(l.starts_with("/watch/v/index.m3u8?x=1&sg_stream="), "{l}");
            l.rsplit('=').next().unwrap().to_string()
        }
        a => panic!("{a:?}"),
    };
    assert!(
        ctx.hold.is_none(),
        "the lease is kept for the redirected request"
    );
    // One request of that stream in flight (cap 1): the next one is busy.
    let mut first = g.new_ctx();
    let r = req(
        "GET",
        &format!("/watch/s.ts?sg_stream={id}"),
        &[("Session-Id", "u")],
    );
    assert!(matches!(g.admit(&r, &mut first).await, Ok(Forward)));
    let mut second = g.new_ctx();
    assert!(matches!(g.admit(&r, &mut second).await, Err(Answer::Busy)));
}
