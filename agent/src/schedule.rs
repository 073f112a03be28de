//! When a dataset is snapshotted: an interval ("15m") or a calendar
//! expression in wall-clock time ("daily 01:30").
//!
//! Accepted forms (lower case, one space between words):
//!
//! | text | meaning |
//! |---|---|
//! | `15m`, `1h`, `1h30m` | every interval, counted from the start of the previous run |
//! | `hourly`, `hourly :15` | every hour at minute 0 / 15 |
//! | `daily 01:30` | every day at 01:30 |
//! | `weekly mon 02:00` | every Monday at 02:00 (`mon` … `sun`) |
//! | `monthly 1 03:00` | day 1 of every month at 03:00; a day past the end of a short month (29-31) means its last day |
//!
//! Calendar times are read in a fixed UTC offset (`[daemon] utc_offset`,
//! by default the machine's offset at startup); Indonesia has no daylight
//! saving time, so a fixed offset is the wall clock.

use std::fmt;
use std::time::Duration;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset, Weekday};

use pulih_core::units::{format_duration, parse_duration};

/// A parsed `schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed interval between run starts.
    Every(Duration),
    /// Wall-clock times.
    Calendar(Calendar),
}

/// A calendar expression; minutes and hours are in the configured offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calendar {
    /// Every hour at `minute`.
    Hourly { minute: u8 },
    /// Every day at `hour:minute`.
    Daily { hour: u8, minute: u8 },
    /// Every week on `weekday` at `hour:minute`.
    Weekly { weekday: Weekday, hour: u8, minute: u8 },
    /// Every month on `day` (1-31, clamped to the month's last day) at `hour:minute`.
    Monthly { day: u8, hour: u8, minute: u8 },
}

const EXPECTED: &str = "expected an interval (\"15m\", \"1h\") or \"hourly\", \"hourly :15\", \"daily 01:30\", \
                        \"weekly mon 02:00\" or \"monthly 1 03:00\"";

const WEEKDAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn parse_hhmm(s: &str) -> Result<(u8, u8), String> {
    let bad = || format!("time {s:?}: expected HH:MM from 00:00 to 23:59");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 || !(h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit())) {
        return Err(bad());
    }
    let (h, m): (u8, u8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

impl Schedule {
    /// Parses a schedule expression; the error says what was expected.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let cal = match words.as_slice() {
            [] => return Err(EXPECTED.to_string()),
            ["hourly"] => Calendar::Hourly { minute: 0 },
            ["hourly", m] => {
                let minute = m
                    .strip_prefix(':')
                    .filter(|d| d.len() == 2 && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u8>().ok())
                    .filter(|m| *m < 60)
                    .ok_or_else(|| format!("minute {m:?}: expected :MM from :00 to :59, as in \"hourly :15\""))?;
                Calendar::Hourly { minute }
            }
            ["daily", t] => {
                let (hour, minute) = parse_hhmm(t)?;
                Calendar::Daily { hour, minute }
            }
            ["weekly", d, t] => {
                let weekday = WEEKDAYS
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(d))
                    .map(|(_, w)| *w)
                    .ok_or_else(|| format!("day {d:?}: expected mon, tue, wed, thu, fri, sat or sun"))?;
                let (hour, minute) = parse_hhmm(t)?;
                Calendar::Weekly { weekday, hour, minute }
            }
            ["monthly", d, t] => {
                let day = d
                    .parse::<u8>()
                    .ok()
                    .filter(|d| (1..=31).contains(d))
                    .ok_or_else(|| format!("day of month {d:?}: expected 1 to 31"))?;
                let (hour, minute) = parse_hhmm(t)?;
                Calendar::Monthly { day, hour, minute }
            }
            [one] if one.starts_with(|c: char| c.is_ascii_digit()) => {
                let d = parse_duration(one).map_err(|e| format!("interval {one:?}: {e}"))?;
                if d < Duration::from_secs(1) {
                    return Err(format!("interval {one:?}: must be at least 1s"));
                }
                return Ok(Schedule::Every(d));
            }
            _ => return Err(EXPECTED.to_string()),
        };
        Ok(Schedule::Calendar(cal))
    }

    /// When the next run should start.
    ///
    /// An interval runs `interval` after the previous start, or `now` when
    /// it never ran or that time has already passed (a missed run is made
    /// up once, not once per missed interval). A calendar runs at the first
    /// matching minute strictly after `now`, in `offset`.
    pub fn next_after(
        &self,
        now: OffsetDateTime,
        last_start: Option<OffsetDateTime>,
        offset: UtcOffset,
    ) -> OffsetDateTime {
        match self {
            Schedule::Every(d) => match last_start.and_then(|l| l.checked_add((*d).try_into().ok()?)) {
                Some(next) if next > now => next,
                _ => now,
            },
            Schedule::Calendar(c) => c.next_after(now, offset),
        }
    }
}

