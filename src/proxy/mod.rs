//! The Pingora proxy phases: where each request is answered, admitted, or forwarded.
//!
//! `request_filter` is a short dispatcher that returns `Ok(true)` exactly when it has
//! written the response (health, readiness, refusals); admitted requests carry a
//! [`LeaseHold`] in their context that `logging`, which Pingora runs for every request,
//! releases with the request's outcome. Shared state (store, policy, metrics) lives in
//! [`StreamGate`]; per-request state in [`RequestCtx`].

mod admit;
pub mod answer;
mod build;
mod ctx;
mod decide;
mod ending;
pub mod failure;
pub mod manifests;
pub mod respond;
mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, Method};
use log::warn;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use self::answer::Answer;
pub use self::ctx::RequestCtx;
use self::ending::hold_failed;
use crate::access_log::AccessLog;
use crate::config::{Config, OtherPaths};
use crate::drain::Drain;
use crate::framing;
use crate::head_limits;
use crate::identity::{IdentityRules, UserTags};
use crate::inflight::StreamInflight;
use crate::manifest::Tagger;
use crate::metrics::{Metrics, StoreOp};
use crate::reload;
use crate::routing::{self, AmbiguousPath, Route};
use crate::store::{CutReason, Gone, GoneReason, StoreError, StreamStore};

/// Methods a watch route serves: fetches, heartbeats, `DELETE` to end a stream, and
/// `HEAD` and `OPTIONS` (a probe and a browser's CORS preflight: forwarded without
/// identity, opening nothing).
const WATCH_METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
];

/// Upstream connection settings, applied to every peer.
#[derive(Debug, Clone)]
struct UpstreamTimeouts {
    connect: Duration,
    read: Duration,
    write: Duration,
    idle: Duration,
}

/// The proxy: everything shared by all requests.
pub struct StreamGate {
    /// Routes and the limit policy: what a reload swaps (read once per request).
    live: reload::Shared,
    identity: IdentityRules,
    /// Header names as configured, so responses keep the operator's spelling.
    session_header_case: bytes::Bytes,
    stream_header_case: bytes::Bytes,
    store: Arc<dyn StreamStore>,
    metrics: Metrics,
    upstreams: Arc<crate::upstream::Upstreams>,
    timeouts: UpstreamTimeouts,
    other_paths: OtherPaths,
    downstream_read_timeout: Duration,
    downstream_write_timeout: Duration,
    pipelining: bool,
    forwarded_for: bool,
    cors: respond::Cors,
    tagger: Tagger,
    max_manifest_size: usize,
    /// `server.max_request_head` (HTTP/2 heads; HTTP/1 ones are bounded as they arrive).
    max_request_head: usize,
    redirect_manifests: bool,
    inflight: Arc<StreamInflight>,
    drain: Arc<Drain>,
    access_log: AccessLog,
    /// `identity.echo`: send the session id back on admitted answers.
    echo_session: bool,
    /// `streams.device_header`, and the parameter that stands for it.
    device: Option<(HeaderName, String)>,
    /// How users appear in log lines (never their session id).
    user_tags: UserTags,
    /// `identity.plan_header`, believed only from `trusted_proxies`.
    plan_header: Option<HeaderName>,
    trusted_proxies: Vec<ipnet::IpNet>,
}

/// The error that stops a response whose stream was ended while it was served.
const STREAM_ENDED: &str = "StreamEnded";
/// The error of a response cut because its device opened a new stream.
const STREAM_REPLACED: &str = "StreamReplaced";
/// Dry run: what the limit would have done, to the client and the upstream.
pub(super) const LIMIT_STATUS: &str = "Stream-Limit-Status";
/// The error of a response cut because its stream was evicted.
const STREAM_EVICTED: &str = "StreamEvicted";

