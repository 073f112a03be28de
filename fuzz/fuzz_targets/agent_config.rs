//! `agent.toml` as an administrator (or a careless edit) may write it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pulih_agent::config::Settings::parse(text);
    }
});
