//! Real players through the proxy: ffmpeg plays HLS (VOD, master, fMP4 byte ranges, live,
//! gzip) and DASH on one lease per player, and the URL-borne stream id's rules.

mod common;

use std::time::Duration;

use common::media::{play, player, MediaOrigin};
use common::*;

const PLAY: Duration = Duration::from_secs(60);

fn decisions(outcome: &str) -> String {
    format!("streamgate_stream_decisions_total{{outcome=\"{outcome}\"}}")
}

/// Every URL of a playlist body, as a player would resolve it against `base`.
fn playlist_uris(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_hls_and_dash_to_the_end_on_one_stream_each() {
    let origin = MediaOrigin::start().await;
    // Limit 1: a player that opened a second stream would be refused and fail.
    let cfg = TestConfig::new_for(origin.addr).limit(1);
    let proxy = Proxy::start(&cfg).await;
    let players = [
        ("vod", "/watch/vod/index.m3u8"),
        ("master", "/watch/master.m3u8"),
        ("fmp4", "/watch/fmp4/index.m3u8"),
        ("dash", "/watch/dash/manifest.mpd"),
        ("gzip", "/watch/gz/vod/index.m3u8"),
    ];
    for (user, path) in players {
        let (ok, stderr) = play(&proxy.url(path), user, PLAY).await;
        assert!(ok, "{user}: ffmpeg failed: {stderr}");
    }
    let n = players.len() as f64;
    assert_eq!(
        proxy.settled(&decisions("admitted"), n).await,
        n,
        "one stream per player"
    );
    assert_eq!(proxy.metric(&decisions("rejected")).await, 0.0);
    // Segments renewed (waited for: counted in the logging phase).
    proxy.counted(&decisions("renewed"), 4.0 * n).await;
    let seen = origin.seen();
    assert!(
        seen.iter().any(|s| s.target.ends_with(".m4s")) && seen.iter().any(|s| s.range.is_some()),
        "DASH segments and byte ranges were fetched: {seen:?}"
    );
    for s in &seen {
        assert!(
            !s.target.contains("sg_stream"),
            "the origin saw {}",
            s.target
        );
        assert!(
            s.stream.is_some(),
            "every watch request carried its stream upstream"
        );
    }
    let hls = proxy
        .metric("streamgate_manifests_total{kind=\"hls\",outcome=\"rewritten\"}")
        .await;
    assert!(hls >= 6.0, "playlists rewritten: {hls}");
    let dash = proxy
        .metric("streamgate_manifests_total{kind=\"dash\",outcome=\"rewritten\"}")
        .await;
    assert_eq!(dash, 1.0);
    let most = origin.max_inflight_per_stream();
    eprintln!("ffmpeg: at most {most} requests of one stream in flight");
    assert!((1..=8).contains(&most), "within the default cap: {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_live_players_hold_past_three_ttls_a_fourth_is_refused_then_one_plays() {
    let origin = MediaOrigin::start().await;
    let cfg = TestConfig::new_for(origin.addr).limit(3).ttl("2s");
    let proxy = Proxy::start(&cfg).await;
    let live = proxy.url("/watch/live/index.m3u8");
    let mut three: Vec<_> = (0..3)
        .map(|_| player(&live, "family").spawn().expect("ffmpeg"))
        .collect();
    proxy.counted(&decisions("admitted"), 3.0).await;
    // Three TTLs and more of live playback, each renewing its own stream.
    let started = std::time::Instant::now();
    proxy
        .eventually(Duration::from_secs(30), "7 s of live playback", || async {
            let renewed = proxy.metric(&decisions("renewed")).await;
            started.elapsed() > Duration::from_secs(7) && renewed >= 3.0 * 6.0
        })
        .await;
    for p in three.iter_mut() {
        assert!(
            p.try_wait().expect("status").is_none(),
            "a live player stopped early"
        );
    }
    assert_eq!(proxy.metric(&decisions("rejected")).await, 0.0);
    assert_eq!(
        proxy.settled(&decisions("admitted"), 3.0).await,
        3.0,
        "no stream opened twice"
    );

    let (ok, _) = play(&live, "family", PLAY).await;
    assert!(!ok, "a fourth screen fails");
    assert_eq!(
        proxy.settled(&decisions("rejected"), 1.0).await,
        1.0,
        "refused at its first request"
    );

    for mut p in three {
        p.kill().await.expect("the players we started stop");
    }
    // Within one TTL of their last request, a new screen plays.
    let vod = proxy.url("/watch/vod/index.m3u8");
    let mut played = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !played && std::time::Instant::now() < deadline {
        played = play(&vod, "family", PLAY).await.0;
    }
    assert!(
        played,
        "a new player could not play after the three stopped"
    );
    assert!(origin
        .seen()
        .iter()
        .all(|s| !s.target.contains("sg_stream")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_player_resumes_on_its_own_lease_or_is_refused_opening_nothing() {
    let origin = MediaOrigin::start().await;
    let cfg = TestConfig::new_for(origin.addr).limit(1).ttl("1s");
    let proxy = Proxy::start(&cfg).await;
    let r = proxy.watch("/watch/vod/index.m3u8", "p", None).await;
    assert_eq!(r.status(), 200);
    let id = stream_id(&r);
    let body = r.text().await.unwrap();
    let uris = playlist_uris(&body);
    assert_eq!(uris.len(), 4);
    for u in &uris {
        assert!(u.ends_with(&format!("?sg_stream={id}")), "{u}");
    }
    let get = |u: &str| {
        let url = proxy.url(&format!("/watch/vod/{u}"));
        let client = proxy.client.clone();
        async move {
            client
                .get(url)
                .header("Session-Id", "p")
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(get(&uris[0]).await.status(), 200);
    // Paused past the TTL: the lease runs out.
    proxy
        .eventually(Duration::from_secs(10), "the lease expires", || async {
            proxy.metric("streamgate_active_streams").await == 0.0
        })
        .await;
    for u in &uris[1..] {
        let r = get(u).await;
        assert_eq!(r.status(), 200);
        assert_eq!(stream_id(&r), id, "the same stream, again");
    }
    assert_eq!(
        proxy.settled(&decisions("resumed"), 1.0).await,
        1.0,
        "opened again once"
    );
    assert_eq!(proxy.settled(&decisions("admitted"), 1.0).await, 1.0);

    // Another paused player of the same user, while the first holds the one slot:
    // refused, and nothing is opened for it.
    let stale = uuid::Uuid::new_v4();
    let r = get(&format!("seg000.ts?sg_stream={stale}")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(proxy.settled(&decisions("resumed"), 1.0).await, 1.0);
    let r = get(&uris[1]).await;
    assert_eq!(stream_id(&r), id, "the first still holds its slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_with_more_requests_in_flight_than_the_cap_is_busy() {
    let origin = Origin::start().await;
    let cfg = TestConfig::new(&origin)
        .limit(3)
        .streams("max_inflight_per_stream = 2");
    let proxy = Proxy::start(&cfg).await;
    let id = stream_id(&proxy.watch("/watch", "u", None).await);
    let url = proxy.url(&format!("/watch/gate?sg_stream={id}"));
    let held: Vec<_> = (0..2)
        .map(|_| {
            let req = proxy.client.get(&url).header("Session-Id", "u");
            tokio::spawn(async move {
                let r = req.send().await.unwrap();
                let status = r.status();
                r.bytes().await.expect("the whole body");
                status
            })
        })
        .collect();
    origin.wait_gated(2).await;
    let r = proxy
        .watch(&format!("/watch/seg.ts?sg_stream={id}"), "u", None)
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(json_body(r).await["error"], "stream_busy");
    // By header too: it is the same stream.
    assert_eq!(
        proxy.watch("/watch/seg.ts", "u", Some(&id)).await.status(),
        429
    );
    assert_eq!(proxy.settled(&decisions("busy"), 2.0).await, 2.0);
    origin.open_gate(2);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    proxy
        .counted(
            "streamgate_requests_total{route=\"watch\",status=\"2xx\"}",
            3.0,
        )
        .await;
    assert_eq!(
        proxy.watch("/watch/seg.ts", "u", Some(&id)).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_parameter_never_reaches_the_origin_and_must_agree_with_the_header() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&TestConfig::new(&origin).limit(1)).await;
    let id = stream_id(&proxy.watch("/watch", "u", None).await);
    let r = proxy
        .watch(&format!("/watch/a?x=%2F&sg_stream={id}&y&z=1"), "u", None)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(stream_id(&r), id, "renewed by the parameter");
    let r = proxy
        .watch(&format!("/watch/b?sg_stream={id}"), "u", None)
        .await;
    assert_eq!(r.status(), 200);
    let seen: Vec<String> = origin.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        seen[1], "/watch/a?x=%2F&y&z=1",
        "the rest of the query byte for byte"
    );
    assert_eq!(seen[2], "/watch/b");
    assert_eq!(proxy.settled(&decisions("renewed"), 2.0).await, 2.0);

    let other = uuid::Uuid::new_v4();
    for path in [
        format!("/watch/a?sg_stream={id}&sg_stream={id}"),
        "/watch/a?sg_stream=nope".to_string(),
    ] {
        let r = proxy.watch(&path, "u", None).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(json_body(r).await["error"], "invalid_stream_id");
    }
    let r = proxy
        .watch(&format!("/watch/a?sg_stream={other}"), "u", Some(&id))
        .await;
    assert_eq!(r.status(), 400, "header and parameter disagree");
    assert_eq!(
        origin.seen().len(),
        3,
        "no refused request reached the origin"
    );

    // A manifest that opens a stream is sent to the stream's own URL first, so a player
    // reloading it (a live playlist) reloads it as this stream.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(proxy.url("/watch/live/index.m3u8?t=1"))
        .header("Session-Id", "v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let id = to.rsplit('=').next().unwrap().to_string();
    assert_eq!(to, format!("/watch/live/index.m3u8?t=1&sg_stream={id}"));
    assert_eq!(r.headers()["stream-id"], id.as_str());
    assert!(
        r.headers().get("session-id").is_none(),
        "not echoed by default"
    );
    assert_eq!(origin.seen().len(), 3, "answered by the proxy");
    let r = proxy.watch(&to, "v", None).await;
    assert_eq!(stream_id(&r), id, "the redirect's stream, renewed");
    assert_eq!(proxy.settled(&decisions("admitted"), 2.0).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_pass_without_identity_and_own_answers_carry_cors() {
    let origin = Origin::start().await;
    let cfg = TestConfig::new(&origin)
        .limit(1)
        .streams("cors_origins = [\"https://player.example\"]");
    let proxy = Proxy::start(&cfg).await;
    let r = proxy
        .client
        .request(reqwest::Method::OPTIONS, proxy.url("/watch/vod/index.m3u8"))
        .header("Origin", "https://player.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "forwarded to the origin");
    assert_eq!(origin.seen()[0].method, "OPTIONS");
    let id = uuid::Uuid::new_v4();
    let r = proxy
        .client
        .request(
            reqwest::Method::OPTIONS,
            proxy.url(&format!("/watch/seg1.ts?sg_stream={id}&x=1")),
        )
        .header("Origin", "https://player.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        origin.seen()[1].path,
        "/watch/seg1.ts?x=1",
        "no parameter on a preflight"
    );
    // A HEAD probe (a native player checking a URL) needs no identity and opens nothing.
    let r = proxy
        .client
        .head(proxy.url(&format!("/watch/seg2.ts?sg_stream={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin.seen()[2].method, "HEAD");
    assert_eq!(origin.seen()[2].path, "/watch/seg2.ts");
    assert_eq!(
        proxy.metric(&decisions("admitted")).await,
        0.0,
        "no stream for a preflight"
    );

    proxy.watch("/watch", "u", None).await;
    let refused = |origin_header: &'static str| {
        proxy
            .client
            .get(proxy.url("/watch"))
            .header("Session-Id", "u")
            .header("Origin", origin_header)
            .send()
    };
    let r = refused("https://player.example").await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://player.example"
    );
    assert_eq!(r.headers()["vary"], "Origin");
    let expose = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        expose.contains("Retry-After") && expose.contains("Stream-Id"),
        "{expose}"
    );
    let r = refused("https://elsewhere.example").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_manifests_are_rewritten_and_marked_private_big_ones_pass_unchanged() {
    use std::io::Read;
    let origin = MediaOrigin::start().await;
    let proxy = Proxy::start(&TestConfig::new_for(origin.addr).limit(3)).await;
    let r = proxy.watch("/watch/gz/vod/index.m3u8", "u", None).await;
    assert_eq!(r.status(), 200);
    let id = stream_id(&r);
    let h = r.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["cache-control"], "private, max-age=2");
    assert_eq!(h["etag"], "W/\"v1\"");
    assert!(h.get("content-length").is_none());
    let gz = r.bytes().await.unwrap();
    let mut body = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut body)
        .expect("still gzip");
    for u in playlist_uris(&body) {
        assert!(u.ends_with(&format!(".ts?sg_stream={id}")), "{u}");
    }
    // Segments stream through as they are, ranges included.
    let r = proxy
        .client
        .get(proxy.url(&format!("/watch/vod/seg000.ts?sg_stream={id}")))
        .header("Session-Id", "u")
        .header("Range", "bytes=0-187")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 188);

    let small = TestConfig::new_for(origin.addr).streams("max_manifest_size = 64");
    let proxy = Proxy::start(&small).await;
    let r = proxy.watch("/watch/vod/index.m3u8", "u", None).await;
    let body = r.text().await.unwrap();
    assert!(!body.contains("sg_stream"), "over the limit: unchanged");
    let too_large = "streamgate_manifests_total{kind=\"hls\",outcome=\"too_large\"}";
    proxy.counted(too_large, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_redis_serve_one_player_on_one_stream() {
    use common::redis_server::RedisServer;
    let redis = RedisServer::start();
    let origin = MediaOrigin::start().await;
    let cfg = TestConfig::new_for(origin.addr)
        .limit(1)
        .redis(&redis.url(), "players", "deny");
    let (a, b) = (Proxy::start(&cfg).await, Proxy::start(&cfg).await);
    // The manifest through one instance, its segments through the other (a load balancer
    // that does not pin players): one stream, renewed on both.
    let r = a.watch("/watch/vod/index.m3u8", "r", None).await;
    assert_eq!(r.status(), 200);
    let id = stream_id(&r);
    let uris = playlist_uris(&r.text().await.unwrap());
    for u in &uris {
        let r = b.watch(&format!("/watch/vod/{u}"), "r", None).await;
        assert_eq!(r.status(), 200, "{u}");
        assert_eq!(stream_id(&r), id);
    }
    let n = uris.len() as f64;
    assert_eq!(b.settled(&decisions("renewed"), n).await, n);
    // And ffmpeg, through the second instance, is the one screen too many.
    let (ok, _) = play(&b.url("/watch/vod/index.m3u8"), "r", PLAY).await;
    assert!(!ok, "limit 1 holds across instances");
}
