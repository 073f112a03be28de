//! How the plan writes times, durations and sizes in each language: the
//! template filters and the evidence texts of findings use these, so the
//! same fact reads the same everywhere.

/// A language of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Id,
    En,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "id" => Some(Lang::Id),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            Lang::Id => "id",
            Lang::En => "en",
        }
    }
}

const MONTHS_ID: [&str; 12] = [
    "Januari",
    "Februari",
    "Maret",
    "April",
    "Mei",
    "Juni",
    "Juli",
    "Agustus",
    "September",
    "Oktober",
    "November",
    "Desember",
];
const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn local(secs: i64, offset: i32) -> Option<time::OffsetDateTime> {
    let off = time::UtcOffset::from_whole_seconds(offset).ok()?;
    Some(time::OffsetDateTime::from_unix_timestamp(secs).ok()?.to_offset(off))
}

/// "24 November 2026" / "24 November 2026".
pub fn date(lang: Lang, secs: i64, offset: i32) -> String {
    let Some(t) = local(secs, offset) else { return format!("@{secs}") };
    let m = t.month() as usize - 1;
    let month = if lang == Lang::Id { MONTHS_ID[m] } else { MONTHS_EN[m] };
    format!("{} {} {}", t.day(), month, t.year())
}

/// "24 November 2026 pukul 19.05 WIB" / "24 November 2026, 19:05 WIB".
pub fn datetime(lang: Lang, secs: i64, offset: i32, tz: &str) -> String {
    let Some(t) = local(secs, offset) else { return format!("@{secs}") };
    match lang {
        Lang::Id => format!("{} pukul {:02}.{:02} {tz}", date(lang, secs, offset), t.hour(), t.minute()),
        Lang::En => format!("{}, {:02}:{:02} {tz}", date(lang, secs, offset), t.hour(), t.minute()),
    }
}

/// A duration for people, at most two units: "15 menit", "1 jam 30 menit",
/// "2 hari" / "15 minutes", "1 hour 30 minutes".
pub fn dur(lang: Lang, secs: i64) -> String {
    let s = secs.max(0);
    let units: [(i64, &str, &str, &str); 5] = [
        (365 * 86_400, "tahun", "year", "years"),
        (86_400, "hari", "day", "days"),
        (3600, "jam", "hour", "hours"),
        (60, "menit", "minute", "minutes"),
        (1, "detik", "second", "seconds"),
    ];
    let mut parts = Vec::new();
    let mut rest = s;
    for (size, id, one, many) in units {
        if rest >= size && parts.len() < 2 {
            let n = rest / size;
            rest -= n * size;
            parts.push(match lang {
                Lang::Id => format!("{n} {id}"),
                Lang::En => format!("{n} {}", if n == 1 { one } else { many }),
            });
        } else if !parts.is_empty() {
            // Two adjacent units at most: "1 day 3 seconds" says nothing useful.
            break;
        }
    }
    if parts.is_empty() {
        return if lang == Lang::Id { "0 detik".into() } else { "0 seconds".into() };
    }
    parts.join(" ")
}

/// Bytes: "1,5 GiB" (Indonesian decimal comma) / "1.5 GiB".
pub fn bytes(lang: Lang, n: u64) -> String {
    let s = crate::units::human_bytes(n);
    if lang == Lang::Id {
        s.replace('.', ",")
    } else {
        s
    }
}

/// A decimal with one digit: "3,2" / "3.2".
pub fn decimal(lang: Lang, v: f64) -> String {
    let s = format!("{v:.1}");
    if lang == Lang::Id {
        s.replace('.', ",")
    } else {
        s
    }
}

/// `YYYY-MM-DD` (UTC) of Unix seconds, for command-line tables.
pub fn utc_day(secs: i64) -> String {
    utc_time(secs).chars().take(10).collect()
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of Unix seconds, for command-line tables.
pub fn utc_time(secs: i64) -> String {
    crate::catalog::rfc3339_ns(secs.saturating_mul(1_000_000_000)).chars().take(19).collect()
}

/// The `drp list` table of the local and the remote CLI: one line per
/// version, then the version in force.
pub fn versions_table(
    versions: &[crate::catalog::DrpVersionRow],
    in_force: Option<&crate::catalog::DrpVersionRow>,
) -> String {
    let mut out = format!(
        "{:>4}  {:<9} {:<34} {:<3} {:<5} {:<20} {:<16}  APPROVAL\n",
        "VER", "KIND", "NUMBER", "LNG", "FMT", "GENERATED", "CONTENT"
    );
    for v in versions {
        let approved = match (&v.approved_by, v.approved_at) {
            (Some(by), Some(at)) => format!("approved {} by {by}", utc_day(at)),
            _ => "not approved".into(),
        };
        out.push_str(&format!(
            "{:>4}  {:<9} {:<34} {:<3} {:<5} {:<20} {}  {approved}\n",
            v.version,
            v.kind,
            v.number,
            v.lang,
            v.format,
            format!("{}Z", utc_time(v.generated_at)),
            &v.content_blake3[..16.min(v.content_blake3.len())]
        ));
    }
    out.push_str(&match in_force {
        Some(v) => format!(
            "In force: version {} ({}), next review by {}",
            v.version,
            v.number,
            v.next_review.map_or("-".into(), utc_day)
        ),
        None => "In force: no approved version".into(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(dur(Lang::Id, 5400), "1 jam 30 menit");
        assert_eq!(dur(Lang::En, 3600), "1 hour");
        assert_eq!(dur(Lang::En, 86_400 + 3), "1 day");
        assert_eq!(dur(Lang::En, 0), "0 seconds");
        assert_eq!(dur(Lang::Id, 365 * 86_400), "1 tahun");
        assert_eq!(dur(Lang::En, 400 * 86_400), "1 year 35 days");
        // 2026-11-24 12:00:00 UTC is 19:00 WIB.
        assert_eq!(datetime(Lang::Id, 1_795_521_600, 7 * 3600, "WIB"), "24 November 2026 pukul 19.00 WIB");
        assert_eq!(date(Lang::En, 1_795_521_600, 0), "24 November 2026");
        assert_eq!(bytes(Lang::Id, 1536), "1,5 KiB");
    }
}
