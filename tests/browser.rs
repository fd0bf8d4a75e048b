//! Browser players: hls.js and dash.js in headless Chromium play through the proxy on one
//! stream each. Needs Debian's `chromium` and `npm ci --prefix tests/browser` (the README's
//! test commands; `.ci/run` does both). Pages and players are served by the test origin
//! (through the proxy, outside the watch routes); nothing comes from a CDN.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::media::MediaOrigin;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_and_dash_js_play_in_chromium_on_one_stream_each() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/puppeteer-core").exists(),
        "run `npm ci --prefix tests/browser` first"
    );
    let origin = MediaOrigin::start().await;
    // Limit 1: a player that opened a second stream would be refused and fail.
    let proxy = Proxy::start(&TestConfig::new_for(origin.addr).limit(1)).await;
    let page = |kind: &str, user: &str, src: &str| {
        format!(
            "{}?user={user}&src={src}",
            proxy.url(&format!("/app/{kind}.html"))
        )
    };
    let pages = [
        page("hls", "hlsjs", "/watch/vod/index.m3u8"),
        page("hls", "hlsjs-master", "/watch/master.m3u8"),
        page("dash", "dashjs", "/watch/dash/manifest.mpd"),
    ];
    let run = tokio::process::Command::new("node")
        .arg(dir.join("play.mjs"))
        .args(&pages)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the browser finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a browser player failed: {stdout}");
    for line in stdout.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("one JSON line per page");
        assert_eq!(r["ok"], true, "{line}");
        assert!(
            r["t"].as_f64().unwrap_or(0.0) > 2.0,
            "played past 2 s: {line}"
        );
    }
    let admitted = "streamgate_stream_decisions_total{outcome=\"admitted\"}";
    assert_eq!(
        proxy.settled(admitted, 3.0).await,
        3.0,
        "one stream per player"
    );
    let rejected = "streamgate_stream_decisions_total{outcome=\"rejected\"}";
    assert_eq!(proxy.metric(rejected).await, 0.0);
    assert!(origin
        .seen()
        .iter()
        .all(|s| !s.target.contains("sg_stream")));
    let most = origin.max_inflight_per_stream();
    eprintln!("hls.js/dash.js: at most {most} requests of one stream in flight");
    assert!((1..=8).contains(&most), "within the default cap: {most}");
}
