//! The admin API (`[admin]`): what support staff need when a user reports a stuck device
//! or a shared password. They can see a user's streams and end one or all of them.
//!
//! The API has its own listener, never the proxy's, and is off unless `admin.listen` is
//! set. JSON goes in and out, under versioned paths:
//! - `GET /admin/v1/users/{user}/streams`: each lease's id, whether a request of it is in
//!   flight, and when it expires otherwise;
//! - `DELETE /admin/v1/users/{user}/streams/{id}` ends one stream, and
//!   `DELETE /admin/v1/users/{user}/streams` ends all of the user's streams. Either way the
//!   stream's responses in flight are cut on this instance and, through the store, on
//!   every other instance, just as a player's own `DELETE` is;
//! - `GET /admin/v1/stats`: this instance's counts.
//!
//! `{user}` is the identity the proxy keys on: the session id, or the token's user claim.
//! It is percent-encoded in the path. No endpoint lists every user, because a scan of a
//! million keys would be an outage.
//!
//! Every request needs `Authorization: Bearer` with one of two tokens. The read token may
//! list and read stats; the write token may also end streams. The comparison runs in
//! constant time (`subtle`). No token, or a wrong one, gets `401` with `WWW-Authenticate`;
//! the read token on a write gets `403`. Tokens never appear in a log line or an answer.
//! Each request is counted (`streamgate_admin_requests_total{action, status}`), and each
//! write is logged on target `streamgate::admin` with the user's log tag, never the user.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, HeaderValue, Method, Response, StatusCode};
use log::info;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{IntCounterVec, IntGauge};
use serde::Serialize;

mod reply;
mod rules;
mod tokens;

use self::reply::{not_allowed, not_found, read_body, store_failed, Reply};
use self::tokens::Scope;
pub use self::tokens::Tokens;
use crate::identity::{StreamId, UserTags};
use crate::inflight::StreamInflight;
use crate::store::RuleKind;
use crate::store::{GoneReason, StoreError, StreamStore};

/// How long an end waits for the stream's requests in flight here to let go.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// This instance's counts, for `GET /admin/v1/stats`.
pub struct Stats {
    pub active_streams: IntGauge,
    pub inflight_requests: IntGauge,
}

/// The admin API's HTTP service.
pub struct AdminApp {
    store: Arc<dyn StreamStore>,
    inflight: Arc<StreamInflight>,
    tokens: Tokens,
    tags: UserTags,
    max_user_len: usize,
    requests: IntCounterVec,
    stats: Stats,
    /// How long an ended stream's id is remembered (`streams.tombstone_ttl`).
    tombstone_ttl: Duration,
}

#[derive(Serialize)]
struct Lease {
    id: String,
    /// When it was opened (RFC 3339).
    opened: Option<String>,
    /// Its last renewal (RFC 3339); `None` while in flight in the memory store.
    last_renewed: Option<String>,
    in_flight: bool,
    /// `None` while in flight (a lease cannot expire then).
    expires_in_ms: Option<u64>,
    /// The first 8 hex digits of the opening device's hash (`streams.device_header`).
    device: Option<String>,
    /// Redis: the instance that opened it or, while a request holds it, refreshed it last.
    served_by: Option<String>,
}

/// Unix milliseconds as RFC 3339.
fn rfc3339(unix_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

#[derive(Serialize)]
struct Listing<'a> {
    user: &'a str,
    streams: Vec<Lease>,
    /// The admin API's rules in force for the user.
    rules: rules::Rules,
}

impl AdminApp {
    pub fn new(
        store: Arc<dyn StreamStore>,
        inflight: Arc<StreamInflight>,
        tokens: Tokens,
        tags: UserTags,
        max_user_len: usize,
        requests: IntCounterVec,
        stats: Stats,
    ) -> Self {
        Self {
            store,
            inflight,
            tokens,
            tags,
            max_user_len,
            tombstone_ttl: Duration::from_secs(600),
            requests,
            stats,
        }
    }

    /// Remember ended ids this long (`streams.tombstone_ttl`; 10 minutes unless set).
    pub fn with_tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// The store's end of a stream ended here: its id is remembered, so its player's next
    /// request is `410 stream_ended`, not a new stream.
    async fn end_for_good(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.store
            .end_for_good(user, id, GoneReason::Ended, self.tombstone_ttl)
            .await
    }

