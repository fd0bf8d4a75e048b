//! When a watch response is a manifest to rewrite, and the body buffered to do it.
//!
//! A manifest is held whole (it is small: `streams.max_manifest_size`, 4 MiB by default)
//! and rewritten at its end by [`crate::manifest`]; everything else, segments included,
//! streams through untouched. The rewritten body's length differs, so the response goes out
//! chunked on HTTP/1.1 (Pingora's own switch to chunked runs before `response_filter`), and
//! since it now names one viewer's stream it is marked `Cache-Control: private` with a
//! weak `ETag`, so no shared cache hands it to another viewer.

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use log::warn;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::manifest::{Encoding, Kind, Tagger};

/// What became of a manifest, for the metric and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Rewritten,
    /// Larger than `streams.max_manifest_size`: sent unchanged.
    TooLarge,
    /// Not parseable as its kind, or in an encoding we cannot decode: sent unchanged.
    Unchanged,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Rewritten, Outcome::TooLarge, Outcome::Unchanged];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Rewritten => "rewritten",
            Outcome::TooLarge => "too_large",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// A manifest response in progress.
pub struct ManifestBody {
    pub kind: Kind,
    encoding: Encoding,
    id: String,
    max: usize,
    buf: BytesMut,
    /// Gave up buffering (too large): the rest streams through.
    passing: bool,
    pub outcome: Option<Outcome>,
}

/// Start rewriting `response` if it is a manifest: adjust its headers and return the body
/// state. `None` leaves the response alone, or (with `Some(TooLarge)`) says why it was.
pub fn begin(
    response: &mut ResponseHeader,
    path: &str,
    h2: bool,
    id: &str,
    max: usize,
) -> Result<std::result::Result<ManifestBody, Option<(Kind, Outcome)>>> {
    let status = response.status.as_u16();
    if status != 200 && status != 206 {
        return Ok(Err(None));
    }
    let header = |name| response.headers.get(name).map(HeaderValue::as_bytes);
    let Some(kind) = Kind::of(header(http::header::CONTENT_TYPE), path) else {
        return Ok(Err(None));
    };
    // Players (ffmpeg among them) ask for `Range: bytes=0-`, and origins answer `206` with
    // the whole body: that one is rewritten and sent as the `200` it really is. A true part
    // of a manifest cannot be rewritten on its own.
    if status == 206 && !whole_range(header(http::header::CONTENT_RANGE)) {
        return Ok(Err(Some((kind, Outcome::Unchanged))));
    }
    let Some(encoding) = Encoding::of(header(http::header::CONTENT_ENCODING)) else {
        return Ok(Err(Some((kind, Outcome::Unchanged))));
    };
    let length = header(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(0) => return Ok(Err(None)),
        Some(n) if n > max => {
            warn!(
                "a {} manifest of {n} bytes is over streams.max_manifest_size ({max}): \
                 sent unchanged, its players will open a stream per request",
                kind.label()
            );
            return Ok(Err(Some((kind, Outcome::TooLarge))));
        }
        _ => {}
    }
    if status == 206 {
        response.set_status(200)?;
        response.remove_header(&http::header::CONTENT_RANGE);
    }
    response.remove_header(&http::header::CONTENT_LENGTH);
    response.remove_header(&http::header::ACCEPT_RANGES);
    if !h2 {
        response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    if let Some(etag) = response.headers.get(http::header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                response.insert_header(http::header::ETAG, v)?;
            }
        }
    }
    let cc = private(response.headers.get(http::header::CACHE_CONTROL));
    response.insert_header(http::header::CACHE_CONTROL, cc)?;
    Ok(Ok(ManifestBody {
        kind,
        encoding,
        id: id.to_string(),
        max,
        buf: BytesMut::with_capacity(length.unwrap_or(16 * 1024)),
        passing: false,
        outcome: None,
    }))
}

/// Whether a `Content-Range` (`bytes 0-99/100`) covers the whole body.
fn whole_range(v: Option<&[u8]>) -> bool {
    let Some(v) = v.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let Some((range, total)) = v
        .trim()
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
    else {
        return false;
    };
    let (Some((first, last)), Ok(total)) = (range.split_once('-'), total.parse::<u64>()) else {
        return false;
    };
    first == "0" && total > 0 && last.parse::<u64>().ok() == Some(total - 1)
}

/// `Cache-Control` for one viewer's manifest: `private`, without what would let a shared
/// cache keep it (`public`, `s-maxage`); the rest (`max-age`, `no-cache`...) kept.
fn private(sent: Option<&HeaderValue>) -> HeaderValue {
    let sent = sent.and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut out: Vec<&str> = sent
        .split(',')
        .map(str::trim)
        .filter(|d| {
            let name = d
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            !d.is_empty() && name != "public" && name != "s-maxage" && name != "private"
        })
        .collect();
    out.insert(0, "private");
    HeaderValue::from_str(&out.join(", ")).unwrap_or(HeaderValue::from_static("private"))
}

