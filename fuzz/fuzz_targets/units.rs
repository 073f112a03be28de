//! The one duration and size syntax of agent.toml and controller.toml.
//! A parsed value formats back to text that parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_core::units;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = units::parse_duration(text) {
        assert_eq!(units::parse_duration(&units::format_duration(d)), Ok(d), "{text:?}");
    }
    let _ = units::parse_size(text);
    let _ = pulih_controller::units::parse_duration(text);
    let _ = pulih_controller::units::parse_offset(text);
});