impl Calendar {
    fn next_after(&self, now: OffsetDateTime, offset: UtcOffset) -> OffsetDateTime {
        let local = now.to_offset(offset);
        let at = |date: Date, h: u8, m: u8| {
            PrimitiveDateTime::new(date, Time::from_hms(h, m, 0).expect("validated")).assume_offset(offset)
        };
        let today = local.date();
        // The candidate on a date is the only one that date can give (for
        // hourly: the one in the current hour), so trying dates in order and
        // keeping the first strictly later than `now` gives the minimum.
        match *self {
            Calendar::Hourly { minute } => {
                let this_hour = at(today, local.hour(), minute);
                if this_hour > now {
                    this_hour
                } else {
                    this_hour + time::Duration::HOUR
                }
            }
            Calendar::Daily { hour, minute } => {
                let t = at(today, hour, minute);
                if t > now {
                    t
                } else {
                    at(today.next_day().expect("not year 9999"), hour, minute)
                }
            }
            Calendar::Weekly { weekday, hour, minute } => {
                let mut date = today;
                loop {
                    if date.weekday() == weekday {
                        let t = at(date, hour, minute);
                        if t > now {
                            return t;
                        }
                    }
                    date = date.next_day().expect("not year 9999");
                }
            }
            Calendar::Monthly { day, hour, minute } => {
                let (mut year, mut month) = (today.year(), today.month());
                loop {
                    let last = month.length(year);
                    let date = Date::from_calendar_date(year, month, day.min(last)).expect("valid day");
                    let t = at(date, hour, minute);
                    if t > now {
                        return t;
                    }
                    if month == Month::December {
                        year += 1;
                    }
                    month = month.next();
                }
            }
        }
    }
}

