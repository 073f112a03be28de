//! Retention: which snapshots of a dataset to keep, like restic's `forget`
//! policy, and forgetting the others.
//!
//! [`plan`] is a pure function of (snapshots, policy, time zone, now): the
//! same plan is shown by `prune --dry-run` and executed by `prune`.
//! Snapshots are considered newest first. `keep_last` keeps the N newest.
//! Each calendar rule (`keep_hourly`, `keep_daily`, `keep_weekly` (ISO week),
//! `keep_monthly`, `keep_yearly`) keeps the newest snapshot of each of the N
//! most recent periods that have a snapshot; periods are taken in the
//! configured UTC offset (default +07:00, WIB), so "daily" follows the
//! local day. `keep_within` keeps every snapshot within that duration of the
//! dataset's newest snapshot (not of now: a dataset whose agent went silent
//! keeps its history). A snapshot may be kept by several rules; all are
//! listed. A dataset with no matching policy, or a policy with no rule,
//! keeps everything; and the newest snapshot of a dataset is never removed
//! by a policy (only an explicit `forget` removes it). Snapshots dated after
//! `now` (clock skew on the agent) are always kept.
//!
//! Forgetting removes the catalog row, then the snapshot record file in the
//! store; the blobs stay until garbage collection (crate::gc). If the
//! controller crashes between the two, the record file remains and a
//! catalog rebuild would list the snapshot again: nothing is lost, a
//! forgotten snapshot may come back.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::{OffsetDateTime, UtcOffset};

use crate::catalog::{Catalog, CatalogError, SnapshotRow};
use crate::store::Store;
use crate::units;

/// A `[[retention]]` table of `controller.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Agent name, or `"*"` for every agent.
    pub agent: String,
    /// Dataset name, or `"*"` for every dataset.
    pub dataset: String,
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Duration such as `"30d"`: keep everything this recent.
    #[serde(default)]
    pub keep_within: Option<String>,
}

impl RetentionRule {
    /// Whether this rule applies to a dataset.
    pub fn matches(&self, agent: &str, dataset: &str) -> bool {
        (self.agent == "*" || self.agent == agent) && (self.dataset == "*" || self.dataset == dataset)
    }

    /// The policy, or the reason it is invalid.
    pub fn policy(&self) -> Result<Policy, String> {
        Ok(Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within_secs: self.keep_within.as_deref().map(units::parse_duration).transpose()?,
        })
    }
}

/// A retention policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within_secs: Option<i64>,
}

impl Policy {
    /// Whether no rule is set (then everything is kept).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within_secs.is_none()
    }
}

/// One snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Start time, nanoseconds since the Unix epoch.
    pub time_ns: i64,
}

/// Whether a snapshot is kept, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub id: String,
    pub time_ns: i64,
    pub keep: bool,
    /// The rules that keep it (e.g. `daily 2026-11-20`, `last 3`,
    /// `within 30d`), or why it goes.
    pub reasons: Vec<String>,
}

fn bucket(kind: &str, t: OffsetDateTime) -> String {
    match kind {
        "hourly" => format!("{:04}-{:02}-{:02}T{:02}", t.year(), t.month() as u8, t.day(), t.hour()),
        "daily" => format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day()),
        "weekly" => {
            let (y, w, _) = t.to_iso_week_date();
            format!("{y:04}-W{w:02}")
        }
        "monthly" => format!("{:04}-{:02}", t.year(), t.month() as u8),
        _ => format!("{:04}", t.year()),
    }
}

/// Decides, for the snapshots of ONE dataset, which to keep. The result is
/// newest first.
pub fn plan(snaps: &[Candidate], policy: &Policy, offset: UtcOffset, now_ns: i64) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = snaps.iter().collect();
    sorted.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then_with(|| b.id.cmp(&a.id)));
    let newest = sorted.first().map(|s| s.time_ns);
    let mut rules: Vec<(&str, u32, Option<String>)> = [
        ("hourly", policy.hourly),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
        ("yearly", policy.yearly),
    ]
    .into_iter()
    .map(|(k, n)| (k, n, None))
    .collect();
    let mut out = Vec::with_capacity(sorted.len());
    for (i, s) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if policy.is_empty() {
            reasons.push("no retention policy".to_string());
        }
        if s.time_ns > now_ns {
            reasons.push("dated in the future".to_string());
        }
        if (i as u64) < u64::from(policy.last) {
            reasons.push(format!("last {}", policy.last));
        }
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.time_ns))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(offset);
        for (kind, left, last) in &mut rules {
            if *left == 0 {
                continue;
            }
            let b = bucket(kind, t);
            if last.as_deref() != Some(b.as_str()) {
                reasons.push(format!("{kind} {b}"));
                *left -= 1;
                *last = Some(b);
            }
        }
        if let (Some(w), Some(newest)) = (policy.within_secs, newest) {
            if newest.saturating_sub(s.time_ns) <= w.saturating_mul(1_000_000_000) {
                reasons.push(format!("within {}", units::format_duration(w)));
            }
        }
        if i == 0 && reasons.is_empty() {
            reasons.push("newest snapshot of its dataset".to_string());
        }
        let keep = !reasons.is_empty();
        if !keep {
            reasons.push("no rule keeps it".to_string());
        }
        out.push(Decision { id: s.id.clone(), time_ns: s.time_ns, keep, reasons });
    }
    out
}

/// The plan of one dataset.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DatasetPlan {
    pub agent: String,
    pub dataset: String,
    /// Index of the `[[retention]]` table that applies (none: keep all).
    pub rule: Option<usize>,
    pub decisions: Vec<Decision>,
}

