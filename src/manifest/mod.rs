//! Manifests, rewritten so that every URL in them carries the stream id.
//!
//! Off-the-shelf players (ffmpeg, hls.js, dash.js, Safari, ExoPlayer) never echo a custom
//! response header, but they do follow the URLs a playlist gives them, query and all. So
//! when an admitted watch response is an HLS playlist or a DASH MPD, each URI in it that
//! points back through this proxy (a relative one, or an absolute one to a host in
//! `streams.rewrite_hosts`) gets `?<param>=<stream id>`, and the player's next requests
//! renew the stream it already holds instead of opening new ones.
//!
//! Everything here is pure (bytes in, bytes out) and unit-tested in `tests.rs`; the proxy
//! decides *when* to rewrite ([`Kind::of`]) and buffers the body (`proxy::manifests`).

mod dash;
mod hls;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};

/// The manifest formats we rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hls,
    Dash,
}

impl Kind {
    /// Label for the manifests metric.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Hls => "hls",
            Kind::Dash => "dash",
        }
    }

    /// What a response is, from its media type, or from the path when the type is
    /// generic (absent, `application/octet-stream`, `text/plain`: origins that serve files
    /// by extension often know no better).
    pub fn of(content_type: Option<&[u8]>, path: &str) -> Option<Kind> {
        // Runs on every admitted response, segments included: compared in place, no
        // lowercased copies.
        let essence = content_type.map(|v| {
            let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
            v[..end].trim_ascii()
        });
        let is = |name: &str| essence.is_some_and(|e| e.eq_ignore_ascii_case(name.as_bytes()));
        if [
            "application/vnd.apple.mpegurl",
            "application/x-mpegurl",
            "audio/mpegurl",
            "audio/x-mpegurl",
        ]
        .iter()
        .any(|t| is(t))
        {
            return Some(Kind::Hls);
        }
        if is("application/dash+xml") {
            return Some(Kind::Dash);
        }
        let generic = essence.is_none_or(|e| e.is_empty())
            || [
                "application/octet-stream",
                "text/plain",
                "binary/octet-stream",
            ]
            .iter()
            .any(|t| is(t));
        if !generic {
            return None;
        }
        let ends = |ext: &str| {
            path.len() >= ext.len()
                && path.as_bytes()[path.len() - ext.len()..].eq_ignore_ascii_case(ext.as_bytes())
        };
        if ends(".m3u8") {
            Some(Kind::Hls)
        } else if ends(".mpd") {
            Some(Kind::Dash)
        } else {
            None
        }
    }
}

/// How a manifest body is encoded on the wire (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    /// `None` for an encoding we cannot rewrite through (the manifest goes unchanged).
    pub fn of(content_encoding: Option<&[u8]>) -> Option<Encoding> {
        let Some(v) = content_encoding else {
            return Some(Encoding::Identity);
        };
        let v = std::str::from_utf8(v).ok()?.trim().to_ascii_lowercase();
        match v.as_str() {
            "" | "identity" => Some(Encoding::Identity),
            "gzip" | "x-gzip" => Some(Encoding::Gzip),
            "br" => Some(Encoding::Brotli),
            _ => None,
        }
    }
}

