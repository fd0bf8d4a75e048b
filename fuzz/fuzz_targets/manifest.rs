//! The manifest rewriters: never panic, and what they write parses again as the same kind,
//! and rewriting that output again changes nothing more (the parameter is replaced, never
//! doubled).
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate::manifest::{Kind, Tagger};

const ID: &str = "0b5d3c5e-1f0e-4c1e-9a57-3f1a8f0c2b11";

fuzz_target!(|data: &[u8]| {
    let t = Tagger::new("sg_stream", &["cdn.example.com".to_string()]);
    for kind in [Kind::Hls, Kind::Dash] {
        if let Ok(out) = t.rewrite(kind, data, ID) {
            let again = t
                .rewrite(kind, &out, ID)
                .unwrap_or_else(|e| panic!("{kind:?} output does not parse again: {e}"));
            assert_eq!(again, out, "{kind:?}: a second rewrite changed more");
        }
    }
});
