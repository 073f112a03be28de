//! Which systems a drill covers, and which snapshot of each dataset it
//! restores: the newest committed snapshot that is not marked damaged; or
//! the newest at or before a time (`as_of`); or one given snapshot (its
//! dataset uses it, every other dataset is taken as of its data time, so
//! the system comes back at one point in time).

use std::collections::{BTreeMap, BTreeSet};

use super::{DrillError, Selection};
use crate::catalog::{Catalog, SnapshotRow};
use crate::systems::{DatasetRef, SystemName, Systems};

/// Per system: each dataset with its snapshot, or why there is none.
pub type Plan = BTreeMap<SystemName, Vec<(DatasetRef, Result<SnapshotRow, String>)>>;

/// The systems a selection names.
pub fn systems(all: &Systems, sel: &Selection) -> Result<BTreeSet<SystemName>, DrillError> {
    let names: BTreeSet<SystemName> = match sel {
        Selection::All => all.iter().map(|s| s.name.clone()).collect(),
        Selection::Opd(opd) => {
            all.iter().filter(|s| s.opd.eq_ignore_ascii_case(opd.trim())).map(|s| s.name.clone()).collect()
        }
        Selection::Systems(list) => {
            let mut out = BTreeSet::new();
            for n in list {
                match all.get(n) {
                    Some(s) => {
                        out.insert(s.name.clone());
                    }
                    None => {
                        return Err(DrillError::Selection(format!(
                            "no system named {n:?} (see pulih-controller systems list)"
                        )))
                    }
                }
            }
            out
        }
    };
    if names.is_empty() {
        return Err(DrillError::Selection(match sel {
            Selection::Opd(o) => format!("no system belongs to OPD {o:?}"),
            _ => "no system to drill: define systems first (pulih-controller systems check)".into(),
        }));
    }
    Ok(names)
}

/// Picks the snapshots. An unknown `snapshot` is an error; a dataset
/// without a usable snapshot fails only its own system (recorded).
pub fn snapshots(
    cat: &Catalog,
    all: &Systems,
    names: &BTreeSet<SystemName>,
    snapshot: Option<&str>,
    as_of_ns: Option<i64>,
) -> Result<Plan, DrillError> {
    let pinned = match snapshot {
        Some(spec) => {
            let row = cat.resolve_snapshot(spec, None, None)?;
            let owner = names.iter().filter_map(|n| all.get(n.as_str())).find(|s| {
                s.datasets.iter().any(|d| d.agent.as_str() == row.agent && d.dataset.as_str() == row.dataset)
            });
            if owner.is_none() {
                return Err(DrillError::Selection(format!(
                    "snapshot {} is of {}/{}, which belongs to none of the systems drilled",
                    row.id, row.agent, row.dataset
                )));
            }
            Some(row)
        }
        None => None,
    };
    let as_of = pinned.as_ref().map(|p| p.started_ns).or(as_of_ns);
    let mut plan = Plan::new();
    for name in names {
        let Some(sys) = all.get(name.as_str()) else { continue };
        let mut picks = Vec::new();
        for d in &sys.datasets {
            let pick = match &pinned {
                Some(p) if p.agent == d.agent.as_str() && p.dataset == d.dataset.as_str() => Ok(p.clone()),
                _ => newest(cat, d, as_of)?,
            };
            picks.push((d.clone(), pick));
        }
        plan.insert(name.clone(), picks);
    }
    Ok(plan)
}

fn newest(cat: &Catalog, d: &DatasetRef, as_of: Option<i64>) -> Result<Result<SnapshotRow, String>, DrillError> {
    let rows = cat.snapshots(Some(d.agent.as_str()), Some(d.dataset.as_str()))?;
    let total = rows.len();
    let pick = rows.into_iter().rev().find(|s| s.state == "ok" && as_of.is_none_or(|t| s.started_ns <= t));
    Ok(pick.ok_or_else(|| match (total, as_of) {
        (0, _) => format!("no snapshot of {}/{} exists", d.agent, d.dataset),
        (_, Some(t)) => {
            format!("no intact snapshot of {}/{} at or before {}", d.agent, d.dataset, crate::catalog::rfc3339_ns(t))
        }
        _ => format!("every snapshot of {}/{} is marked damaged (see pulih-controller damage)", d.agent, d.dataset),
    }))
}
