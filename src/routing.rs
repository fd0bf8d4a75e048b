//! Which kind of request this is, decided from the path alone.
//!
//! The proxy answers `/health` and `/ready` itself, counts streams on the watch routes, and
//! forwards (or refuses) everything else. Keeping the decision here, pure and unit-tested,
//! keeps `request_filter` a short dispatcher.
//!
//! The path is classified the way an origin would read it, or refused: percent-escapes of
//! unreserved characters are decoded (`/%77atch` is `/watch`), and paths an origin could
//! resolve differently from us (`/x/../watch`, `//watch`, `/watch%2F1`, backslashes) are
//! rejected, so no spelling of a watch route can slip past the limit uncounted.

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
}

impl Routes {
    pub fn new(prefixes: &[String]) -> Self {
        Self {
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
        if self.prefixes.iter().any(|p| covers(p, path)) {
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
    if path.contains('\\') {
        return Err(AmbiguousPath("the path may not contain a backslash"));
    }
    let decoded: Cow<'_, str> = if path.contains('%') {
        let bytes = path.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                out.push(bytes[i]);
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
            if unreserved(c) {
                out.push(c);
            } else if matches!(c, b'/' | b'\\' | 0) {
                return Err(AmbiguousPath("the path may not encode '/', '\\' or NUL"));
            } else {
                out.extend_from_slice(&bytes[i..i + 3]);
            }
            i += 3;
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
        // Only the last segment may be empty (a trailing '/').
        if seg.is_empty() && segments.peek().is_some() {
            return Err(AmbiguousPath("the path may not contain '//'"));
        }
    }
    Ok(decoded)
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
        Routes::new(&["/watch".into(), "/live/".into()])
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
        assert_eq!(r.classify("/WATCH"), Route::Other);
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
