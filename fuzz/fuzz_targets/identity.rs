//! Session-Id and Stream-Id parsing: never panics, and whatever it accepts obeys the rules.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use streamgate::identity::IdentityRules;

fuzz_target!(|data: &[u8]| {
    let rules = IdentityRules {
        session_header: HeaderName::from_static("session-id"),
        stream_header: HeaderName::from_static("stream-id"),
        max_len: 128,
    };
    // Bytes before the first 0xff are header values separated by 0x00; each value goes to
    // Session-Id or Stream-Id by its first byte's parity (so duplicates are exercised too).
    let mut headers = HeaderMap::new();
    for part in data.split(|b| *b == 0) {
        let Some((&first, value)) = part.split_first() else { continue };
        let Ok(v) = HeaderValue::from_bytes(value) else { continue };
        let name = if first % 2 == 0 { &rules.session_header } else { &rules.stream_header };
        headers.append(name.clone(), v);
    }
    if let Ok(user) = rules.session_id(&headers) {
        assert!(!user.is_empty() && user.len() <= 128);
        assert!(user.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(headers.get_all("session-id").iter().count(), 1);
    }
    if let Ok(Some(id)) = rules.stream_id(&headers) {
        let sent = headers.get("stream-id").unwrap().to_str().unwrap();
        assert!(sent.eq_ignore_ascii_case(&id.to_string()));
    }
});