/// Plans every dataset (optionally only one agent and/or dataset).
pub fn plan_all(
    cat: &Catalog,
    rules: &[RetentionRule],
    offset: UtcOffset,
    now_ns: i64,
    agent: Option<&str>,
    dataset: Option<&str>,
) -> Result<Vec<DatasetPlan>, CatalogError> {
    let mut by_set: BTreeMap<(String, String), Vec<Candidate>> = BTreeMap::new();
    for s in cat.snapshots(agent, dataset)? {
        by_set
            .entry((s.agent.clone(), s.dataset.clone()))
            .or_default()
            .push(Candidate { id: s.id, time_ns: s.started_ns });
    }
    let mut out = Vec::new();
    for ((agent, dataset), snaps) in by_set {
        let rule = rules.iter().position(|r| r.matches(&agent, &dataset));
        let policy = match rule {
            Some(i) => rules[i].policy().map_err(CatalogError::Invalid)?,
            None => Policy::default(),
        };
        let decisions = plan(&snaps, &policy, offset, now_ns);
        out.push(DatasetPlan { agent, dataset, rule, decisions });
    }
    Ok(out)
}

/// Ids a plan removes.
pub fn removals(plans: &[DatasetPlan]) -> Vec<String> {
    plans.iter().flat_map(|p| p.decisions.iter().filter(|d| !d.keep).map(|d| d.id.clone())).collect()
}

/// Forgets snapshots: catalog rows first, then their record files.
/// Returns the rows removed.
pub fn forget(cat: &mut Catalog, store: &Store, ids: &[String]) -> Result<Vec<SnapshotRow>, CatalogError> {
    let all = cat.snapshots(None, None)?;
    let rows: Vec<SnapshotRow> = all.into_iter().filter(|s| ids.contains(&s.id)).collect();
    cat.forget_snapshots(ids)?;
    for id in ids {
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let p = store.root().join("snapshots").join(id);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove a forgotten snapshot's record file; a catalog rebuild would list it again");
                }
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3_600_000_000_000;
    const WIB: UtcOffset = match UtcOffset::from_hms(7, 0, 0) {
        Ok(o) => o,
        Err(_) => UtcOffset::UTC,
    };

    fn snaps(times: &[i64]) -> Vec<Candidate> {
        times.iter().enumerate().map(|(i, t)| Candidate { id: format!("{i:02}"), time_ns: *t }).collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        let mut v: Vec<String> = d.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn daily_buckets_follow_the_local_day_and_reasons_are_named() {
        // 2026-11-20 16:30 UTC is 23:30 WIB; 17:30 UTC is 00:30 WIB on the 21st.
        let base = OffsetDateTime::parse("2026-11-20T16:30:00Z", &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp_nanos() as i64;
        let s = snaps(&[base, base + H, base - 2 * H]);
        let p = Policy { daily: 5, ..Default::default() };
        let d = plan(&s, &p, WIB, base + 10 * H);
        assert_eq!(kept(&d), vec!["00", "01"], "{d:#?}");
        assert!(d.iter().any(|x| x.reasons == vec!["daily 2026-11-21"]));
        assert!(d.iter().any(|x| x.reasons == vec!["daily 2026-11-20"]));
        assert_eq!(d.iter().find(|x| x.id == "02").unwrap().reasons, vec!["no rule keeps it"]);
        // In UTC, all three are on the 20th: only the newest stays.
        assert_eq!(kept(&plan(&s, &p, UtcOffset::UTC, base + 10 * H)), vec!["01"]);
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot_and_empty_policy_keeps_all() {
        let s = snaps(&[0, 10 * H, 100 * H]);
        let p = Policy { within_secs: Some(24 * 3600), ..Default::default() };
        let d = plan(&s, &p, WIB, 10_000 * H);
        assert_eq!(kept(&d), vec!["02"]);
        assert_eq!(d[0].reasons, vec!["within 1d"]);
        assert_eq!(kept(&plan(&s, &Policy::default(), WIB, 0)).len(), 3);
        // The newest is kept even by a policy that matches nothing else.
        let p = Policy { within_secs: Some(0), ..Default::default() };
        assert_eq!(kept(&plan(&s, &p, WIB, 10_000 * H)), vec!["02"]);
    }

    proptest! {
        #[test]
        fn keep_last_keeps_the_newest_and_plans_are_stable(
            times in proptest::collection::vec(0i64..2_000_000, 1..60),
            last in 0u32..10, hourly in 0u32..5, daily in 0u32..5, weekly in 0u32..3,
            monthly in 0u32..3, within in proptest::option::of(0i64..500_000),
        ) {
            let s = snaps(&times.iter().map(|t| t * 1_000_000_000).collect::<Vec<_>>());
            let p = Policy { last, hourly, daily, weekly, monthly, yearly: 0, within_secs: within };
            let d = plan(&s, &p, WIB, i64::MAX);
            // keep-last n keeps the n newest.
            for x in d.iter().take(last as usize) {
                prop_assert!(x.keep);
            }
            // The newest is always kept, and every decision has a reason.
            prop_assert!(d[0].keep);
            prop_assert!(d.iter().all(|x| !x.reasons.is_empty()));
            // Planning again over what is kept keeps all of it (a second
            // prune removes nothing).
            let rest: Vec<Candidate> = s.iter().filter(|c| d.iter().any(|x| x.keep && x.id == c.id)).cloned().collect();
            let again = plan(&rest, &p, WIB, i64::MAX);
            prop_assert!(again.iter().all(|x| x.keep), "{:?}", again);
            // Deterministic whatever the input order.
            let mut rev = s.clone();
            rev.reverse();
            prop_assert_eq!(kept(&plan(&rev, &p, WIB, i64::MAX)), kept(&d));
        }
    }
}
