//! Config parsing and validation: any text gives a config or a one-line error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::from_toml(text) {
        assert!(!e.key.is_empty());
        assert!(!e.message.contains('\n'), "{:?}", e.message);
    }
});
