//! Durations ("500ms", "15m", "1h30m", "7d") and sizes ("20MiB", "500KiB")
//! as written in `agent.toml` and `controller.toml`: one syntax for both.
//!
//! A duration is one or more `<integer><unit>` parts, largest unit first,
//! each unit at most once: `y` (365 d), `w` (7 d), `d` (24 h), `h`, `m`,
//! `s`, `ms`, `us`, `ns`.
//! A lone `0` is zero. [`format_duration`] writes the same form back, so a
//! value shown in a log or a status can be pasted into the configuration.
//!
//! A size is an integer with an optional unit: `B`, binary `KiB` `MiB`
//! `GiB` `TiB`, or decimal `kB`/`KB` `MB` `GB` `TB` (units are not case
//! sensitive, so `mib` is `MiB` and `mb` is `MB`).

use std::time::Duration;

/// Units of a duration, largest first, in nanoseconds. Years and weeks are
/// read but never written (30 days stays "30d").
const DURATION_UNITS: [(&str, u128); 9] = [
    ("y", 365 * 86_400_000_000_000),
    ("w", 7 * 86_400_000_000_000),
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const EXPECTED_DURATION: &str = "expected a duration such as \"500ms\", \"30s\", \"15m\", \"1h30m\" or \"7d\"";

/// Parses a duration such as "500ms", "15m", "1h30m" or "7d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(EXPECTED_DURATION.to_string());
    }
    let mut total: u128 = 0;
    // Index into DURATION_UNITS of the last unit seen: units must get smaller.
    let mut last: Option<usize> = None;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{EXPECTED_DURATION} (a number must come before each unit)"));
        }
        let number: u128 = rest[..digits].parse().map_err(|_| format!("{:?} is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(i) = DURATION_UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!("{EXPECTED_DURATION} (a unit must follow {number}: y, w, d, h, m, s, ms)")
            } else {
                format!("{EXPECTED_DURATION} (unknown unit {unit:?}; units are y, w, d, h, m, s, ms)")
            });
        };
        if last.is_some_and(|l| i <= l) {
            return Err(format!("{EXPECTED_DURATION} (units must go from largest to smallest, each once)"));
        }
        last = Some(i);
        total = number
            .checked_mul(DURATION_UNITS[i].1)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| "duration is too large".to_string())?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "duration is too large".to_string())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Writes a duration the way [`parse_duration`] reads it: "1h30m", "500ms", "0s".
pub fn format_duration(d: Duration) -> String {
    let mut n = d.as_nanos();
    if n == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in DURATION_UNITS.into_iter().skip(2) {
        if n >= size {
            out.push_str(&(n / size).to_string());
            out.push_str(unit);
            n %= size;
        }
    }
    out
}

const SIZE_UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Parses a size in bytes such as "20MiB", "500KiB", "1GB", "4096" or "0".
pub fn parse_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a size such as \"500KiB\", \"20MiB\", \"1GiB\" or a number of bytes";
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(EXPECTED.to_string());
    }
    let number: u64 = s[..digits].parse().map_err(|_| "size is too large".to_string())?;
    let unit = s[digits..].trim().to_ascii_lowercase();
    let factor = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("{EXPECTED} (unknown unit {:?})", &s[digits..]))?
    };
    number.checked_mul(factor).ok_or_else(|| "size is too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse() {
        let cases = [
            ("0", 0),
            ("500ms", 500),
            ("30s", 30_000),
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("7d", 604_800_000),
            ("1d2h3m4s5ms", 93_784_005),
            (" 10m ", 600_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        assert_eq!(parse_duration("3us"), Ok(Duration::from_micros(3)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
    }

    #[test]
    fn bad_durations_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "expected a duration"),
            ("10", "a unit must follow"),
            ("m", "a number must come"),
            ("1.5h", "unknown unit"),
            ("5 min", "unknown unit"),
            ("10x", "unknown unit"),
            ("30m1h", "largest to smallest"),
            ("1m1m", "largest to smallest"),
            ("-5s", "a number must come"),
            ("99999999999999999999999999999999999999999d", "too large"),
            ("999999999999999999999d", "too large"),
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn durations_format() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(30 * 86400)), "30d");
        assert_eq!(format_duration(Duration::new(61, 1)), "1m1s1ns");
    }

    #[test]
    fn sizes_parse() {
        for (text, n) in [
            ("0", 0),
            ("4096", 4096),
            ("1B", 1),
            ("500KiB", 500 << 10),
            ("20MiB", 20 << 20),
            ("20mib", 20 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("10MB", 10_000_000),
            ("10 MB", 10_000_000),
            ("1kB", 1000),
        ] {
            assert_eq!(parse_size(text), Ok(n), "{text}");
        }
        for text in ["", "MiB", "1.5MiB", "20Mbit", "-1", "99999999999TiB", "99999999999999999999"] {
            assert!(parse_size(text).is_err(), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,12}") {
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
        }
    }
}
