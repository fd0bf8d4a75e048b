//! Every answer the proxy writes itself, decided in one place.
//!
//! A refusal or a failure anywhere in the proxy (framing, routing, identity, the limit, the
//! store, the upstream) becomes one [`Answer`], and this module alone says what the client
//! gets for it: status, error code, message, extra headers (`Retry-After`, `Allow`,
//! `Location`) and whether the connection closes after it. Writing is in
//! [`super::respond`]. The model is linkerd2-proxy's `errors` module: code elsewhere says
//! *what happened*, this says *what that means in HTTP*.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Serialize;

use super::failure::Failure;
use super::respond::{self, Cors};
use crate::framing::Refusal;
use crate::identity::IdentityError;
use crate::jwt::TokenError;
use crate::policy::PlanRefusal;
use crate::store::{retry_after_secs, Gone, GoneReason, StoreError};

/// What the proxy answers itself instead of forwarding.
#[derive(Debug)]
pub enum Answer {
    /// `GET /health`.
    Health,
    /// `GET /ready` while the store answers.
    Ready,
    /// `GET /ready` while a `SIGTERM` drains the instance.
    Draining,
    /// `GET /ready` while no content server is usable (or before the first round of
    /// health checks), with `upstream.ready_requires_upstream`.
    NoUpstream,
    /// `DELETE` ended the stream: `204`.
    Ended,
    /// A manifest request that opened a stream, sent to the stream's own URL; `echo` are
    /// the identity headers every admitted answer carries.
    Redirect {
        location: HeaderValue,
        echo: Vec<(HeaderName, HeaderValue)>,
    },
    /// Refused before routing: the body cannot be framed safely.
    Framing(Refusal),
    /// A path that could resolve to a watch route without being counted.
    InvalidPath(&'static str),
    /// A method watch routes do not serve.
    MethodNotAllowed,
    /// A path outside the routes, with `server.other_paths = "not_found"`.
    NotFound,
    /// The identity headers or parameter were missing or malformed.
    Identity(IdentityError),
    /// `DELETE` of a stream the user does not have.
    StreamNotFound,
    /// One stream more than the limit.
    LimitExceeded {
        limit: u32,
        active: u32,
        retry_after: Duration,
        /// The plan the limit came from, named in the body.
        plan: Option<Arc<str>>,
        /// `streams.limit_status`.
        status: u16,
    },
    /// JWT identity: no token, or one that does not verify (`401`, with the reason).
    Token(TokenError),
    /// The user's plan allows no stream, or is unknown (`403`).
    Plan(PlanRefusal),
    /// The stream has the most requests in flight allowed.
    Busy,
    /// The admin API blocked the user (`403`), for `retry_after` more.
    UserBlocked { retry_after: Duration },
    /// The stream was evicted, or ended through the admin API: its id is never opened
    /// again (`410`).
    Gone(Gone),
    /// The store failed or timed out (and the policy does not fail open).
    Store(StoreError),
    /// Proxying failed (upstream refused, slow, broken; an error of ours).
    Upstream(Failure),
    /// A request head past `server.max_request_head` bytes (written by
    /// [`crate::head_limits`], before Pingora reads the request).
    HeadTooLarge,
    /// A request head still unfinished after `server.request_head_timeout`.
    HeadTimeout,
    /// A request head Pingora could not parse (in place of its own empty `400`).
    MalformedHead,
    /// `CONNECT`, which the proxy does not tunnel (in place of Pingora's empty `405`).
    Connect,
}

/// The error body's extra fields for a refusal at the limit.
#[derive(Serialize)]
struct Counts<'a> {
    limit: u32,
    active: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a str>,
}

/// The error body's extra field for a stream that is gone: when (RFC 3339).
#[derive(Serialize)]
struct When {
    at: String,
}