impl fmt::Display for Schedule {
    /// The canonical text, which [`Schedule::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => f.write_str(&format_duration(*d)),
            Schedule::Calendar(Calendar::Hourly { minute: 0 }) => f.write_str("hourly"),
            Schedule::Calendar(Calendar::Hourly { minute }) => write!(f, "hourly :{minute:02}"),
            Schedule::Calendar(Calendar::Daily { hour, minute }) => write!(f, "daily {hour:02}:{minute:02}"),
            Schedule::Calendar(Calendar::Weekly { weekday, hour, minute }) => {
                let name = WEEKDAYS.iter().find(|(_, w)| w == weekday).map_or("?", |(n, _)| n);
                write!(f, "weekly {name} {hour:02}:{minute:02}")
            }
            Schedule::Calendar(Calendar::Monthly { day, hour, minute }) => {
                write!(f, "monthly {day} {hour:02}:{minute:02}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::{datetime, offset};

    const WIB: UtcOffset = offset!(+7);

    fn cal(text: &str) -> Schedule {
        Schedule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_and_displays_canonically() {
        for (text, canonical) in [
            ("15m", "15m"),
            ("1h", "1h"),
            ("90m", "1h30m"),
            ("hourly", "hourly"),
            ("hourly :00", "hourly"),
            ("hourly :15", "hourly :15"),
            ("daily 01:30", "daily 01:30"),
            ("daily 1:30", "daily 01:30"),
            ("  daily   23:59 ", "daily 23:59"),
            ("weekly mon 02:00", "weekly mon 02:00"),
            ("weekly Sun 00:00", "weekly sun 00:00"),
            ("monthly 1 03:00", "monthly 1 03:00"),
            ("monthly 31 23:00", "monthly 31 23:00"),
        ] {
            let s = cal(text);
            assert_eq!(s.to_string(), canonical, "{text}");
            assert_eq!(cal(canonical), s, "{canonical} reads back");
        }
    }

    #[test]
    fn bad_expressions_say_what_was_expected() {
        for (text, why) in [
            ("", "expected an interval"),
            ("dayly 01:30", "expected an interval"),
            ("daily", "expected an interval"),
            ("daily 24:00", "HH:MM"),
            ("daily 01:60", "HH:MM"),
            ("daily 0130", "HH:MM"),
            ("daily 01:3", "HH:MM"),
            ("hourly 15", ":MM"),
            ("hourly :60", ":MM"),
            ("weekly monday 02:00", "expected mon"),
            ("monthly 0 03:00", "1 to 31"),
            ("monthly 32 03:00", "1 to 31"),
            ("15", "a unit must follow"),
            ("0s", "at least 1s"),
            ("500ms", "at least 1s"),
            ("every 15m", "expected an interval"),
        ] {
            let err = Schedule::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn interval_counts_from_the_last_start() {
        let s = cal("15m");
        let now = datetime!(2025-03-01 10:00:00 UTC);
        assert_eq!(s.next_after(now, None, WIB), now);
        assert_eq!(s.next_after(now, Some(datetime!(2025-03-01 09:50:00 UTC)), WIB), datetime!(2025-03-01 10:05 UTC));
        // Overdue (the host was off): once, now.
        assert_eq!(s.next_after(now, Some(datetime!(2025-03-01 06:00:00 UTC)), WIB), now);
    }

    #[test]
    fn calendar_examples_in_wib() {
        // 2025-03-01 is a Saturday. 10:00 UTC = 17:00 WIB.
        let now = datetime!(2025-03-01 10:00:00 UTC);
        let cases = [
            ("hourly", datetime!(2025-03-01 18:00 +7)),
            ("hourly :15", datetime!(2025-03-01 17:15 +7)),
            ("daily 01:30", datetime!(2025-03-02 01:30 +7)),
            ("daily 17:00", datetime!(2025-03-02 17:00 +7)),
            ("daily 17:01", datetime!(2025-03-01 17:01 +7)),
            ("weekly mon 02:00", datetime!(2025-03-03 02:00 +7)),
            ("weekly sat 17:00", datetime!(2025-03-08 17:00 +7)),
            ("weekly sat 18:00", datetime!(2025-03-01 18:00 +7)),
            ("monthly 1 03:00", datetime!(2025-04-01 03:00 +7)),
            ("monthly 31 03:00", datetime!(2025-03-31 03:00 +7)),
        ];
        for (text, want) in cases {
            assert_eq!(cal(text).next_after(now, None, WIB), want, "{text}");
        }
        // Day 31 in a 30-day month and in February: the last day.
        let april = datetime!(2025-04-02 00:00 UTC);
        assert_eq!(cal("monthly 31 03:00").next_after(april, None, WIB), datetime!(2025-04-30 03:00 +7));
        let feb = datetime!(2024-02-02 00:00 UTC);
        assert_eq!(cal("monthly 30 03:00").next_after(feb, None, WIB), datetime!(2024-02-29 03:00 +7));
        // The last start does not matter for a calendar.
        let last = Some(datetime!(2025-03-01 09:59 UTC));
        assert_eq!(cal("daily 01:30").next_after(now, last, WIB), datetime!(2025-03-02 01:30 +7));
    }

    /// Whether a whole minute in `offset` matches the expression (the
    /// reference the search in `next_after` is checked against).
    fn matches(c: &Calendar, t: OffsetDateTime, offset: UtcOffset) -> bool {
        let l = t.to_offset(offset);
        if l.second() != 0 || l.nanosecond() != 0 {
            return false;
        }
        let hm = |h: u8, m: u8| l.hour() == h && l.minute() == m;
        match *c {
            Calendar::Hourly { minute } => l.minute() == minute,
            Calendar::Daily { hour, minute } => hm(hour, minute),
            Calendar::Weekly { weekday, hour, minute } => l.weekday() == weekday && hm(hour, minute),
            Calendar::Monthly { day, hour, minute } => {
                l.day() == day.min(l.month().length(l.year())) && hm(hour, minute)
            }
        }
    }

    fn calendar() -> impl Strategy<Value = Calendar> {
        let hm = (0u8..24, 0u8..60);
        prop_oneof![
            (0u8..60).prop_map(|minute| Calendar::Hourly { minute }),
            hm.clone().prop_map(|(hour, minute)| Calendar::Daily { hour, minute }),
            (0usize..7, hm.clone()).prop_map(|(w, (hour, minute))| Calendar::Weekly {
                weekday: WEEKDAYS[w].1,
                hour,
                minute
            }),
            (1u8..=31, hm).prop_map(|(day, (hour, minute))| Calendar::Monthly { day, hour, minute }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn calendar_next_is_later_matching_and_minimal(
            c in calendar(),
            // 2000-01-01 .. 2040-01-01, any second.
            now_secs in 946_684_800i64..2_208_988_800,
            offset_min in -12 * 60i32..=14 * 60,
        ) {
            let offset = UtcOffset::from_whole_seconds(offset_min * 60).unwrap();
            let now = OffsetDateTime::from_unix_timestamp(now_secs).unwrap();
            let next = Schedule::Calendar(c).next_after(now, None, offset);
            prop_assert!(next > now);
            prop_assert!(matches(&c, next, offset), "{} does not match {}", next, Schedule::Calendar(c));
            // No whole minute between now and next matches.
            let mut t = OffsetDateTime::from_unix_timestamp(now_secs - now_secs.rem_euclid(60)).unwrap();
            loop {
                t += time::Duration::MINUTE;
                if t >= next {
                    break;
                }
                prop_assert!(!matches(&c, t, offset), "{} matches {} before {}", t, Schedule::Calendar(c), next);
            }
            // The canonical text reads back as the same schedule.
            let s = Schedule::Calendar(c);
            prop_assert_eq!(Schedule::parse(&s.to_string()), Ok(s));
        }
    }
}
