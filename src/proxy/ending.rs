//! How a request ends, which every request reaches (Pingora's `logging` phase): whether
//! its stream goes back, what is counted, and the access-log line.

use log::info;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorSource;

use super::{failure, RequestCtx, StreamGate};
use crate::metrics::Decision;

/// Whether a request failed in a way that gives an opened stream back at once: any failure
/// of the upstream or of the proxy. A client that went away keeps its lease (the TTL frees
/// it).
pub(super) fn hold_failed(e: Option<&Error>, upstream_status: Option<u16>) -> bool {
    let client_gone = e.is_some_and(|e| *e.esource() == ErrorSource::Downstream);
    let upstream_failed = upstream_status.is_none_or(|s| s >= 500);
    !client_gone && (e.is_some() || upstream_failed)
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
                self.metrics
                    .upstream_errors
                    .with_label_values(&[kind])
                    .inc();
            }
        }
        if ctx.upstream_status.is_some_and(|s| s >= 500) {
            self.metrics
                .upstream_errors
                .with_label_values(&["status_5xx"])
                .inc();
        }
        if let Some(hold) = ctx.hold.take() {
            hold.release(hold_failed(e, ctx.upstream_status)).await;
        }
        let manifest = match &ctx.manifest {
            Some(m) => m.outcome.map(|o| (m.kind, o)),
            None => ctx.manifest_skipped,
        };
        if let Some((kind, outcome)) = manifest {
            self.metrics.manifest(kind, outcome);
        }
        let elapsed = ctx.start.elapsed();
        self.metrics.request_done(ctx.route, status, elapsed);
        let req = session.req_header();
        info!(
            target: "streamgate::access",
            "method={} path={} status={} route={} user={} stream={} via={} decision={} upstream_status={} duration_ms={:.3}{}",
            req.method,
            req.uri.path(),
            status,
            ctx.route.label(),
            ctx.user.as_deref().unwrap_or("-"),
            ctx.stream_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            ctx.via.label(),
            ctx.decision.map(Decision::label).unwrap_or("-"),
            ctx.upstream_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            elapsed.as_secs_f64() * 1000.0,
            e.map(|e| format!(" error=\"{}\"", e.etype().as_str())).unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!hold_failed(None, Some(404)));
        assert!(hold_failed(None, Some(503)), "upstream 5xx");
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
