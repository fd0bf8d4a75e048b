//! The metrics listener: the registry as Prometheus text.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, Registry, TextEncoder};

/// Serves `GET /metrics` in Prometheus text format; everything else is `404`.
pub struct MetricsApp {
    registry: Registry,
}

impl MetricsApp {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    pub(super) fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, ctype, body) = if path != "/metrics" {
            (
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not_found","message":"metrics are served at /metrics"}"#.to_vec(),
            )
        } else {
            match self.render() {
                Ok(body) => (StatusCode::OK, "text/plain; version=0.0.4", body),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "application/json",
                    br#"{"error":"internal_error","message":"metrics could not be encoded"}"#
                        .to_vec(),
                ),
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let len = resp.body().len();
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        resp
    }
}