/// Why a manifest was left as it came.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("not a {0} manifest")]
    NotAManifest(&'static str),
    #[error("manifest is not UTF-8")]
    NotUtf8,
    #[error("manifest XML: {0}")]
    Xml(String),
    #[error("manifest larger than streams.max_manifest_size once decoded")]
    TooLarge,
    #[error("manifest encoding: {0}")]
    Encoding(#[from] std::io::Error),
}

/// What to add to a URI, and which absolute URIs point back through this proxy.
#[derive(Debug, Clone)]
pub struct Tagger {
    /// The query parameter's name (`streams.stream_id_param`).
    pub param: String,
    /// Hosts (`host` or `host:port`, lowercase) whose absolute URIs are ours too.
    pub hosts: Vec<String>,
}

impl Tagger {
    pub fn new(param: &str, hosts: &[String]) -> Self {
        Self {
            param: param.to_string(),
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Rewrite a whole (decoded) manifest for stream `id`.
    pub fn rewrite(&self, kind: Kind, body: &[u8], id: &str) -> Result<Vec<u8>, RewriteError> {
        match kind {
            Kind::Hls => hls::rewrite(self, body, id),
            Kind::Dash => dash::rewrite(self, body, id),
        }
    }

    /// Rewrite a manifest as it came on the wire: decode, rewrite, encode again the same way.
    pub fn rewrite_encoded(
        &self,
        kind: Kind,
        encoding: Encoding,
        body: &[u8],
        id: &str,
        max: usize,
    ) -> Result<Vec<u8>, RewriteError> {
        match encoding {
            Encoding::Identity => self.rewrite(kind, body, id),
            Encoding::Gzip => {
                let plain = read_limited(flate2::read::MultiGzDecoder::new(body), max)?;
                let out = self.rewrite(kind, &plain, id)?;
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() + 64),
                    flate2::Compression::fast(),
                );
                enc.write_all(&out)?;
                Ok(enc.finish()?)
            }
            Encoding::Brotli => {
                let plain = read_limited(brotli::Decompressor::new(body, 4096), max)?;
                let out = self.rewrite(kind, &plain, id)?;
                let mut enc =
                    brotli::CompressorWriter::new(Vec::with_capacity(body.len() + 64), 4096, 5, 22);
                enc.write_all(&out)?;
                enc.flush()?;
                Ok(enc.into_inner())
            }
        }
    }

    /// Whether `uri` (as written in the manifest, unescaped) is fetched through this proxy.
    fn is_ours(&self, uri: &str) -> bool {
        // Most URIs in a manifest are plain relative paths (`seg1.ts`, `/v/a.m4s`): settled
        // in one pass over the bytes before the first delimiter, without a searcher.
        let b = uri.as_bytes();
        if b.first().is_some_and(|&c| c == b'/') && b.get(1) != Some(&b'/') {
            return true;
        }
        if !b
            .iter()
            .take_while(|&&c| !matches!(c, b'/' | b'?' | b'#'))
            .any(|&c| c == b':')
        {
            return !uri.trim().is_empty() && !uri.starts_with("//")
                || uri.starts_with("//") && self.host_is_ours(&uri[2..]);
        }
        let after_scheme = match scheme_len(uri) {
            Some(n) => {
                let scheme = uri[..n].to_ascii_lowercase();
                if scheme != "http" && scheme != "https" {
                    return false; // data:, skd:, blob:, ...
                }
                &uri[n + 1..]
            }
            None => uri,
        };
        let Some(net) = after_scheme.strip_prefix("//") else {
            // Relative (a path, `?query` or `#fragment` only): resolved against the
            // manifest's own URL, which came through us. `http:foo` is relative too.
            return !uri.trim().is_empty();
        };
        self.host_is_ours(net)
    }

    /// Whether the authority at the start of `net` (after `//`) is a listed host.
    fn host_is_ours(&self, net: &str) -> bool {
        if self.hosts.is_empty() {
            return false;
        }
        let authority = net.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority
            .rsplit('@')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let (host, port) = split_port(&authority);
        self.hosts.iter().any(|entry| match split_port(entry) {
            (h, None) => h == host,
            (h, p) => h == host && p == port,
        })
    }

    /// `uri` with the stream parameter added, keeping its query and fragment; `None` when
    /// the URI does not point back through this proxy.
    pub fn tag(&self, uri: &str, id: &str) -> Option<String> {
        let mut out = String::with_capacity(uri.len() + self.param.len() + id.len() + 2);
        self.tag_into(uri, id, &mut out).then_some(out)
    }

    /// [`Self::tag`], appended to `out` (no string of its own per URI); `false`, with
    /// nothing appended, when the URI is not ours.
    pub fn tag_into(&self, uri: &str, id: &str, out: &mut String) -> bool {
        if !self.is_ours(uri) {
            return false;
        }
        // One pass for both delimiters.
        let mut question = None;
        let mut hash = uri.len();
        for (i, &c) in uri.as_bytes().iter().enumerate() {
            if c == b'#' {
                hash = i;
                break;
            }
            if c == b'?' && question.is_none() {
                question = Some(i);
            }
        }
        let (rest, fragment) = uri.split_at(hash);
        match question.map(|q| (&rest[..q], &rest[q + 1..])) {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                // A stale id from an earlier rewrite (or the origin) is replaced, not doubled.
                let kept = strip_param(query, &self.param);
                out.push_str(&kept);
                if !kept.is_empty() {
                    out.push('&');
                }
            }
            None => {
                out.push_str(rest);
                out.push('?');
            }
        }
        out.push_str(&self.param);
        out.push('=');
        out.push_str(id);
        out.push_str(fragment);
        true
    }

    /// Bytes a rewrite of a manifest with `uris` URIs may add.
    fn growth(&self, uris: usize, id: &str) -> usize {
        uris * (self.param.len() + id.len() + 2)
    }
}

/// Length of a URI's scheme (`http` in `http://`), if it has one (RFC 3986 §3.1).
fn scheme_len(uri: &str) -> Option<usize> {
    let colon = uri.find(':')?;
    let scheme = &uri[..colon];
    let mut bytes = scheme.bytes();
    let first = bytes.next()?;
    (first.is_ascii_alphabetic() && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
        .then_some(colon)
}

/// `host[:port]` (IPv6 in brackets) into its host and port.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.starts_with('[') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    }
}

/// `query` without any `param=...` (or bare `param`) pairs, the rest byte for byte.
pub fn strip_param(query: &str, param: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for pair in query.split('&') {
        let name = pair.split('=').next().unwrap_or("");
        if name == param {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(pair);
    }
    out
}

/// Read a decoder to its end, refusing more than `max` bytes.
fn read_limited(r: impl Read, max: usize) -> Result<Vec<u8>, RewriteError> {
    let mut out = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(RewriteError::TooLarge);
    }
    Ok(out)
}
