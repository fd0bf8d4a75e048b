//! Which kind of request this is, decided from the path alone.
//!
//! The proxy answers `/health` and `/ready` itself, counts streams on the watch routes, and
//! forwards (or refuses) everything else. Keeping the decision here, pure and unit-tested,
//! keeps `request_filter` a short dispatcher.
//!
//! The path is classified the way an origin would read it, or refused: percent-escapes of
//! unreserved characters are decoded (`/%77atch` is `/watch`), watch routes match without
//! regard to case by default (Express, IIS and ASP.NET route that way), and paths an
//! origin could resolve differently from us are rejected: dot segments and `//`, encoded
//! `/`, backslashes, `;` (Tomcat, Jetty and Spring strip `;` parameters and resolve
//! `/..;/`), double encoding (`%25`), whitespace raw, control bytes raw or encoded, a segment
//! ending in `.` or an encoded space (Windows drops them) and overlong or invalid UTF-8. So no spelling of a watch
//! route slips past the limit uncounted.

use std::borrow::Cow;

/// Paths the proxy always answers itself; no watch route may cover them.
pub const HEALTH: &str = "/health";
pub const READY: &str = "/ready";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Watch,
    Other,
}

impl Route {
    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Watch => "watch",
            Route::Other => "other",
        }
    }
}

/// The configured watch-route prefixes.
#[derive(Debug, Clone)]
pub struct Routes {
    prefixes: Vec<String>,
    /// `streams.case_sensitive_routes`: match the prefixes byte for byte.
    case_sensitive: bool,
}

impl Routes {
    pub fn new(prefixes: &[String], case_sensitive: bool) -> Self {
        Self {
            case_sensitive,
            prefixes: prefixes
                .iter()
                .map(|p| {
                    let trimmed = p.trim_end_matches('/');
                    if trimmed.is_empty() {
                        "/".to_string()
                    } else {
                        trimmed.to_string()
                    }
                })
                .collect(),
        }
    }

    /// Classify a request path (without the query string).
    pub fn classify(&self, path: &str) -> Route {
        if path == HEALTH {
            return Route::Health;
        }
        if path == READY {
            return Route::Ready;
        }
        let covered = |p: &String| {
            if self.case_sensitive {
                covers(p, path)
            } else {
                covers_ignoring_case(p, path)
            }
        };
        if self.prefixes.iter().any(covered) {
            Route::Watch
        } else {
            Route::Other
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousPath(pub &'static str);

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The path as an origin would understand it, for classification only (the upstream still
/// gets the request's own bytes). `*` (OPTIONS) is passed through.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, AmbiguousPath> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(AmbiguousPath("the path must start with '/'"));
    }
    for b in path.bytes() {
        match b {
            b'\\' => return Err(AmbiguousPath("the path may not contain a backslash")),
            b';' => return Err(AmbiguousPath("the path may not contain ';'")),
            b if !b.is_ascii_graphic() => {
                return Err(AmbiguousPath(
                    "the path may not contain whitespace, control or non-ASCII bytes",
                ))
            }
            _ => {}
        }
    }
    let decoded: Cow<'_, str> = if path.contains('%') {
        let bytes = path.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        // The path with every escape decoded, as an origin reads it: must be UTF-8.
        let mut full = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                out.push(bytes[i]);
                full.push(bytes[i]);
                i += 1;
                continue;
            }
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(AmbiguousPath("the path has a malformed percent-escape"));
            };
            let c = h * 16 + l;
            full.push(c);
            if unreserved(c) {
                out.push(c);
            } else if matches!(c, b'/' | b'\\' | 0) {
                return Err(AmbiguousPath("the path may not encode '/', '\\' or NUL"));
            } else if c == b'%' {
                return Err(AmbiguousPath("the path may not be encoded twice (%25)"));
            } else if c == b';' {
                return Err(AmbiguousPath("the path may not contain ';'"));
            } else if c < b' ' || c == 0x7f {
                return Err(AmbiguousPath(
                    "the path may not encode control bytes (tab included)",
                ));
            } else {
                out.extend_from_slice(&bytes[i..i + 3]);
            }
            i += 3;
        }
        // Overlong forms (%C0%AF for '/') and other invalid sequences are not UTF-8.
        if std::str::from_utf8(&full).is_err() {
            return Err(AmbiguousPath("the path encodes bytes that are not UTF-8"));
        }
        // Only ASCII was decoded into ASCII, so this is still valid UTF-8.
        Cow::Owned(String::from_utf8(out).map_err(|_| AmbiguousPath("the path is not UTF-8"))?)
    } else {
        Cow::Borrowed(path)
    };
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        if seg == "." || seg == ".." {
            return Err(AmbiguousPath(
                "the path may not contain '.' or '..' segments",
            ));
        }
        // Windows origins drop a segment's trailing dots and spaces.
        if seg.ends_with('.') || seg.ends_with("%20") {
            return Err(AmbiguousPath(
                "a path segment may not end with '.' or a space",
            ));
        }
        // Only the last segment may be empty (a trailing '/').
        if seg.is_empty() && segments.peek().is_some() {
            return Err(AmbiguousPath("the path may not contain '//'"));
        }
    }
    Ok(decoded)
}

