//! Path canonicalisation and route classification: never panics, and no accepted path can
//! carry a dot segment or an empty segment past the classifier.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate::routing::{canonical, Route, Routes};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let routes = Routes::new(&["/watch".to_string()], true);
    if let Ok(c) = canonical(path) {
        if c != "*" {
            assert!(c.starts_with('/'));
            let segments: Vec<&str> = c[1..].split('/').collect();
            for (i, s) in segments.iter().enumerate() {
                assert!(*s != "." && *s != "..", "{path:?} -> {c:?}");
                assert!(!s.is_empty() || i == segments.len() - 1, "{path:?} -> {c:?}");
            }
        }
        // Classification of the canonical form agrees with a plain prefix check.
        let watch = c == "/watch" || c.starts_with("/watch/");
        assert_eq!(routes.classify(&c) == Route::Watch, watch, "{c:?}");
    }
});
