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
mod tests;