    /// The action a request asks for, and its answer.
    async fn handle(
        &self,
        method: &Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: &[u8],
    ) -> (&'static str, Reply) {
        let parts: Vec<&str> = match path.strip_prefix("/admin/v1/") {
            Some(rest) => rest.split('/').collect(),
            None => return ("other", not_found()),
        };
        let (action, write) = match (method, parts.as_slice()) {
            (&Method::GET, ["stats"]) => ("stats", false),
            (&Method::GET, ["users", _, "streams"]) => ("list", false),
            (&Method::DELETE, ["users", _, "streams"]) => ("end_all", true),
            (&Method::DELETE, ["users", _, "streams", _]) => ("end", true),
            (&Method::PUT, ["users", _, "limit"]) => ("set_limit", true),
            (&Method::DELETE, ["users", _, "limit"]) => ("clear_limit", true),
            (&Method::PUT, ["users", _, "block"]) => ("block", true),
            (&Method::DELETE, ["users", _, "block"]) => ("unblock", true),
            (_, ["users", _, "limit" | "block"]) => return ("other", not_allowed("PUT, DELETE")),
            (_, ["stats"]) => return ("other", not_allowed("GET")),
            (_, ["users", _, "streams"]) => return ("other", not_allowed("GET, DELETE")),
            (_, ["users", _, "streams", _]) => return ("other", not_allowed("DELETE")),
            _ => return ("other", not_found()),
        };
        match (self.tokens.scope(auth), write) {
            (Scope::None, _) => {
                return (
                    action,
                    Reply::error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the admin API needs Authorization: Bearer with an admin token",
                    )
                    .with(
                        header::WWW_AUTHENTICATE,
                        "Bearer realm=\"streamgate-admin\"",
                    ),
                )
            }
            (Scope::Read, true) => {
                return (
                    action,
                    Reply::error(
                        StatusCode::FORBIDDEN,
                        "insufficient_scope",
                        "this token may read; ending streams needs the write token",
                    )
                    .with(
                        header::WWW_AUTHENTICATE,
                        "Bearer realm=\"streamgate-admin\", error=\"insufficient_scope\"",
                    ),
                )
            }
            _ => {}
        }
        if action == "stats" {
            return (action, self.stats());
        }
        let user = match percent_encoding::percent_decode_str(parts[1]).decode_utf8() {
            Ok(u) if !u.is_empty() && u.len() <= self.max_user_len => u,
            _ => {
                return (
                    action,
                    Reply::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_user",
                        "the user is a percent-encoded, non-empty UTF-8 id no longer than identity.max_len",
                    ),
                )
            }
        };
        let reply = match (action, parts.get(3)) {
            ("list", _) => self.list(&user).await,
            ("set_limit", _) => self.set_rule(&user, RuleKind::Limit, body).await,
            ("clear_limit", _) => self.clear_rule(&user, RuleKind::Limit).await,
            ("block", _) => self.set_rule(&user, RuleKind::Block, body).await,
            ("unblock", _) => self.clear_rule(&user, RuleKind::Block).await,
            ("end_all", _) => self.end_all(&user).await,
            (_, Some(id)) => match uuid::Uuid::parse_str(id) {
                Ok(id) => self.end(&user, id).await,
                Err(_) => Reply::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_stream_id",
                    "a stream id is a UUID",
                ),
            },
            _ => not_found(),
        };
        if write {
            info!(
                target: "streamgate::admin",
                "{action} user={} stream={} status={}",
                self.tags.tag(&user),
                parts.get(3).copied().unwrap_or("*"),
                reply.status.as_u16()
            );
        }
        (action, reply)
    }

    fn stats(&self) -> Reply {
        #[derive(Serialize)]
        struct Counts {
            active_streams: i64,
            inflight_requests: i64,
        }
        Reply::json(
            StatusCode::OK,
            Counts {
                active_streams: self.stats.active_streams.get(),
                inflight_requests: self.stats.inflight_requests.get(),
            },
        )
    }

    async fn list(&self, user: &str) -> Reply {
        let user_rules = match self.store.rules(user).await {
            Ok(r) => r.into(),
            Err(e) => return store_failed(&e),
        };
        match self.store.list(user).await {
            Ok(leases) => Reply::json(
                StatusCode::OK,
                Listing {
                    user,
                    streams: leases
                        .into_iter()
                        .map(|l| Lease {
                            id: l.id.to_string(),
                            opened: l.opened_unix_ms.map(rfc3339),
                            last_renewed: l.renewed_unix_ms.map(rfc3339),
                            in_flight: l.expires_in.is_none()
                                || self.inflight.count(user, l.id) > 0,
                            expires_in_ms: l
                                .expires_in
                                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                            device: l.device,
                            served_by: l.served_by,
                        })
                        .collect(),
                    rules: user_rules,
                },
            ),
            Err(e) => store_failed(&e),
        }
    }

    async fn end(&self, user: &str, id: StreamId) -> Reply {
        let ended = self
            .inflight
            .end(user, id, CUT_WAIT, self.end_for_good(user, id))
            .await;
        match ended {
            Ok(true) => Reply::no_content(),
            Ok(false) => Reply::error(
                StatusCode::NOT_FOUND,
                "stream_not_found",
                "no active stream with this id for this user",
            ),
            Err(e) => store_failed(&e),
        }
    }

    async fn end_all(&self, user: &str) -> Reply {
        #[derive(Serialize)]
        struct Ended {
            ended: usize,
        }
        let leases = match self.store.list(user).await {
            Ok(l) => l,
            Err(e) => return store_failed(&e),
        };
        let mut ended = 0;
        for l in leases {
            match self
                .inflight
                .end(user, l.id, CUT_WAIT, self.end_for_good(user, l.id))
                .await
            {
                Ok(true) => ended += 1,
                Ok(false) => {}
                Err(e) => return store_failed(&e),
            }
        }
        Reply::json(StatusCode::OK, Ended { ended })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_owned());
        let auth = req.headers.get(header::AUTHORIZATION).cloned();
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(reply) => {
                self.requests
                    .with_label_values(&["other", reply.status.as_str()])
                    .inc();
                return reply.into_response();
            }
        };
        let (action, reply) = self.handle(&method, &path, auth.as_ref(), &body).await;
        self.requests
            .with_label_values(&[action, reply.status.as_str()])
            .inc();
        reply.into_response()
    }
}
