//! Which kind of request this is, decided from the path alone.
//!
//! The proxy answers `/health` and `/ready` itself, counts streams on the watch routes, and
//! forwards (or refuses) everything else. Keeping the decision here, pure and unit-tested,
//! keeps `request_filter` a short dispatcher.

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
    fn reserved_prefixes() {
        assert!(is_reserved("/"));
        assert!(is_reserved("/health"));
        assert!(is_reserved("/ready/"));
        assert!(!is_reserved("/watch"));
        assert!(!is_reserved("/healthz"));
    }
}
