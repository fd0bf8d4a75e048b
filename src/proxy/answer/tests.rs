use super::*;
use serde_json::Value;

fn body(a: &Answer) -> Value {
    serde_json::from_slice(&a.body()).unwrap()
}

#[test]
fn each_refusal_has_its_status_code_and_headers() {
    let limit = Answer::LimitExceeded {
        limit: 3,
        active: 3,
        retry_after: Duration::from_millis(1500),
        plan: None,
        status: 401,
    };
    assert_eq!(limit.status(), 401);
    assert_eq!(
        body(&limit),
        serde_json::json!({"error": "stream_limit_exceeded",
            "message": "this user already has 3 active streams; the limit is 3",
            "limit": 3, "active": 3})
    );
    assert_eq!(
        limit.headers(),
        vec![(header::RETRY_AFTER, HeaderValue::from(2))]
    );
    assert_eq!(Answer::Busy.status(), 429);
    assert_eq!(body(&Answer::Busy)["error"], "stream_busy");
    assert_eq!(Answer::Store(StoreError::Full).code(), Some("store_full"));
    assert_eq!(
        Answer::Store(StoreError::Timeout).code(),
        Some("store_unavailable")
    );
    assert_eq!(Answer::MethodNotAllowed.headers()[0].0, header::ALLOW);
    assert!(Answer::Framing(Refusal {
        status: 400,
        code: "x",
        message: "y"
    })
    .closes());
    assert!(
        !limit.closes(),
        "a refused player may retry on its connection"
    );
    assert_eq!(Answer::Ended.status(), 204);
    assert!(Answer::Ended.body().is_empty());
    assert_eq!(&Answer::Health.body()[..], respond::HEALTH_BODY);
    assert_eq!(Answer::Draining.status(), 503);
    assert_eq!(body(&Answer::Draining)["error"], "draining");
    assert!(
        Answer::Draining.closes(),
        "a draining instance sheds its connections"
    );
}

#[test]
fn an_answer_on_the_wire_is_a_complete_closing_json_response() {
    let wire = Answer::HeadTooLarge.to_wire();
    let text = std::str::from_utf8(&wire).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    assert!(head.contains("\r\nconnection: close"));
    assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
    assert!(!head.to_ascii_lowercase().contains("server:"));
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "request_header_fields_too_large");
    let connect = String::from_utf8(Answer::Connect.to_wire()).unwrap();
    assert!(connect.starts_with("HTTP/1.1 405 "));
    assert!(connect.contains("\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"));
    assert!(String::from_utf8(Answer::HeadTimeout.to_wire())
        .unwrap()
        .starts_with("HTTP/1.1 408 Request Timeout\r\n"));
}
