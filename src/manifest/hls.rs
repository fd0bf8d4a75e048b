//! HLS playlists (RFC 8216 and its LL-HLS draft): line-based, so parsed directly.
//!
//! A line is a tag (`#EXT...`), a comment (`#...`), a URI, or blank. URI lines (segments,
//! variant playlists) and every quoted `URI="..."` attribute of a tag (`EXT-X-KEY`,
//! `EXT-X-SESSION-KEY`, `EXT-X-MAP`, `EXT-X-MEDIA`, `EXT-X-I-FRAME-STREAM-INF`,
//! `EXT-X-PART`, `EXT-X-PRELOAD-HINT`, `EXT-X-RENDITION-REPORT`, and any later tag that
//! names a URI the same way) get the stream parameter. Everything else, line endings and a
//! byte-order mark included, is copied byte for byte. `m3u8-rs` was not used: it parses
//! into types and writes its own spelling back, which drops or reorders what it does not
//! model, and a rewrite must change nothing but the URIs.

use super::{RewriteError, Tagger};

const BOM: &str = "\u{feff}";

pub(super) fn rewrite(t: &Tagger, body: &[u8], id: &str) -> Result<Vec<u8>, RewriteError> {
    let text = std::str::from_utf8(body).map_err(|_| RewriteError::NotUtf8)?;
    let unbommed = text.strip_prefix(BOM).unwrap_or(text);
    if !unbommed.trim_start().starts_with("#EXTM3U") {
        return Err(RewriteError::NotAManifest("HLS"));
    }
    // Room for one parameter per line that is not a tag: no reallocation on the way.
    let lines = body.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut out = String::with_capacity(body.len() + t.growth(lines / 2 + 1, id));
    // Each line with its own ending (LF or CRLF); a last line without one stays without
    // one. Lines are short: a plain scan beats a searcher's setup.
    let bytes = text.as_bytes();
    let mut next = 0;
    while next < bytes.len() {
        let end = bytes[next..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| next + i + 1);
        let raw = &text[next..end];
        next = end;
        let (line, ending) = split_ending(raw);
        let content = line.strip_prefix(BOM).unwrap_or(line);
        out.push_str(&line[..line.len() - content.len()]);
        // `#EXTINF:<duration>,<title>`: a free-text title, not an attribute list.
        if content.starts_with("#EXT") && !content.starts_with("#EXTINF:") {
            tag_attributes(t, content, id, &mut out);
        } else if content.starts_with('#') || content.trim_ascii().is_empty() {
            out.push_str(content);
        } else {
            // A URI line; surrounding blanks are kept where they were.
            let start = content.len() - content.trim_ascii_start().len();
            let end = content.trim_ascii_end().len();
            out.push_str(&content[..start]);
            if !t.tag_into(&content[start..end], id, &mut out) {
                out.push_str(&content[start..end]);
            }
            out.push_str(&content[end..]);
        }
        out.push_str(ending);
    }
    Ok(out.into_bytes())
}

/// A line without its `\n` or `\r\n`, and that ending.
fn split_ending(raw: &str) -> (&str, &str) {
    if let Some(l) = raw.strip_suffix("\r\n") {
        (l, "\r\n")
    } else if let Some(l) = raw.strip_suffix('\n') {
        (l, "\n")
    } else {
        (raw, "")
    }
}

/// Copy a tag line, tagging the value of every `URI="..."` attribute in its attribute list.
fn tag_attributes(t: &Tagger, line: &str, id: &str, out: &mut String) {
    let Some(colon) = line.find(':') else {
        out.push_str(line);
        return;
    };
    out.push_str(&line[..=colon]);
    let mut rest = &line[colon + 1..];
    // Walk the attribute list: NAME=VALUE pairs split by commas, where a quoted value may
    // hold commas of its own.
    loop {
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = &rest[..name_end];
        if rest[name_end..].starts_with("=\"") {
            let value_start = name_end + 2;
            let Some(len) = rest[value_start..].find('"') else {
                out.push_str(rest); // an unterminated quote: leave the rest alone
                return;
            };
            let value = &rest[value_start..value_start + len];
            out.push_str(&rest[..value_start]);
            if name.trim() != "URI" || !t.tag_into(value, id, out) {
                out.push_str(value);
            }
            out.push('"');
            rest = &rest[value_start + len + 1..];
        }
        // Up to and including the next comma (an unquoted value, or what follows a quote).
        match rest.find(',') {
            Some(c) => {
                out.push_str(&rest[..=c]);
                rest = &rest[c + 1..];
            }
            None => {
                out.push_str(rest);
                return;
            }
        }
    }
}