impl ManifestBody {
    /// Take one chunk of the body; at its end, put the rewritten manifest in its place.
    pub fn on_body(&mut self, tagger: &Tagger, body: &mut Option<Bytes>, end: bool) {
        if self.passing {
            return;
        }
        if let Some(chunk) = body.take() {
            self.buf.extend_from_slice(&chunk);
        }
        if self.buf.len() > self.max {
            warn!(
                "a {} manifest grew over streams.max_manifest_size ({}): sent unchanged",
                self.kind.label(),
                self.max
            );
            self.passing = true;
            self.outcome = Some(Outcome::TooLarge);
            *body = Some(self.buf.split().freeze());
            return;
        }
        if !end {
            return;
        }
        let raw = self.buf.split().freeze();
        match tagger.rewrite_encoded(self.kind, self.encoding, &raw, &self.id, self.max) {
            Ok(out) => {
                self.outcome = Some(Outcome::Rewritten);
                *body = Some(Bytes::from(out));
            }
            Err(e) => {
                warn!("a {} manifest was sent unchanged: {e}", self.kind.label());
                self.outcome = Some(Outcome::Unchanged);
                *body = Some(raw);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_range_over_the_whole_body_is_rewritten() {
        assert!(whole_range(Some(b"bytes 0-99/100")));
        assert!(!whole_range(Some(b"bytes 0-98/100")));
        assert!(!whole_range(Some(b"bytes 1-99/100")));
        assert!(!whole_range(Some(b"bytes 0-99/*")));
        assert!(!whole_range(None));
        let mut r = response("application/vnd.apple.mpegurl", Some(100));
        r.set_status(206).unwrap();
        r.insert_header("content-range", "bytes 0-99/100").unwrap();
        assert!(matches!(
            begin(&mut r, "/a.m3u8", false, "id", 1000),
            Ok(Ok(_))
        ));
        assert_eq!(r.status.as_u16(), 200);
        assert!(r.headers.get("content-range").is_none());
    }

    #[test]
    fn cache_control_becomes_private() {
        let p = |v: Option<&'static str>| {
            private(v.map(HeaderValue::from_static).as_ref())
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(p(None), "private");
        assert_eq!(p(Some("public, max-age=2")), "private, max-age=2");
        assert_eq!(p(Some("max-age=1, s-maxage=10")), "private, max-age=1");
        assert_eq!(p(Some("no-cache")), "private, no-cache");
        assert_eq!(p(Some("private")), "private");
    }

    fn response(ct: &str, len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        if let Some(n) = len {
            r.insert_header("content-length", n).unwrap();
        }
        r.insert_header("etag", "\"abc\"").unwrap();
        r
    }

    #[test]
    fn headers_of_a_rewritten_manifest() {
        let mut r = response("application/vnd.apple.mpegurl", Some(30));
        let m = begin(&mut r, "/watch/a.m3u8", false, "id", 100).unwrap();
        assert!(m.is_ok());
        assert!(r.headers.get("content-length").is_none());
        assert_eq!(r.headers["transfer-encoding"], "chunked");
        assert_eq!(r.headers["etag"], "W/\"abc\"");
        assert_eq!(r.headers["cache-control"], "private");
        // Too large by its length: untouched.
        let mut r = response("application/dash+xml", Some(101));
        let m = begin(&mut r, "/watch/a.mpd", false, "id", 100).unwrap();
        assert!(matches!(m, Err(Some((Kind::Dash, Outcome::TooLarge)))));
        assert_eq!(r.headers["content-length"], "101");
        // A segment: untouched.
        let mut r = response("video/mp2t", Some(10));
        assert!(matches!(
            begin(&mut r, "/watch/a.ts", false, "id", 100),
            Ok(Err(None))
        ));
    }

    #[test]
    fn a_body_that_outgrows_the_limit_streams_through_unchanged() {
        let tagger = Tagger::new("sg_stream", &[]);
        let mut r = response("application/vnd.apple.mpegurl", None);
        let Ok(Ok(mut m)) = begin(&mut r, "/watch/a.m3u8", false, "id", 16) else {
            panic!("not begun");
        };
        let mut b = Some(Bytes::from_static(b"#EXTM3U\n"));
        m.on_body(&tagger, &mut b, false);
        assert!(b.is_none(), "held");
        let mut b = Some(Bytes::from_static(b"#EXTINF:2,\na.ts\n"));
        m.on_body(&tagger, &mut b, false);
        assert_eq!(b.unwrap(), "#EXTM3U\n#EXTINF:2,\na.ts\n");
        assert_eq!(m.outcome, Some(Outcome::TooLarge));
        let mut b = Some(Bytes::from_static(b"b.ts\n"));
        m.on_body(&tagger, &mut b, true);
        assert_eq!(b.unwrap(), "b.ts\n", "the rest passes as it comes");
    }
}