#[async_trait]
impl ProxyHttp for StreamGate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.drain.enter())
    }

    /// Per-connection settings, before anything reads the request (as Pingora's own
    /// `pipelining.rs` example does).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        head_limits::serving(session);
        session.set_read_timeout(Some(self.downstream_read_timeout));
        session.set_write_timeout(Some(self.downstream_write_timeout));
        // Pingora carries the setting to the connection's next request, and feeds it the
        // bytes a pipelining client sent early.
        session
            .as_downstream_mut()
            .set_pipelining_enabled(self.pipelining);
        Ok(())
    }

    /// Forward (`Ok(false)`), or write the one [`Answer`] decided for the request.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        match self.decide(session, ctx).await {
            Ok(admit::Forward) => Ok(false),
            Err(answer) => {
                answer.write(session, &self.cors).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.peer(session, ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Like nginx's proxy_next_upstream error: the next server, never one tried
        // already, up to `max_connect_tries`. Nothing of the request went upstream yet.
        if let Some(chosen) = ctx.chosen.take() {
            chosen.connect_failed();
            ctx.tried.push(chosen.index());
        }
        if ctx.tried.len() < self.upstreams.tries() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.prepare_upstream_request(session, upstream_request, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if !upstream_response.status.is_informational() {
            ctx.upstream_status = Some(status);
            if let Some(chosen) = &ctx.chosen {
                chosen.answered(status);
            }
        }
        // A stream whose opening request the upstream failed is given back before the
        // client sees the answer, so an immediate retry is admitted.
        if !upstream_response.status.is_informational()
            && ctx
                .hold
                .as_ref()
                .is_some_and(|h| h.gives_back(hold_failed(None, Some(status))))
        {
            if let Some(hold) = ctx.hold.take() {
                hold.release(true).await;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.drain.draining() {
            // Stopping: the client's next request goes to another instance.
            session.set_keepalive(None);
        }
        if let (Some(user), Some(id)) = (&ctx.user, ctx.stream_id) {
            // The request's own header values share its read buffer: echo them as they
            // are (no copy) when they already say what the response must.
            let sent = &session.req_header().headers;
            if self.echo_session {
                let user_value = match sent.get(&self.identity.session_header) {
                    Some(v) if v.as_bytes() == user.as_bytes() => v.clone(),
                    _ => HeaderValue::from_str(user)
                        .explain_err(ErrorType::InvalidHTTPHeader, |_| {
                            "session id is not a header value"
                        })?,
                };
                response.insert_header(self.session_header_case.clone(), user_value)?;
                let cache = response.headers.get(http::header::CACHE_CONTROL);
                if let Some(cc) = respond::private_cache_control(cache.map(|v| v.as_bytes())) {
                    response.insert_header(http::header::CACHE_CONTROL, cc)?;
                }
            }
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let id = id.hyphenated().encode_lower(&mut buf);
            let id_value = match sent.get(&self.identity.stream_header) {
                Some(v) if v.as_bytes() == id.as_bytes() => v.clone(),
                _ => HeaderValue::from_str(id).explain_err(ErrorType::InvalidHTTPHeader, |_| {
                    "stream id is not a header value"
                })?,
            };
            response.insert_header(self.stream_header_case.clone(), id_value)?;
            if let Some(status) = &ctx.limit_status {
                response.insert_header(LIMIT_STATUS, status.clone())?;
            }
            if let Some(evicted) = ctx.evicted {
                // An opaque code of the stream this one replaced (its id's first 8 hex
                // digits): enough for an app to say "playing here stopped another screen".
                let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
                let code = &evicted.simple().encode_lower(&mut buf)[..8];
                response.insert_header("Stream-Evicted", code.to_owned())?;
            }
            if session.req_header().method != Method::HEAD {
                let path = session.req_header().uri.path();
                match manifests::begin(
                    response,
                    path,
                    session.is_http2(),
                    id,
                    self.max_manifest_size,
                )? {
                    Ok(m) => ctx.manifest = Some(m),
                    Err(skipped) => ctx.manifest_skipped = skipped,
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(why) = ctx.slot.as_ref().and_then(|s| s.cut()) {
            // The stream was ended (`DELETE`, the admin API) or evicted, here or on another
            // instance: the rest of this response is not served, and the client sees the
            // connection close. The access line's error says which.
            *body = None;
            ctx.cut = Some(why);
            return match why {
                CutReason::Ended => {
                    Error::e_explain(ErrorType::Custom(STREAM_ENDED), "the stream was ended")
                }
                CutReason::Evicted => {
                    Error::e_explain(ErrorType::Custom(STREAM_EVICTED), "the stream was evicted")
                }
                CutReason::Replaced => Error::e_explain(
                    ErrorType::Custom(STREAM_REPLACED),
                    "the stream's device opened another",
                ),
            };
        }
        if let Some(m) = ctx.manifest.as_mut() {
            m.on_body(&self.tagger, body, end_of_stream);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let f = failure::classify(e.etype(), e.esource());
        let ended = matches!(
            e.etype(),
            ErrorType::Custom(STREAM_ENDED)
                | ErrorType::Custom(STREAM_EVICTED)
                | ErrorType::Custom(STREAM_REPLACED)
        );
        // Our own line instead of Pingora's ERROR (`suppress_error_log`): stable fields, the
        // path without its query, and a client that left is not an error.
        {
            let req = session.req_header();
            let level = if f.status == 0 || ended {
                log::Level::Debug
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "proxy failed: {} ({:?}, {}) status={} method={} path={} route={}",
                e.etype().as_str(),
                e.esource(),
                e.root_cause(),
                f.status,
                req.method,
                req.uri.path(),
                ctx.route.label()
            );
        }
        // Release before answering, so a client retrying at once finds its slot free.
        if let Some(hold) = ctx.hold.take() {
            hold.release(hold_failed(Some(e), ctx.upstream_status))
                .await;
        }
        // A stream cut before its response began (evicted, replaced or ended while its
        // first request waited for the origin): the client is told so, not a 500.
        if let (true, Some(why), None) = (ended, ctx.cut, session.response_written()) {
            let reason = match why {
                CutReason::Evicted => GoneReason::Evicted,
                CutReason::Ended | CutReason::Replaced => GoneReason::Ended,
            };
            let gone = Answer::Gone(Gone {
                reason,
                at_unix_ms: crate::store::unix_ms(),
            });
            // As after any failed proxying the connection is not reused: say so in the
            // answer, or a keep-alive client sends its next request into a closing socket.
            session.set_keepalive(None);
            if let Err(we) = gone.write(session, &self.cors).await {
                warn!("could not send the 410 response: {we}");
            }
            return FailToProxy {
                error_code: 410,
                can_reuse_downstream: false,
            };
        }
        // Once the response header is out, the only honest signal left is closing.
        let can_write = session.response_written().is_none() && f.status != 0;
        if can_write {
            // The connection is not reused after a failure (`Answer::closes`): said in the
            // answer, or a keep-alive client sends its next request into a closing socket.
            if let Err(we) = Answer::Upstream(f).write(session, &self.cors).await {
                warn!("could not send the {} error response: {we}", f.status);
            }
        }
        FailToProxy {
            error_code: f.status,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's own error lines are replaced by the one `fail_to_proxy` writes.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// What Pingora's own error lines name a request by: method and path, without the
    /// query (which carries stream ids, and would carry tokens).
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish(session, e, ctx).await;
        head_limits::idle(session);
    }
}
