//! `controller.toml`: parsed, validated, then read by the accessors the
//! controller uses after validation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_controller::config::ControllerConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = toml::from_str::<ControllerConfig>(text) else { return };
    if cfg.validate().is_ok() {
        let _ = cfg.utc_offset();
        let _ = cfg.gc_grace_secs();
        let _ = cfg.scrub_schedule();
    }
});
