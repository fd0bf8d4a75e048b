use super::*;
use http::HeaderValue;

fn rules() -> IdentityRules {
    IdentityRules {
        session_header: HeaderName::from_static("session-id"),
        stream_header: HeaderName::from_static("stream-id"),
        stream_param: "sg_stream".into(),
        max_len: 128,
    }
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    h
}

#[test]
fn session_id_accepts_visible_ascii() {
    let h = headers(&[("Session-Id", b"abc-123_~!")]);
    assert_eq!(rules().session_id(&h), Ok("abc-123_~!"));
}

#[test]
fn session_id_missing_or_empty_is_required() {
    let r = rules();
    for h in [headers(&[]), headers(&[("Session-Id", b"")])] {
        assert_eq!(r.session_id(&h).unwrap_err().code(), "session_id_required");
    }
}

#[test]
fn session_id_bad_values_are_invalid() {
    let r = rules();
    let long = vec![b'a'; 129];
    let cases: Vec<&[u8]> = vec![&long, b"a b", b"caf\xc3\xa9", b"a\tb", b"\x80"];
    for v in cases {
        let h = headers(&[("Session-Id", v)]);
        assert_eq!(
            r.session_id(&h).unwrap_err().code(),
            "invalid_session_id",
            "{v:?}"
        );
    }
    let exactly_max = vec![b'a'; 128];
    assert!(r
        .session_id(&headers(&[("Session-Id", &exactly_max)]))
        .is_ok());
}

#[test]
fn session_id_sent_twice_is_invalid() {
    let h = headers(&[("Session-Id", b"a"), ("session-id", b"b")]);
    assert_eq!(
        rules().session_id(&h).unwrap_err().code(),
        "invalid_session_id"
    );
}

#[test]
fn stream_id_absent_is_none_and_uuid_parses() {
    let r = rules();
    assert_eq!(r.stream_id(&headers(&[])), Ok(None));
    let id = Uuid::new_v4();
    let h = headers(&[("Stream-Id", id.to_string().as_bytes())]);
    assert_eq!(r.stream_id(&h), Ok(Some(id)));
}

#[test]
fn stream_id_malformed_or_twice_is_invalid() {
    let r = rules();
    let id = Uuid::new_v4().to_string();
    let simple = Uuid::new_v4().simple().to_string();
    for h in [
        headers(&[("Stream-Id", b"")]),
        headers(&[("Stream-Id", b"not-a-uuid")]),
        headers(&[("Stream-Id", simple.as_bytes())]),
        headers(&[("Stream-Id", b"zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz")]),
        headers(&[("Stream-Id", id.as_bytes()), ("Stream-Id", id.as_bytes())]),
    ] {
        assert_eq!(r.stream_id(&h).unwrap_err().code(), "invalid_stream_id");
    }
}

#[test]
fn stream_id_in_the_query_follows_the_header_rules() {
    let r = rules();
    let id = Uuid::new_v4();
    let other = Uuid::new_v4();
    let none = headers(&[]);
    let q = format!("a=1&sg_stream={id}&b");
    assert_eq!(r.stream_of(&none, Some(&q)), Ok((Some(id), Via::Param)));
    assert_eq!(r.stream_of(&none, Some("a=1")), Ok((None, Via::None)));
    assert_eq!(r.stream_of(&none, None), Ok((None, Via::None)));
    assert_eq!(
        r.stream_of(&none, Some("sg_streamer=1")),
        Ok((None, Via::None))
    );
    let h = headers(&[("Stream-Id", id.to_string().as_bytes())]);
    assert_eq!(
        r.stream_of(&h, Some(&q)),
        Ok((Some(id), Via::Header)),
        "agreeing"
    );
    assert_eq!(r.stream_of(&h, None), Ok((Some(id), Via::Header)));
    for bad in [
        format!("sg_stream={id}&sg_stream={id}"),
        "sg_stream=".to_string(),
        "sg_stream".to_string(),
        "sg_stream=not-a-uuid".to_string(),
        format!("sg_stream={}", id.simple()),
        format!("sg_stream={}", id.to_string().replace('-', "%2D")),
    ] {
        let e = r.stream_of(&none, Some(&bad)).unwrap_err();
        assert_eq!(e.code(), "invalid_stream_id", "{bad}");
    }
    let disagree = format!("sg_stream={other}");
    let e = r.stream_of(&h, Some(&disagree)).unwrap_err();
    assert_eq!(e.code(), "invalid_stream_id");
    assert!(e.to_string().contains("different streams"), "{e}");
}

#[test]
fn a_users_log_tag_is_stable_and_shows_nothing_of_the_session() {
    let tags = UserTags::default();
    let a = tags.tag("secret-session-1").to_string();
    assert_eq!(a, tags.tag("secret-session-1").to_string());
    assert_ne!(a, tags.tag("secret-session-2").to_string());
    assert_eq!(a.len(), 12);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(
        a,
        UserTags::default().tag("secret-session-1").to_string(),
        "the key is per process (per instance of the tags)"
    );
}

#[test]
fn lookalike_identity_headers_are_recognised() {
    let rules = IdentityRules {
        session_header: HeaderName::from_static("session-id"),
        stream_header: HeaderName::from_static("stream-id"),
        stream_param: "sg_stream".into(),
        max_len: 128,
    };
    for h in ["session_id", "session.id", "stream_id", "stream.id"] {
        assert!(rules.is_lookalike(&HeaderName::from_static(h)), "{h}");
    }
    for h in [
        "session-id",
        "stream-id",
        "x_session_id",
        "session_idx",
        "x-other",
    ] {
        assert!(!rules.is_lookalike(&HeaderName::from_static(h)), "{h}");
    }
}
