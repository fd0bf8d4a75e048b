//! A tiny built-in content server, so `streamgate demo` works on a fresh machine with
//! nothing else running: every path answers `200` with a small JSON "segment".

use async_trait::async_trait;
use http::{HeaderValue, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

pub struct DemoOrigin;

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
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
