//! Session-Id, Stream-Id and the `sg_stream` parameter: never panics, and whatever it
//! accepts obeys the rules.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use streamgate::identity::IdentityRules;

fuzz_target!(|data: &[u8]| {
    let rules = IdentityRules {
        session_header: HeaderName::from_static("session-id"),
        stream_header: HeaderName::from_static("stream-id"),
        stream_param: "sg_stream".into(),
        max_len: 128,
    };
    // Bytes before the first 0xff are header values separated by 0x00; each value goes to
    // Session-Id or Stream-Id by its first byte's parity (so duplicates are exercised too).
    // What follows the first 0xff is the query string.
    let (data, query) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], std::str::from_utf8(&data[i + 1..]).ok()),
        None => (data, None),
    };
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
    if let Ok((Some(id), _)) = rules.stream_of(&headers, query) {
        // An accepted id was sent exactly as issued, by header or parameter.
        let hyphenated = id.to_string();
        let by_header = headers
            .get("stream-id")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(hyphenated.as_bytes()));
        let by_param = query.is_some_and(|q| q.contains(&format!("sg_stream={hyphenated}")));
        assert!(by_header || by_param || query.is_some_and(|q| q.to_ascii_lowercase().contains(&hyphenated)));
    }
});
