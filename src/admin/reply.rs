//! What the admin API answers: one JSON [`Reply`] type, its common errors, and the bounded
//! read of a request body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use super::rules;
use crate::proxy::respond::error_body;
use crate::store::StoreError;

/// One answer: status, JSON body, extra headers.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
    pub(super) headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Reply {
    pub(super) fn json(status: StatusCode, body: impl Serialize) -> Self {
        let body = serde_json::to_vec(&body)
            .map(Bytes::from)
            .unwrap_or_else(|_| {
                Bytes::from_static(br#"{"error":"internal","message":"unserializable"}"#)
            });
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Self {
        Self {
            status,
            body: error_body(code, message),
            headers: Vec::new(),
        }
    }

    pub(super) fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    pub(super) fn with(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

pub(super) fn not_found() -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "not_found",
        "admin paths are /admin/v1/users/{user}/streams[/{id}], /admin/v1/users/{user}/limit, /admin/v1/users/{user}/block and /admin/v1/stats",
    )
}

pub(super) fn not_allowed(allow: &'static str) -> Reply {
    Reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this admin path does not take that method",
    )
    .with(header::ALLOW, allow)
}

pub(super) fn store_failed(e: &StoreError) -> Reply {
    Reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        &e.to_string(),
    )
}

/// The request body, at most [`rules::MAX_BODY`] bytes (a rule's JSON).
pub(super) async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > rules::MAX_BODY {
                    return Err(Reply::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "an admin request body is at most 4096 bytes",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "the request body could not be read",
                ))
            }
        }
    }
}

impl Reply {
    pub(super) fn into_response(self) -> Response<Vec<u8>> {
        let reply = self;
        let mut resp = Response::new(reply.body.to_vec());
        *resp.status_mut() = reply.status;
        let len = resp.body().len();
        let headers = resp.headers_mut();
        if reply.status != StatusCode::NO_CONTENT {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in reply.headers {
            headers.insert(name, value);
        }
        resp
    }
}
