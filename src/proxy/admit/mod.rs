//! Admission: who is asking, for which stream, and whether it may be served.
//!
//! [`StreamGate::admit`] takes a watch request's head and the context, asks the store, and
//! either lets the request through (holding its stream in the context) or returns the
//! [`Answer`] to write instead. It never touches the socket, so it is unit-tested without
//! one (`tests` below); `request_filter` writes the answer.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use log::warn;
use pingora::http::RequestHeader;

use super::answer::Answer;
use super::{RequestCtx, StreamGate};
use crate::identity::{IdentityError, StreamId};
use crate::jwt::{Principal, TokenError};
use crate::lease::{HoldKind, LeaseHold};
use crate::metrics::{Decision, StoreOp};
use crate::policy::Allowance;
use crate::store::{AtLimit, CutReason, DeviceKey, OpenWith, Opened, StoreError};

/// How long a `DELETE` waits for the ended stream's requests in flight to stop. They stop
/// at their next body chunk; one whose upstream sends nothing stops when it next does.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// The request goes upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward;

impl StreamGate {
    fn hold(&self, ctx: &mut RequestCtx, user: &Arc<str>, id: StreamId, kind: HoldKind) {
        ctx.stream_id = Some(id);
        ctx.hold = Some(LeaseHold::new(
            self.store.clone(),
            user.clone(),
            id,
            kind,
            self.metrics.inflight_gauge(),
            Some(self.inflight.clone()),
        ));
    }

    /// Record the decision in the context; the logging phase counts it (`ending.rs`).
    fn decided(&self, ctx: &mut RequestCtx, d: Decision) {
        ctx.decision = Some(d);
    }

    /// The store failed: counted, logged, and the answer for it.
    fn store_failed(&self, e: StoreError) -> Answer {
        self.metrics.store_error(&e);
        warn!("stream store failed: {e}");
        Answer::Store(e)
    }

    /// The store failed while admitting: fail open (forward without a lease, under a
    /// fresh stream id) or closed, as the policy says.
    fn admission_failed(&self, ctx: &mut RequestCtx, e: StoreError) -> Result<Forward, Answer> {
        if (ctx.dry_run || self.live.load().policy.fail_open()) && !matches!(e, StoreError::Full) {
            self.metrics.store_error(&e);
            warn!("stream store failed, admitting without a lease: {e}");
            ctx.stream_id = Some(uuid::Uuid::new_v4());
            self.decided(ctx, Decision::FailOpen);
            return Ok(Forward);
        }
        Err(self.store_failed(e))
    }

    /// Header identity: the plan a trusted gateway named (`identity.plan_header` from
    /// `identity.trusted_proxies`); anyone else's is ignored (and removed upstream).
    fn plan_from_header(&self, req: &RequestHeader, ctx: &RequestCtx) -> Option<Arc<str>> {
        let name = self.plan_header.as_ref()?;
        let value = req.headers.get(name)?;
        if !ctx.trusted_client {
            self.metrics.untrusted_plan_header();
            return None;
        }
        let v = value.to_str().ok()?.trim();
        (!v.is_empty() && v.len() <= 64).then(|| Arc::from(v))
    }

