//! How the proxy writes its own responses: JSON, with an exact `content-length`. *Which*
//! answer a request gets is decided in [`super::answer`].
//!
//! An exact length matters: without it a keep-alive client cannot tell where the body ends
//! and hangs (cloudflare/pingora#766). Bodies are built with `serde_json`, so user-supplied
//! text can never break the JSON.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Serialize;

/// `{"status":"UP"}`, the `/health` body, exactly.
pub const HEALTH_BODY: &[u8] = br#"{"status":"UP"}"#;
pub const READY_BODY: &[u8] = br#"{"status":"READY"}"#;

/// The `Cache-Control` of a forwarded answer that carries the user's session id: `private`,
/// so no shared cache keeps it, with the origin's other directives kept (`public` and
/// `s-maxage`, which are for shared caches, dropped). `None`: already `private` or
/// `no-store`, leave it.
pub fn private_cache_control(existing: Option<&[u8]>) -> Option<String> {
    let existing = existing
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("");
    let directive = |d: &str| {
        d.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let mut kept = vec!["private".to_string()];
    for d in existing.split(',').filter(|d| !d.trim().is_empty()) {
        match directive(d).as_str() {
            "private" | "no-store" => return None,
            "public" | "s-maxage" => {}
            _ => kept.push(d.trim().to_string()),
        }
    }
    Some(kept.join(", "))
}

/// What every error body says, plus fields of its own (`()` for none).
#[derive(Serialize)]
struct ErrorBody<'a, E: Serialize> {
    error: &'a str,
    message: &'a str,
    #[serde(flatten)]
    extra: E,
}

/// A JSON error body: `{"error": code, "message": message, ...extra}`, where `extra` is a
/// struct whose fields are added (serialized straight into the body: no map is built).
pub fn error_body_with(code: &str, message: &str, extra: impl Serialize) -> Bytes {
    let body = ErrorBody {
        error: code,
        message,
        extra,
    };
    match serde_json::to_vec(&body) {
        Ok(v) => Bytes::from(v),
        // Only a non-string map key could fail, and our bodies have none.
        Err(_) => Bytes::from_static(br#"{"error":"internal","message":"unserializable"}"#),
    }
}

/// A JSON error body: `{"error": code, "message": message}`.
pub fn error_body(code: &str, message: &str) -> Bytes {
    error_body_with(code, message, ())
}

/// Which browser origins may read the proxy's own answers (`streams.cors_origins`): a
/// browser player refused with `401` can then show why, and read `Retry-After`. Forwarded
/// responses keep whatever CORS headers the origin sends.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
    expose: Option<HeaderValue>,
}

impl Cors {
    /// `origins` as configured (`"*"` for any); `expose` are the response headers a page
    /// may read besides the simple ones.
    pub fn new(origins: &[String], expose: &[&str]) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").cloned().collect(),
            expose: HeaderValue::from_str(&expose.join(", ")).ok(),
        }
    }

    /// The `Access-Control-Allow-Origin` value for this request: its own `Origin`, when
    /// that is allowed. Echoed rather than `*`, with `Vary: Origin`, so a cache keeps the
    /// answers to different origins apart.
    fn allow(&self, req: &RequestHeader) -> Option<HeaderValue> {
        if !self.any && self.origins.is_empty() {
            return None;
        }
        let origin = req.headers.get(http::header::ORIGIN)?;
        let ok = self.any
            || self
                .origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()));
        ok.then(|| origin.clone())
    }
}

/// Write a complete JSON response. `headers` are added after the standard ones.
pub async fn json(
    session: &mut Session,
    cors: &Cors,
    status: u16,
    body: Bytes,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(7 + headers.len()))?;
    if !body.is_empty() {
        h.insert_header("content-type", HeaderValue::from_static("application/json"))?;
    }
    // A 204 carries no body and, by RFC 9110, no content-length either.
    if status != 204 {
        h.insert_header("content-length", body.len())?;
    }
    h.insert_header("cache-control", HeaderValue::from_static("no-store"))?;
    for (k, v) in headers {
        h.insert_header(k.clone(), v.clone())?;
    }
    if let Some(origin) = cors.allow(session.req_header()) {
        h.insert_header("access-control-allow-origin", origin)?;
        h.append_header("vary", HeaderValue::from_static("Origin"))?;
        if let Some(expose) = &cors.expose {
            h.insert_header("access-control-expose-headers", expose.clone())?;
        }
    }
    let end = body.is_empty();
    session.write_response_header(Box::new(h), end).await?;
    if !end {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_the_session_becomes_private() {
        let p = |v: Option<&str>| private_cache_control(v.map(str::as_bytes));
        assert_eq!(p(None).as_deref(), Some("private"));
        assert_eq!(
            p(Some("public, max-age=60, s-maxage=600")).as_deref(),
            Some("private, max-age=60")
        );
        assert_eq!(
            p(Some("max-age=10, must-revalidate")).as_deref(),
            Some("private, max-age=10, must-revalidate")
        );
        assert_eq!(p(Some("Private, max-age=5")), None);
        assert_eq!(p(Some("no-store")), None);
    }
    use serde_json::Value;

    #[test]
    fn error_body_is_valid_json_whatever_the_message() {
        #[derive(Serialize)]
        struct Limit {
            limit: u32,
        }
        let b = error_body_with("x", "quote \" and \\ and \n", Limit { limit: 3 });
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "x");
        assert_eq!(v["message"], "quote \" and \\ and \n");
        assert_eq!(v["limit"], 3);
    }

    #[test]
    fn error_body_without_extra_has_exactly_two_fields() {
        let v: Value = serde_json::from_slice(&error_body("a", "b")).unwrap();
        assert_eq!(v, serde_json::json!({"error": "a", "message": "b"}));
    }

    #[test]
    fn health_body_is_exact() {
        assert_eq!(HEALTH_BODY, b"{\"status\":\"UP\"}");
    }
}
