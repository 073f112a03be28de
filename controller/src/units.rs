//! Durations ("30d", "1d12h") and sizes ("50MiB") as written in
//! `controller.toml`, in the shared syntax of [`pulih_core::units`], plus
//! the controller's time zone offset and human byte counts.

/// Parses a duration (the syntax of [`pulih_core::units`]) into whole
/// seconds, which is what the controller's settings are kept in.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let d = pulih_core::units::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{text:?}: use whole seconds here"));
    }
    i64::try_from(d.as_secs()).map_err(|_| format!("{text:?} is too long"))
}

/// Formats seconds the way [`parse_duration`] reads them (largest units).
pub fn format_duration(secs: i64) -> String {
    pulih_core::units::format_duration(std::time::Duration::from_secs(secs.max(0) as u64))
}

/// Bytes for people: "512 B", "1.5 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub use pulih_core::units::parse_size;

/// Parses a UTC offset such as `+07:00`, `-03:30` or `Z`.
pub fn parse_offset(text: &str) -> Result<time::UtcOffset, String> {
    let t = text.trim();
    if t == "Z" || t == "UTC" {
        return Ok(time::UtcOffset::UTC);
    }
    let bad = || format!("{text:?} is not a UTC offset (e.g. \"+07:00\" for WIB)");
    let (sign, rest) = match t.split_at_checked(1) {
        Some(("+", r)) => (1i8, r),
        Some(("-", r)) => (-1i8, r),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    // Digits only: `i8::from_str` also takes a sign, and "-+07:-128" made
    // `sign * m` overflow (found by the `units` fuzz target).
    let part = |s: &str| {
        (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<i8>().ok()).flatten()
    };
    let (h, m) = (part(h).ok_or_else(bad)?, part(m).ok_or_else(bad)?);
    time::UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression of the `units` fuzz target (fuzz/regressions/units/): signs
    /// inside the parts were accepted, and "-+07:-128" overflowed.
    #[test]
    fn offsets_with_signed_or_long_parts_are_refused() {
        for bad in ["-+07:-128", "+-07:00", "+07:+30", "+07:-30", "+007:00", "+7:", "+:30", "+07:00:00"] {
            assert!(parse_offset(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_offset("-03:30").unwrap(), time::UtcOffset::from_hms(-3, -30, 0).unwrap());
        assert_eq!(parse_offset("+7:00").unwrap(), time::UtcOffset::from_hms(7, 0, 0).unwrap());
    }

    #[test]
    fn durations_sizes_and_offsets() {
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("1d12h").unwrap(), 86_400 + 12 * 3600);
        assert_eq!(parse_duration("0s").unwrap(), 0);
        assert!(parse_duration("30").unwrap_err().contains("a unit must follow 30"));
        assert_eq!(parse_duration("1w").unwrap(), 7 * 86_400);
        assert!(parse_duration("1500ms").unwrap_err().contains("whole seconds"));
        assert!(parse_duration("3x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(parse_duration("1d12h5s").unwrap()), "1d12h5s");
        assert_eq!(parse_size("50MiB").unwrap(), 50 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_offset("+07:00").unwrap().whole_hours(), 7);
        assert_eq!(parse_offset("-03:30").unwrap().whole_minutes(), -210);
        assert!(parse_offset("07:00").is_err());
    }
}
