//! What a failed request turns into: an HTTP status and error code for the client, and a
//! label for the upstream-errors metric.
//!
//! Pingora reports failures as typed errors with a source (upstream, downstream, internal);
//! this module is the one place they are converted, the way nginx maps them: a refused or
//! broken upstream is `502`, an upstream that is too slow is `504`, a client that went away
//! gets nothing, a malformed request `400`, anything of our own `500` (still JSON).

use pingora::{ErrorSource, ErrorType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Status to answer with; `0` when the client is gone and nothing can be written.
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

/// Map a Pingora error to what the client sees.
pub fn classify(etype: &ErrorType, source: &ErrorSource) -> Failure {
    use ErrorType::*;
    let f = |status, code, message| Failure {
        status,
        code,
        message,
    };
    match (etype, source) {
        (HTTPStatus(s), _) | (CustomCode(_, s), _) => {
            f(*s, "http_error", "the request could not be served")
        }
        (ConnectTimedout, _) => f(
            504,
            "upstream_timeout",
            "the upstream did not accept the connection in time",
        ),
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => f(
            504,
            "upstream_timeout",
            "the upstream did not answer in time",
        ),
        (
            ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
            | TLSHandshakeFailure | TLSHandshakeTimedout | HandshakeError | InvalidCert,
            _,
        ) => f(
            502,
            "upstream_unavailable",
            "the upstream could not be reached",
        ),
        (_, ErrorSource::Upstream) => {
            f(502, "upstream_error", "the upstream failed while answering")
        }
        (
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
            ErrorSource::Downstream,
        ) => f(0, "client_gone", "the client went away"),
        (_, ErrorSource::Downstream) => f(400, "bad_request", "the request could not be read"),
        _ => f(
            500,
            "internal_error",
            "the proxy failed to serve the request",
        ),
    }
}

/// Label for `streamgate_upstream_errors_total{kind}`, when the error is the upstream's.
pub fn upstream_error_kind(etype: &ErrorType, source: &ErrorSource) -> Option<&'static str> {
    use ErrorType::*;
    match etype {
        ConnectTimedout => Some("connect_timeout"),
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError => Some("connect"),
        _ if *source != ErrorSource::Upstream => None,
        ReadTimedout | WriteTimedout => Some("timeout"),
        ConnectionClosed | ReadError | WriteError => Some("closed"),
        _ => Some("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_like_nginx() {
        let up = ErrorSource::Upstream;
        assert_eq!(classify(&ErrorType::ConnectRefused, &up).status, 502);
        assert_eq!(
            classify(&ErrorType::ConnectRefused, &up).code,
            "upstream_unavailable"
        );
        assert_eq!(classify(&ErrorType::ConnectTimedout, &up).status, 504);
        assert_eq!(classify(&ErrorType::ReadTimedout, &up).status, 504);
        assert_eq!(classify(&ErrorType::ConnectionClosed, &up).status, 502);
        assert_eq!(classify(&ErrorType::InvalidHTTPHeader, &up).status, 502);
    }

    #[test]
    fn client_failures_write_nothing_or_400() {
        let down = ErrorSource::Downstream;
        assert_eq!(classify(&ErrorType::ConnectionClosed, &down).status, 0);
        assert_eq!(classify(&ErrorType::ReadTimedout, &down).status, 0);
        assert_eq!(classify(&ErrorType::InvalidHTTPHeader, &down).status, 400);
    }

    #[test]
    fn internal_failures_are_500_and_statuses_pass_through() {
        assert_eq!(
            classify(&ErrorType::InternalError, &ErrorSource::Internal).status,
            500
        );
        assert_eq!(
            classify(&ErrorType::HTTPStatus(503), &ErrorSource::Internal).status,
            503
        );
    }

    #[test]
    fn upstream_error_kinds() {
        let up = ErrorSource::Upstream;
        assert_eq!(
            upstream_error_kind(&ErrorType::ConnectRefused, &up),
            Some("connect")
        );
        assert_eq!(
            upstream_error_kind(&ErrorType::ReadTimedout, &up),
            Some("timeout")
        );
        assert_eq!(
            upstream_error_kind(&ErrorType::ConnectionClosed, &up),
            Some("closed")
        );
        assert_eq!(
            upstream_error_kind(&ErrorType::ConnectionClosed, &ErrorSource::Downstream),
            None
        );
    }
}
