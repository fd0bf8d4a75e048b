//! Who is asking, and for which stream: the two request headers the limit is keyed on.
//!
//! Both are parsed strictly, because a sloppy parse is a way around the limit: a user id
//! is 1..=`max_len` bytes of visible ASCII, sent once; a stream id is a UUID, sent once.
//! Everything here is pure and unit-tested; the proxy turns an [`IdentityError`] into a
//! JSON `400`.

use http::{HeaderMap, HeaderName};
use uuid::Uuid;

/// Why the identity headers of a request were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the {0} header is required on this route")]
    SessionIdRequired(String),
    #[error("the {header} header {reason}")]
    InvalidSessionId {
        header: String,
        reason: &'static str,
    },
    #[error("the {0} header is required to end a stream")]
    StreamIdRequired(String),
    #[error("the {header} header {reason}")]
    InvalidStreamId {
        header: String,
        reason: &'static str,
    },
}

impl IdentityError {
    /// The stable, machine-readable error code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::SessionIdRequired(_) => "session_id_required",
            IdentityError::InvalidSessionId { .. } => "invalid_session_id",
            IdentityError::StreamIdRequired(_) => "stream_id_required",
            IdentityError::InvalidStreamId { .. } => "invalid_stream_id",
        }
    }
}

/// How users appear in logs. A session id is a bearer credential, so a log line carries a
/// keyed hash of it instead: 12 hex digits, the key random per process. One user's
/// requests, streams and refusals line up within an instance's log; across instances (and
/// restarts) follow `stream=`, the stream id, which is shared through the store and is not
/// a credential.
#[derive(Debug, Clone, Default)]
pub struct UserTags(std::hash::RandomState);

impl UserTags {
    /// The tag of `user` in this process's logs.
    pub fn tag(&self, user: &str) -> UserTag {
        use std::hash::BuildHasher;
        UserTag(self.0.hash_one(user))
    }
}

/// A user's log tag (see [`UserTags`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserTag(u64);

impl std::fmt::Display for UserTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.0 >> 16)
    }
}

/// A stream's id: a UUID the proxy issued.
pub type StreamId = Uuid;

/// Which way a request named its stream (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    #[default]
    None,
    Header,
    Param,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::None => "-",
            Via::Header => "header",
            Via::Param => "param",
        }
    }
}

/// The parsing rules, built once from config.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    pub session_header: HeaderName,
    pub stream_header: HeaderName,
    /// The query parameter that may carry the stream id instead (players follow URLs).
    pub stream_param: String,
    pub max_len: usize,
}

impl IdentityRules {
    /// A header that is not the session or stream header but that an origin may read as
    /// one: spelled with `_` or `.` for `-` (CGI, PHP, many frameworks fold them). Such
    /// headers are dropped before forwarding, as nginx drops underscore headers by default,
    /// so no client can hand the origin an identity the proxy did not check.
    pub fn is_lookalike(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        if !n.contains(['_', '.']) {
            return false;
        }
        let folds_to = |real: &HeaderName| {
            let real = real.as_str();
            real.len() == n.len()
                && n.bytes().zip(real.bytes()).all(|(a, b)| {
                    let a = if a == b'_' || a == b'.' { b'-' } else { a };
                    a == b
                })
        };
        folds_to(&self.session_header) || folds_to(&self.stream_header)
    }
}

/// Every value of the query parameter `name`, as written (no percent-decoding: an id has
/// one spelling).
fn param_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The first value of the query parameter `name`, as written.
pub(crate) fn param_value<'a>(query: &'a str, name: &'a str) -> Option<&'a str> {
    param_values(query, name).next()
}

/// Exactly one value of `name`: `Ok(None)` when absent, `Err(())` when sent twice.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a [u8]>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(first.map(|v| v.as_bytes()))
}

impl IdentityRules {
    /// The user a request belongs to.
    pub fn session_id<'a>(&self, headers: &'a HeaderMap) -> Result<&'a str, IdentityError> {
        let invalid = |reason| IdentityError::InvalidSessionId {
            header: self.session_header.to_string(),
            reason,
        };
        let raw = single(headers, &self.session_header)
            .map_err(|_| invalid("must be sent only once"))?
            .unwrap_or_default();
        if raw.is_empty() {
            return Err(IdentityError::SessionIdRequired(
                self.session_header.to_string(),
            ));
        }
        if raw.len() > self.max_len {
            return Err(invalid("is too long"));
        }
        if !raw.iter().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("must be visible ASCII characters only"));
        }
        // All bytes are ASCII, so this cannot fail; map it anyway rather than unwrap.
        std::str::from_utf8(raw).map_err(|_| invalid("must be visible ASCII characters only"))
    }

    /// The stream a request continues, from the header or the query parameter, and which
    /// way it came. Each may be sent once; both may be sent only if they agree.
    pub fn stream_of(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<(Option<StreamId>, Via), IdentityError> {
        let from_header = self.stream_id(headers)?;
        let from_param = match query {
            Some(q) if q.contains(self.stream_param.as_str()) => self.stream_param_id(q)?,
            _ => None,
        };
        match (from_header, from_param) {
            (Some(h), Some(p)) if h != p => Err(IdentityError::InvalidStreamId {
                header: self.stream_header.to_string(),
                reason: "and the stream parameter name different streams",
            }),
            (Some(h), _) => Ok((Some(h), Via::Header)),
            (None, Some(p)) => Ok((Some(p), Via::Param)),
            (None, None) => Ok((None, Via::None)),
        }
    }

    /// The stream id in the query parameter, if there is one.
    fn stream_param_id(&self, query: &str) -> Result<Option<StreamId>, IdentityError> {
        let invalid = |reason| IdentityError::InvalidStreamId {
            header: format!("{} parameter", self.stream_param),
            reason,
        };
        let mut values = param_values(query, &self.stream_param);
        let Some(raw) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid("must be sent only once"));
        }
        parse_id(raw.as_bytes())
            .map(Some)
            .ok_or_else(|| invalid("must be a UUID as issued by the proxy"))
    }

    /// The stream a request continues by header, if it names one.
    pub fn stream_id(&self, headers: &HeaderMap) -> Result<Option<StreamId>, IdentityError> {
        let invalid = |reason| IdentityError::InvalidStreamId {
            header: self.stream_header.to_string(),
            reason,
        };
        let Some(raw) =
            single(headers, &self.stream_header).map_err(|_| invalid("must be sent only once"))?
        else {
            return Ok(None);
        };
        parse_id(raw)
            .map(Some)
            .ok_or_else(|| invalid("must be a UUID as issued by the proxy"))
    }
}

/// Only the hyphenated form the proxy issues: one spelling per stream.
fn parse_id(raw: &[u8]) -> Option<StreamId> {
    if raw.len() != 36 {
        return None;
    }
    Uuid::try_parse_ascii(raw).ok()
}

#[cfg(test)]
mod tests {
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
}