/// [`covers`], with ASCII letters compared without regard to case.
fn covers_ignoring_case(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => {
            let rest = &path[prefix.len()..];
            rest.is_empty() || rest.starts_with('/')
        }
        _ => false,
    }
}

/// `/watch` covers `/watch` and `/watch/...`, but not `/watchlist`.
fn covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// True when a route prefix would swallow a path the proxy must answer itself.
pub fn is_reserved(prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    let p = if p.is_empty() { "/" } else { p };
    covers(p, HEALTH) || covers(p, READY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::new(&["/watch".into(), "/live/".into()], false)
    }

    #[test]
    fn watch_prefix_covers_itself_and_below_only() {
        let r = routes();
        assert_eq!(r.classify("/watch"), Route::Watch);
        assert_eq!(r.classify("/watch/"), Route::Watch);
        assert_eq!(r.classify("/watch/movie/seg1.ts"), Route::Watch);
        assert_eq!(r.classify("/live/ch1"), Route::Watch);
        assert_eq!(r.classify("/live"), Route::Watch);
        assert_eq!(r.classify("/watchlist"), Route::Other);
        assert_eq!(r.classify("/"), Route::Other);
        assert_eq!(r.classify("/WATCH"), Route::Watch, "case does not matter");
        assert_eq!(r.classify("/Watch/a.ts"), Route::Watch);
        assert_eq!(r.classify("/LIVE"), Route::Watch);
        assert_eq!(r.classify("/WATCHLIST"), Route::Other);
        let exact = Routes::new(&["/watch".into()], true);
        assert_eq!(exact.classify("/WATCH"), Route::Other);
        assert_eq!(exact.classify("/watch/x"), Route::Watch);
    }

    #[test]
    fn health_and_ready_are_exact() {
        let r = routes();
        assert_eq!(r.classify("/health"), Route::Health);
        assert_eq!(r.classify("/ready"), Route::Ready);
        assert_eq!(r.classify("/health/x"), Route::Other);
    }

    #[test]
    fn canonical_paths_decode_unreserved_escapes() {
        assert_eq!(canonical("/watch/a.ts").unwrap(), "/watch/a.ts");
        assert_eq!(canonical("/%77atch").unwrap(), "/watch");
        assert_eq!(canonical("/watch/a%20b").unwrap(), "/watch/a%20b");
        assert_eq!(
            canonical("/watch/caf%C3%A9.ts").unwrap(),
            "/watch/caf%C3%A9.ts",
            "UTF-8 names stay usable"
        );
        assert_eq!(canonical("/watch/a.b.ts").unwrap(), "/watch/a.b.ts");
        assert_eq!(canonical("/").unwrap(), "/");
        assert_eq!(canonical("/watch/").unwrap(), "/watch/");
        assert_eq!(canonical("*").unwrap(), "*");
        assert!(matches!(canonical("/watch"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/health/../watch",
            "/x/./watch",
            "/x/%2e%2e/watch",
            "/x/%2E./watch",
            "//watch",
            "/watch%2fx",
            "/watch%5Cx",
            "/watch\\x",
            "/watch%00",
            "/watch%zz",
            "/watch%4",
            "watch",
            "/..",
            // Issue #16 item 5: spellings that origins fold onto /watch.
            "/watch;jsessionid=1",
            "/watch;/seg.ts",
            "/;x/watch",
            "/other/..;/watch",
            "/watch%3B",
            "/watch%3bx",
            "/watch.",
            "/watch%2e",
            "/watch%20",
            "/watch%20/x",
            "/watch%09",
            "/watch\tx",
            "/watch x",
            "/%2577atch",
            "/watch%C0%AF..%C0%AFx",
            "/watch/%C0%AF",
            "/watch/%E0%80%AF",
            "/watch/%FF",
            "/watch/\u{e9}",
        ] {
            assert!(canonical(p).is_err(), "{p:?} should be refused");
        }
    }

    #[test]
    fn reserved_prefixes() {
        assert!(is_reserved("/"));
        assert!(is_reserved("/health"));
        assert!(is_reserved("/ready/"));
        assert!(!is_reserved("/watch"));
        assert!(!is_reserved("/healthz"));
    }
}
