//! Requests refused before routing because a proxy must not pass them on: ambiguous message
//! framing (the request-smuggling shape) and oversized header sections (HTTP/1 heads are
//! bounded earlier, as they arrive, by [`crate::head_limits`]; this bounds HTTP/2's, with
//! the same `server.max_request_head`).
//!
//! Pingora already refuses what it cannot parse (a bare `400`, connection closed); these are
//! the requests it parses but a careful edge proxy (nginx, HAProxy) still refuses.

use pingora::http::RequestHeader;

/// Why a request's framing or size was refused: (status, error code, message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

/// Whether raw HTTP/1 header bytes carry a `Content-Length` field. Pingora drops
/// `Content-Length` from the parsed head when `Transfer-Encoding` is present (RFC 9112
/// 6.3), so the conflict is only visible in the raw bytes.
pub fn raw_has_content_length(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length:";
    raw.split(|b| *b == b'\n')
        .skip(1)
        .any(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
}

/// Check a parsed request head; `None` means it may proceed. `raw` gives the raw header
/// bytes when the session has them (HTTP/1); it is only called when `Transfer-Encoding`
/// is present.
pub fn check(
    req: &RequestHeader,
    max_header_bytes: usize,
    raw: impl FnOnce() -> Option<bytes::Bytes>,
) -> Option<Refusal> {
    let h = &req.headers;
    let has_te = h.contains_key(http::header::TRANSFER_ENCODING);
    if has_te
        && (h.contains_key(http::header::CONTENT_LENGTH)
            || raw().is_some_and(|r| raw_has_content_length(&r)))
    {
        return Some(Refusal {
            status: 400,
            code: "bad_request",
            message: "Transfer-Encoding and Content-Length together are ambiguous",
        });
    }
    // RFC 9112 3.2: a client MUST send Host in every HTTP/1.1 request; a server MUST
    // answer 400 to one without it.
    if req.version == http::Version::HTTP_11 && !h.contains_key(http::header::HOST) {
        return Some(Refusal {
            status: 400,
            code: "bad_request",
            message: "an HTTP/1.1 request needs a Host header",
        });
    }
    // One Content-Length of digits: a list ("5, 5") is framing a proxy must not guess at.
    let mut lengths = h.get_all(http::header::CONTENT_LENGTH).iter();
    let bad_length = lengths
        .next()
        .is_some_and(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
        || lengths.next().is_some();
    if bad_length {
        return Some(Refusal {
            status: 400,
            code: "bad_request",
            message: "Content-Length must be one number",
        });
    }
    let size: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > max_header_bytes {
        return Some(Refusal {
            status: 431,
            code: "request_header_fields_too_large",
            message: "the request line and headers are longer than this proxy accepts",
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 32 * 1024;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/watch", None).unwrap();
        r.append_header("Host", "test").unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn te_with_cl_is_refused() {
        let none = || None;
        let r = req(&[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]);
        assert_eq!(check(&r, MAX, none).map(|x| x.status), Some(400));
        assert_eq!(check(&req(&[("Content-Length", "5")]), MAX, none), None);
        let te = req(&[("Transfer-Encoding", "chunked")]);
        assert_eq!(check(&te, MAX, none), None);
        // Pingora removed Content-Length from the head, but the raw bytes still show it.
        let raw = || {
            Some(bytes::Bytes::from_static(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH: 5\r\n\r\n",
            ))
        };
        assert_eq!(check(&te, MAX, raw).map(|x| x.status), Some(400));
    }

    #[test]
    fn http11_without_host_and_listed_lengths_are_refused() {
        let mut no_host = RequestHeader::build("GET", b"/watch", None).unwrap();
        assert_eq!(
            check(&no_host, MAX, || None).map(|x| x.message),
            Some("an HTTP/1.1 request needs a Host header")
        );
        no_host.set_version(http::Version::HTTP_10);
        assert_eq!(
            check(&no_host, MAX, || None),
            None,
            "HTTP/1.0 may leave it out"
        );
        for bad in ["5, 5", "5,5", "", "+5", "0x5"] {
            assert_eq!(
                check(&req(&[("Content-Length", bad)]), MAX, || None).map(|x| x.status),
                Some(400),
                "{bad:?}"
            );
        }
        assert_eq!(check(&req(&[("Content-Length", "5")]), MAX, || None), None);
    }

    #[test]
    fn raw_content_length_is_found_only_as_a_field_name() {
        assert!(raw_has_content_length(
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\n"
        ));
        assert!(!raw_has_content_length(
            b"GET /content-length: HTTP/1.1\r\nX: content-length:\r\n"
        ));
    }

    #[test]
    fn oversized_headers_are_431() {
        let big = "a".repeat(MAX);
        assert_eq!(
            check(&req(&[("X-Big", &big)]), MAX, || None).map(|x| x.status),
            Some(431)
        );
        let fits = "a".repeat(MAX / 2);
        assert_eq!(check(&req(&[("X-Big", &fits)]), MAX, || None), None);
    }
}
