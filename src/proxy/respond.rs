//! Every response the proxy writes itself: JSON, with an exact `content-length`.
//!
//! An exact length matters: without it a keep-alive client cannot tell where the body ends
//! and hangs (cloudflare/pingora#766). Bodies are built with `serde_json`, so user-supplied
//! text can never break the JSON.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::{json, Map, Value};

/// `{"status":"UP"}`, the `/health` body, exactly.
pub const HEALTH_BODY: &[u8] = br#"{"status":"UP"}"#;
pub const READY_BODY: &[u8] = br#"{"status":"READY"}"#;

/// A JSON error body: `{"error": code, "message": message, ...extra}`.
pub fn error_body(code: &str, message: &str, extra: &[(&str, Value)]) -> Bytes {
    let mut obj = Map::new();
    obj.insert("error".into(), json!(code));
    obj.insert("message".into(), json!(message));
    for (k, v) in extra {
        obj.insert((*k).into(), v.clone());
    }
    Bytes::from(Value::Object(obj).to_string())
}

/// Write a complete JSON response. `headers` are added after the standard ones.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    headers: &[(&'static str, String)],
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + headers.len()))?;
    if !body.is_empty() {
        h.insert_header("content-type", "application/json")?;
    }
    // A 204 carries no body and, by RFC 9110, no content-length either.
    if status != 204 {
        h.insert_header("content-length", body.len().to_string())?;
    }
    h.insert_header("cache-control", "no-store")?;
    for (k, v) in headers {
        h.insert_header(*k, v.as_str())?;
    }
    let end = body.is_empty();
    session.write_response_header(Box::new(h), end).await?;
    if !end {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Write a JSON error response.
pub async fn error(
    session: &mut Session,
    status: u16,
    code: &str,
    message: &str,
    extra: &[(&str, Value)],
) -> Result<()> {
    json(session, status, error_body(code, message, extra), &[]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_valid_json_whatever_the_message() {
        let b = error_body("x", "quote \" and \\ and \n", &[("limit", json!(3))]);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "x");
        assert_eq!(v["message"], "quote \" and \\ and \n");
        assert_eq!(v["limit"], 3);
    }

    #[test]
    fn health_body_is_exact() {
        assert_eq!(HEALTH_BODY, b"{\"status\":\"UP\"}");
    }
}