/// The error body's extra field for a refused token.
#[derive(Serialize)]
struct Reason {
    reason: &'static str,
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Health | Answer::Ready => 200,
            Answer::Ended => 204,
            Answer::Redirect { .. } => 302,
            Answer::Framing(r) => r.status,
            Answer::InvalidPath(_) | Answer::Identity(_) | Answer::MalformedHead => 400,
            Answer::LimitExceeded { status, .. } => *status,
            Answer::Token(TokenError::KeysUnavailable) => 503,
            Answer::Token(_) => 401,
            Answer::Plan(_) | Answer::UserBlocked { .. } => 403,
            Answer::NotFound | Answer::StreamNotFound => 404,
            Answer::Gone(_) => 410,
            Answer::MethodNotAllowed | Answer::Connect => 405,
            Answer::HeadTimeout => 408,
            Answer::HeadTooLarge => 431,
            Answer::Busy => 429,
            Answer::Store(_) | Answer::Draining | Answer::NoUpstream => 503,
            Answer::Upstream(f) => f.status,
        }
    }

    /// Whether the connection must close after this answer: after a framing refusal the
    /// next request's bytes cannot be told from this one's body, and after a failed
    /// proxying the connection is not reused.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Answer::Framing(_)
                | Answer::Upstream(_)
                | Answer::Draining
                | Answer::HeadTooLarge
                | Answer::HeadTimeout
                | Answer::MalformedHead
                | Answer::Connect
        )
    }

    /// The stable error code (`None` for the answers that are not errors).
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            Answer::Health | Answer::Ready | Answer::Ended => return None,
            Answer::Redirect { .. } => "stream_opened",
            Answer::Framing(r) => r.code,
            Answer::InvalidPath(_) => "invalid_path",
            Answer::MethodNotAllowed | Answer::Connect => "method_not_allowed",
            Answer::HeadTooLarge => "request_header_fields_too_large",
            Answer::HeadTimeout => "request_head_timeout",
            Answer::MalformedHead => "malformed_request",
            Answer::NotFound => "not_found",
            Answer::Identity(e) => e.code(),
            Answer::StreamNotFound => "stream_not_found",
            Answer::LimitExceeded { .. } => "stream_limit_exceeded",
            Answer::Token(TokenError::Missing) => "token_required",
            Answer::Token(TokenError::KeysUnavailable) => "auth_unavailable",
            Answer::Token(_) => "invalid_token",
            Answer::Plan(PlanRefusal::Blocked(_)) => "plan_blocked",
            Answer::Plan(PlanRefusal::Unknown) => "unknown_plan",
            Answer::Busy => "stream_busy",
            Answer::UserBlocked { .. } => "user_blocked",
            Answer::Gone(g) => match g.reason {
                GoneReason::Evicted => "stream_evicted",
                GoneReason::Ended => "stream_ended",
            },
            Answer::Draining => "draining",
            Answer::NoUpstream => "upstream_unavailable",
            Answer::Store(StoreError::Full) => "store_full",
            Answer::Store(_) => "store_unavailable",
            Answer::Upstream(f) => f.code,
        })
    }

    fn body(&self) -> Bytes {
        let Some(code) = self.code() else {
            return match self {
                Answer::Health => Bytes::from_static(respond::HEALTH_BODY),
                Answer::Ready => Bytes::from_static(respond::READY_BODY),
                _ => Bytes::new(),
            };
        };
        match self {
            Answer::LimitExceeded {
                limit,
                active,
                plan,
                ..
            } => respond::error_body_with(
                code,
                &format!("this user already has {active} active streams; the limit is {limit}"),
                Counts {
                    limit: *limit,
                    active: *active,
                    plan: plan.as_deref(),
                },
            ),
            Answer::Token(TokenError::Missing) => {
                respond::error_body(code, &TokenError::Missing.to_string())
            }
            Answer::Token(TokenError::KeysUnavailable) => respond::error_body(
                code,
                "the keys that verify identity tokens are not available; try again shortly",
            ),
            Answer::Token(e) => respond::error_body_with(
                code,
                "the identity token does not verify",
                Reason { reason: e.reason() },
            ),
            Answer::Identity(e) => respond::error_body(code, &e.to_string()),
            Answer::Gone(g) => {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(g.at_unix_ms);
                let message = match g.reason {
                    GoneReason::Evicted => "this stream was stopped to let another screen play",
                    GoneReason::Ended => "this stream was ended by the service",
                };
                let at = humantime::format_rfc3339_millis(at).to_string();
                respond::error_body_with(code, message, When { at })
            }
            Answer::Store(e) => respond::error_body(code, &e.to_string()),
            _ => respond::error_body(code, self.message()),
        }
    }

    /// The human-readable message of the answers whose message is fixed.
    fn message(&self) -> &'static str {
        match self {
            Answer::Redirect { .. } => "continue at this stream's own URL",
            Answer::Framing(r) => r.message,
            Answer::InvalidPath(why) => why,
            Answer::MethodNotAllowed => "watch routes accept GET, HEAD, POST, DELETE and OPTIONS",
            Answer::NotFound => "no route for this path",
            Answer::StreamNotFound => "no active stream with this id for this user",
            Answer::Busy => {
                "this stream has the most requests in flight allowed; one player per stream"
            }
            Answer::Upstream(f) => f.message,
            Answer::Draining => "this instance is stopping; send new requests elsewhere",
            Answer::NoUpstream => "no content server is usable",
            Answer::HeadTooLarge => {
                "the request line and headers are longer than this proxy accepts"
            }
            Answer::HeadTimeout => "the request line and headers did not arrive in time",
            Answer::MalformedHead => "the request line or headers could not be parsed",
            Answer::Connect => "this proxy does not tunnel CONNECT",
            Answer::Plan(PlanRefusal::Blocked(_)) => "this user's plan allows no stream",
            Answer::Plan(PlanRefusal::Unknown) => "this user's plan is not one this service knows",
            Answer::UserBlocked { .. } => "this user may not watch for now",
            _ => "",
        }
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Answer::LimitExceeded { retry_after, .. } => vec![(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            )],
            Answer::Busy => vec![(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            Answer::UserBlocked { retry_after } => vec![(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            )],
            Answer::Token(TokenError::KeysUnavailable) => {
                vec![(header::RETRY_AFTER, HeaderValue::from_static("5"))]
            }
            // RFC 6750 section 3: no error code when the request carried no token.
            Answer::Token(TokenError::Missing) => vec![(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"streamgate\""),
            )],
            Answer::Token(e) => vec![(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&format!(
                    "Bearer realm=\"streamgate\", error=\"invalid_token\", error_description=\"{}\"",
                    e.reason()
                ))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
            )],
            Answer::MethodNotAllowed => vec![(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, DELETE, OPTIONS"),
            )],
            Answer::Connect => vec![(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            )],
            Answer::Redirect { location, echo } => {
                let mut h = vec![(header::LOCATION, location.clone())];
                h.extend(echo.iter().cloned());
                h
            }
            _ => Vec::new(),
        }
    }

    /// This answer as HTTP/1.1 bytes, for a connection no request was read from (so no
    /// session to write through), closing it: what [`crate::head_limits`] sends.
    pub fn to_wire(&self) -> Vec<u8> {
        let status = self.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let body = self.body();
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
            body.len()
        )
        .into_bytes();
        for (k, v) in self.headers() {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }

    /// Write this answer as the response to the session's request.
    pub async fn write(&self, session: &mut Session, cors: &Cors) -> Result<()> {
        if self.closes() {
            session.set_keepalive(None);
        }
        respond::json(session, cors, self.status(), self.body(), &self.headers()).await
    }
}

#[cfg(test)]
mod tests;
