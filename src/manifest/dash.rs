//! DASH MPDs (ISO/IEC 23009-1): XML, read and written event by event with `quick-xml`.
//!
//! The URIs a DASH player fetches come from `BaseURL` and `Location` text and from the
//! attributes `SegmentTemplate@media`, `@initialization` and `@index`, `SegmentURL@media`
//! and `@index`, and `Initialization@sourceURL` / `RepresentationIndex@sourceURL`. Those
//! get the stream parameter (a template's `$Number$`, `$Time$`, `$RepresentationID$` are
//! left as they are: the parameter goes after them, in the query). A `BaseURL` that names
//! a directory (ends in `/`) is left alone: a player resolves segment URLs against it, which
//! keeps no query, so the segment URLs carry the parameter themselves. Every other event is
//! written back as it was read, so the document changes in those values only.

use quick_xml::escape::{escape, unescape};
use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

use super::{RewriteError, Tagger};

/// Attributes that hold a URI, by element (local name).
fn uri_attributes(element: &[u8]) -> &'static [&'static [u8]] {
    match element {
        b"SegmentTemplate" => &[b"media", b"initialization", b"index"],
        b"SegmentURL" => &[b"media", b"index"],
        b"Initialization" | b"RepresentationIndex" => &[b"sourceURL"],
        _ => &[],
    }
}

fn xml_err(e: impl std::fmt::Display) -> RewriteError {
    RewriteError::Xml(e.to_string())
}

pub(super) fn rewrite(t: &Tagger, body: &[u8], id: &str) -> Result<Vec<u8>, RewriteError> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut writer = Writer::new(Vec::with_capacity(body.len() + body.len() / 4 + 64));
    let mut buf = Vec::new();
    let mut seen_root = false;
    // Inside `BaseURL` or `Location`: their text, as written (escaped), until the end tag.
    let mut text_of: Option<(&'static [u8], String)> = None;
    loop {
        let event = reader.read_event_into(&mut buf).map_err(xml_err)?;
        match &event {
            Event::Start(e) | Event::Empty(e) if !seen_root => {
                if e.local_name().as_ref() != b"MPD" {
                    return Err(RewriteError::NotAManifest("DASH"));
                }
                seen_root = true;
            }
            _ => {}
        }
        if let Some((element, text)) = &mut text_of {
            match &event {
                Event::Text(e) => {
                    text.push_str(std::str::from_utf8(e).map_err(|_| RewriteError::NotUtf8)?);
                    buf.clear();
                    continue;
                }
                Event::GeneralRef(e) => {
                    text.push('&');
                    text.push_str(std::str::from_utf8(e).map_err(|_| RewriteError::NotUtf8)?);
                    text.push(';');
                    buf.clear();
                    continue;
                }
                Event::CData(e) => {
                    let raw = std::str::from_utf8(e).map_err(|_| RewriteError::NotUtf8)?;
                    text.push_str(&escape(raw));
                    buf.clear();
                    continue;
                }
                Event::End(e) if e.local_name().as_ref() == *element => {
                    let tagged = tag_text(t, text, id, *element == b"BaseURL")?;
                    writer
                        .write_event(Event::Text(BytesText::from_escaped(tagged)))
                        .map_err(xml_err)?;
                    text_of = None;
                }
                // Markup inside a URI element is not a URI we understand: leave it all.
                _ => {
                    let (_, text) = text_of.take().unwrap_or_default();
                    writer
                        .write_event(Event::Text(BytesText::from_escaped(text)))
                        .map_err(xml_err)?;
                }
            }
        }
        match event {
            Event::Eof => break,
            Event::Start(e) => {
                let name = e.local_name();
                if matches!(name.as_ref(), b"BaseURL" | b"Location") {
                    let element: &'static [u8] = if name.as_ref() == b"BaseURL" {
                        b"BaseURL"
                    } else {
                        b"Location"
                    };
                    text_of = Some((element, String::new()));
                }
                let e = tag_element(t, e, id)?;
                writer.write_event(Event::Start(e)).map_err(xml_err)?;
            }
            Event::Empty(e) => {
                let e = tag_element(t, e, id)?;
                writer.write_event(Event::Empty(e)).map_err(xml_err)?;
            }
            other => writer.write_event(other).map_err(xml_err)?,
        }
        buf.clear();
    }
    if !seen_root {
        return Err(RewriteError::NotAManifest("DASH"));
    }
    Ok(writer.into_inner())
}

/// `BaseURL`/`Location` text (escaped as written), tagged when it names a file.
fn tag_text(t: &Tagger, raw: &str, id: &str, base: bool) -> Result<String, RewriteError> {
    let value = unescape(raw).map_err(xml_err)?;
    let trimmed = value.trim();
    if base && (trimmed.ends_with('/') || trimmed.is_empty()) {
        return Ok(raw.to_string());
    }
    Ok(match t.tag(trimmed, id) {
        Some(tagged) => escape(tagged.as_str()).into_owned(),
        None => raw.to_string(),
    })
}

/// An element with its URI attributes tagged; untouched (same bytes) when it has none.
fn tag_element<'a>(
    t: &Tagger,
    e: BytesStart<'a>,
    id: &str,
) -> Result<BytesStart<'a>, RewriteError> {
    let wanted = uri_attributes(e.local_name().into_inner());
    if wanted.is_empty() {
        return Ok(e);
    }
    let name = std::str::from_utf8(e.name().into_inner())
        .map_err(|_| RewriteError::NotUtf8)?
        .to_string();
    let mut out = BytesStart::new(name);
    for attr in e.attributes().with_checks(false) {
        let attr = attr.map_err(xml_err)?;
        let key = attr.key.local_name();
        if wanted.contains(&key.as_ref()) {
            let value = attr.unescape_value().map_err(xml_err)?;
            if let Some(tagged) = t.tag(&value, id) {
                let k = std::str::from_utf8(attr.key.into_inner())
                    .map_err(|_| RewriteError::NotUtf8)?;
                // `(&str, &str)` escapes the value (`&` becomes `&amp;`).
                out.push_attribute((k, tagged.as_str()));
                continue;
            }
        }
        out.push_attribute(attr);
    }
    Ok(out)
}
