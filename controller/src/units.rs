//! Durations ("30d", "1d12h") and sizes ("50MiB") as written in
//! `controller.toml`.

/// Parses a duration: one or more `<number><unit>` with units `s`, `m`,
/// `h`, `d`, `w`, `y` (365 days). Returns seconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'y' => 365 * 86_400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h, d, w or y, e.g. \"30d\")")),
        };
        let n: i64 = num.parse().map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        num.clear();
        total =
            n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("{text:?} is too long"))?;
    }
    if !num.is_empty() {
        return Err(format!("{text:?}: the number {num} has no unit (e.g. \"{num}d\")"));
    }
    Ok(total)
}

/// Formats seconds the way [`parse_duration`] reads them (largest units).
pub fn format_duration(mut secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= n {
            out.push_str(&format!("{}{unit}", secs / n));
            secs %= n;
        }
    }
    out
}

/// Parses a size: a number with an optional unit `B`, `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000).
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

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a size (e.g. \"50MiB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => return Err(format!("{text:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large"))
}

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
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    time::UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_and_offsets() {
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("1d12h").unwrap(), 86_400 + 12 * 3600);
        assert_eq!(parse_duration("0s").unwrap(), 0);
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
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
