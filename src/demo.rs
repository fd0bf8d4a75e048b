//! A tiny built-in content server, so `streamgate demo` works on a fresh machine with
//! nothing else running: `.../demo/index.m3u8` and its three 1 s segments are a real HLS
//! video (160x90, made with ffmpeg, 20 KiB in all, in `src/demo_media/`) that any player can
//! watch through the proxy; every other path answers `200` with a small JSON "segment".

use async_trait::async_trait;
use http::{HeaderValue, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

pub struct DemoOrigin;

/// The demo video: path suffix, content type, bytes.
const MEDIA: [(&str, &str, &[u8]); 4] = [
    (
        "/demo/index.m3u8",
        "application/vnd.apple.mpegurl",
        include_bytes!("demo_media/index.m3u8"),
    ),
    (
        "/demo/seg0.ts",
        "video/mp2t",
        include_bytes!("demo_media/seg0.ts"),
    ),
    (
        "/demo/seg1.ts",
        "video/mp2t",
        include_bytes!("demo_media/seg1.ts"),
    ),
    (
        "/demo/seg2.ts",
        "video/mp2t",
        include_bytes!("demo_media/seg2.ts"),
    ),
];

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if let Some((_, ct, bytes)) = MEDIA.iter().find(|(p, _, _)| req.uri.path().ends_with(p)) {
            let mut resp = Response::new(bytes.to_vec());
            let h = resp.headers_mut();
            h.insert("content-type", HeaderValue::from_static(ct));
            h.insert("content-length", HeaderValue::from(bytes.len()));
            return resp;
        }
        let stream = req
            .headers
            .get("stream-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let body = json!({
            "origin": "streamgate demo",
            "path": req.uri.path(),
            "stream_id": stream,
        })
        .to_string()
        .into_bytes();
        let mut resp = Response::new(body);
        let len = resp.body().len();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("content-length", HeaderValue::from(len));
        resp
    }
}
