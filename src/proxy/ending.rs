//! How a request ends, which every request reaches (Pingora's `logging` phase): whether
//! its stream goes back, what is counted, and the access-log line.

use std::time::SystemTime;

use pingora::prelude::*;
use pingora::proxy::Session;

use super::{failure, RequestCtx, StreamGate};
use crate::access_log::Record;
use crate::metrics::Decision;

/// Whether a request failed in a way that gives an opened stream back at once: an answer
/// that is not a success (2xx, or 304), whoever gave it (the upstream, or the proxy after
/// admitting), and any failure of the upstream or the proxy. A client that went away keeps
/// its lease (it may come back; the TTL frees it). `status` is what the client got, or the
/// upstream's status when nothing was written yet.
pub(super) fn hold_failed(e: Option<&Error>, status: Option<u16>) -> bool {
    match e {
        Some(e) => failure::classify(e.etype(), e.esource()).status != 0,
        None => !status.is_some_and(|s| (200..300).contains(&s) || s == 304),
    }
}

impl StreamGate {
    /// Release the request's hold with its outcome, count it, and log it.
    pub(super) async fn finish(&self, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let Some(err) = e {
            if let Some(kind) = failure::upstream_error_kind(err.etype(), err.esource()) {
                self.metrics.upstream_error(kind);
            }
        }
        if ctx.upstream_status.is_some_and(|s| s >= 500) {
            self.metrics.upstream_error("status_5xx");
        }
        if let Some(hold) = ctx.hold.take() {
            let answered = Some(status).filter(|&s| s != 0).or(ctx.upstream_status);
            hold.release(hold_failed(e, answered)).await;
        }
        let manifest = match &ctx.manifest {
            Some(m) => m.outcome.map(|o| (m.kind, o)),
            None => ctx.manifest_skipped,
        };
        if let Some((kind, outcome)) = manifest {
            self.metrics.manifest(kind, outcome);
        }
        if let Some(d) = ctx.decision {
            self.metrics.decision(d, ctx.plan.as_deref());
        }
        if let Some(why) = ctx.cut {
            self.metrics.stream_cut(why);
        }
        if ctx.shadow_refused {
            self.metrics.shadow_refusal();
        }
        let elapsed = ctx.start.elapsed();
        self.metrics.request_done(ctx.route, status, elapsed);
        let req = session.req_header();
        self.access_log.log(Record {
            at: SystemTime::now(),
            method: req.method.clone(),
            path: req.uri.path().to_string(),
            status,
            route: ctx.route.label(),
            user: ctx.user.as_deref().map(|u| self.user_tags.tag(u)),
            stream: ctx.stream_id,
            via: ctx.via.label(),
            decision: ctx.decision.map(Decision::label),
            upstream_status: ctx.upstream_status,
            duration: elapsed,
            error: e.map(|e| e.etype().as_str()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::ErrorSource;

    fn err(source: ErrorSource) -> Box<Error> {
        let mut e = Error::new(ErrorType::ConnectionClosed);
        match source {
            ErrorSource::Downstream => e.as_down(),
            ErrorSource::Upstream => e.as_up(),
            _ => {}
        }
        e
    }

    #[test]
    fn which_endings_give_an_opened_stream_back() {
        assert!(
            !hold_failed(None, Some(200)),
            "a served stream keeps its lease"
        );
        assert!(!hold_failed(None, Some(206)), "a range is a success");
        assert!(!hold_failed(None, Some(304)), "so is not modified");
        for refused in [302, 400, 403, 404, 410, 416, 429, 503] {
            assert!(
                hold_failed(None, Some(refused)),
                "{refused} is not watching"
            );
        }
        assert!(hold_failed(None, None), "nothing answered");
        let mut bad_request = Error::new(ErrorType::InvalidHTTPHeader);
        bad_request.as_down();
        assert!(
            hold_failed(Some(&bad_request), None),
            "a request the proxy refused after admitting it"
        );
        assert!(
            hold_failed(Some(&err(ErrorSource::Upstream)), Some(200)),
            "died mid-body"
        );
        assert!(
            hold_failed(Some(&err(ErrorSource::Upstream)), None),
            "unreachable"
        );
        assert!(
            !hold_failed(Some(&err(ErrorSource::Downstream)), Some(200)),
            "a client abort keeps the lease for the TTL"
        );
    }
}