    /// A watch-route request: identify, then end, continue, open or refuse its stream.
    pub(super) async fn admit(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Forward, Answer> {
        let live = self.live.load_full();
        let principal = match &live.jwt {
            None => Principal {
                user: Arc::from(
                    self.identity
                        .session_id(&req.headers)
                        .map_err(Answer::Identity)?,
                ),
                plan: self.plan_from_header(req, ctx),
                limit: None,
                forward: None,
            },
            Some(jwt) => {
                let Some(token) = jwt.find_token(req) else {
                    jwt.refused(TokenError::Missing);
                    return Err(Answer::Token(TokenError::Missing));
                };
                jwt.authenticate(token).await.map_err(Answer::Token)?
            }
        };
        ctx.forward = principal.forward.clone();
        ctx.plan = live.policy.plan_label(principal.plan.as_ref());
        let user = principal.user.clone();
        let (stream, via) = self
            .identity
            .stream_of(&req.headers, req.uri.query())
            .map_err(Answer::Identity)?;
        ctx.via = via;
        ctx.user = Some(user.clone());

        if req.method == Method::DELETE {
            return Err(self.end_stream(ctx, &user, stream).await);
        }

        // Pure policy, decided before the store is asked: a dry run fails open however the
        // store fails. A plan refusal is answered only for an open (below).
        let allowance = live
            .policy
            .allowance(principal.plan.as_ref(), principal.limit);
        ctx.dry_run = allowance.as_ref().is_ok_and(|a| a.dry_run);
        ctx.device = self.device_of(req, &user);

        if let Some(id) = stream {
            // One stream, one player: a stream with the most requests in flight already is
            // busy, whatever the store would say.
            let Some(slot) = self.inflight.enter(&user, id) else {
                ctx.stream_id = Some(id);
                self.decided(ctx, Decision::Busy);
                return Err(Answer::Busy);
            };
            ctx.slot = Some(slot);
            match self
                .timed(StoreOp::Renew, self.store.renew(&user, id))
                .await
            {
                Ok(true) => {
                    self.hold(ctx, &user, id, HoldKind::Renewed);
                    self.decided(ctx, Decision::Renewed);
                    return Ok(Forward);
                }
                // Unknown or expired for this user (ids are only looked up within their
                // user): the player comes back with URLs naming it, so it is opened again
                // under the same id, if the user is under the limit, unless the id was
                // evicted or ended for good (a kick is not undone by the next segment).
                Ok(false) => match self.store.gone(&user, id).await {
                    Ok(None) => {}
                    Ok(Some(gone)) => {
                        ctx.stream_id = Some(id);
                        self.decided(ctx, Decision::Gone);
                        return Err(Answer::Gone(gone));
                    }
                    Err(e) => return self.admission_failed(ctx, e),
                },
                Err(e) => return self.admission_failed(ctx, e),
            }
        }

        let allowance = allowance.map_err(Answer::Plan)?;
        let limit = allowance.limit;
        let opened = self
            .open_under(ctx, &user, &allowance, live.policy.shadow_limit(), stream)
            .await;
        let opened = match opened {
            Ok(Opened::Evicted { id, evicted }) => {
                // Its requests in flight here stop now; the store told the other instances.
                self.inflight.cut(&user, evicted, CutReason::Evicted);
                ctx.evicted = Some(evicted);
                Ok(Opened::Admitted(id))
            }
            Ok(Opened::Replaced { id, replaced }) => {
                self.inflight.cut(&user, replaced, CutReason::Replaced);
                ctx.replaced = true;
                Ok(Opened::Admitted(id))
            }
            other => other,
        };
        match opened {
            Ok(Opened::Admitted(id)) => {
                self.hold(ctx, &user, id, HoldKind::Opened);
                if stream.is_none() && self.redirect_manifests {
                    if let Some(location) = self.session_url(req, id) {
                        return Err(self.redirect(ctx, &user, id, location).await);
                    }
                }
                let d = if let Some(would) = ctx.would {
                    if stream.is_none() {
                        ctx.slot = self.inflight.enter(&user, id);
                    }
                    would
                } else if ctx.evicted.is_some() || ctx.replaced {
                    if stream.is_none() {
                        ctx.slot = self.inflight.enter(&user, id);
                    }
                    if ctx.replaced {
                        Decision::Replaced
                    } else {
                        Decision::Evicted
                    }
                } else if stream.is_some() {
                    Decision::Resumed
                } else {
                    // A fresh id: its first request is the only one in flight.
                    ctx.slot = self.inflight.enter(&user, id);
                    Decision::Admitted
                };
                self.decided(ctx, d);
                Ok(Forward)
            }
            Ok(Opened::Renewed(id)) => {
                self.hold(ctx, &user, id, HoldKind::Renewed);
                self.decided(ctx, Decision::Renewed);
                Ok(Forward)
            }
            Ok(
                refusal @ (Opened::Rejected {
                    active,
                    retry_after,
                }
                | Opened::CoolingDown {
                    active,
                    retry_after,
                }),
            ) => {
                let d = match refusal {
                    Opened::CoolingDown { .. } => Decision::CooldownRefused,
                    _ => Decision::Rejected,
                };
                self.decided(ctx, d);
                Err(Answer::LimitExceeded {
                    limit,
                    active,
                    retry_after,
                    plan: allowance.plan,
                    status: live.policy.limit_status(),
                })
            }
            Ok(Opened::Blocked { retry_after }) => {
                self.decided(ctx, Decision::Blocked);
                Err(Answer::UserBlocked { retry_after })
            }
            // Mapped to an admission above.
            Ok(Opened::Evicted { .. } | Opened::Replaced { .. }) => Err(Answer::Store(
                StoreError::Protocol("an eviction was not admitted".into()),
            )),
            Err(e) => self.admission_failed(ctx, e),
        }
    }

    /// Where a manifest request that opened a stream without naming one is sent: the same
    /// URL with the stream parameter. A player reloads a live playlist from the URL it was
    /// given, which has no stream id; after the redirect that URL is the one it holds (the
    /// session-URL pattern of ad-insertion services). `None`: not a manifest by its path.
    fn session_url(&self, req: &RequestHeader, id: StreamId) -> Option<HeaderValue> {
        if req.method != Method::GET {
            return None;
        }
        let path = req.uri.path().to_ascii_lowercase();
        if !path.ends_with(".m3u8") && !path.ends_with(".mpd") {
            return None;
        }
        let target = req.uri.path_and_query()?.as_str();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let tagged = self
            .tagger
            .tag(target, id.hyphenated().encode_lower(&mut buf))?;
        HeaderValue::from_str(&tagged).ok()
    }

    /// `302` to the stream's own URL. The lease stays, held for the TTL: the redirected
    /// request renews it.
    async fn redirect(
        &self,
        ctx: &mut RequestCtx,
        user: &str,
        id: StreamId,
        location: HeaderValue,
    ) -> Answer {
        if let Some(hold) = ctx.hold.take() {
            hold.release(false).await;
        }
        let d = match (ctx.evicted, ctx.replaced) {
            (Some(_), _) => Decision::Evicted,
            (None, true) => Decision::Replaced,
            (None, false) => Decision::Admitted,
        };
        self.decided(ctx, d);
        // As on every admitted answer: who, and which stream.
        let mut echo = Vec::with_capacity(2);
        if self.echo_session {
            if let Ok(v) = HeaderValue::from_str(user) {
                echo.push((self.identity.session_header.clone(), v));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
            echo.push((self.identity.stream_header.clone(), v));
        }
        Answer::Redirect { location, echo }
    }

    /// `DELETE` on a watch route: end the named stream now.
    async fn end_stream(
        &self,
        ctx: &mut RequestCtx,
        user: &str,
        stream: Option<StreamId>,
    ) -> Answer {
        let Some(id) = stream else {
            let header = self.identity.stream_header.to_string();
            return Answer::Identity(IdentityError::StreamIdRequired(header));
        };
        ctx.stream_id = Some(id);
        let end_lease = self.timed(StoreOp::End, self.store.end(user, id));
        match self.inflight.end(user, id, CUT_WAIT, end_lease).await {
            Ok(true) => {
                self.decided(ctx, Decision::Ended);
                Answer::Ended
            }
            Ok(_) => Answer::StreamNotFound,
            Err(e) => self.store_failed(e),
        }
    }
}

mod open;
#[cfg(test)]
mod tests;
