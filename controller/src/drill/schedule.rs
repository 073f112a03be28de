//! Scheduled drills: each system with `drill_every` is drilled again when
//! its last passed or partial drill is older than that (never drilled:
//! due at once). Such a system is *overdue* (metric `pulih_drill_overdue`,
//! `GET /api/v1/systems`). A failed attempt is retried after `drill_every`
//! too, not at every look, so a broken system does not drill in a loop.
//!
//! `serve` runs [`run_scheduled`] on its own thread: every
//! `[drills] check_interval` it re-reads the systems (an invalid set is
//! logged and skipped) and starts one drill of every due system together
//! (dependency order and parallel levels as for a manual drill).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{DrillError, DrillRequest, Engine, Selection, Trigger};
use crate::catalog::{Catalog, CatalogError};
use crate::systems::System;

/// Whether `sys` is overdue at `now_ns`; `None` when it has no schedule.
pub fn overdue(cat: &Catalog, sys: &System, now_ns: i64) -> Result<Option<bool>, CatalogError> {
    let Some(every) = sys.drill_every else { return Ok(None) };
    let last = cat.last_system_drill(sys.name.as_str(), &["passed", "partial"])?;
    Ok(Some(match last.and_then(|r| r.ended_ns) {
        None => true,
        Some(end) => now_ns - end > every.as_nanos() as i64,
    }))
}

/// Whether the scheduler should drill `sys` now.
pub fn due(cat: &Catalog, sys: &System, now_ns: i64) -> Result<bool, CatalogError> {
    if overdue(cat, sys, now_ns)? != Some(true) {
        return Ok(false);
    }
    let every = sys.drill_every.unwrap_or_default().as_nanos() as i64;
    let last_try = cat.last_system_drill(sys.name.as_str(), &[])?.and_then(|r| r.ended_ns);
    Ok(last_try.is_none_or(|end| now_ns - end > every))
}

/// One look: starts a drill of every due system. Returns its id, if any.
pub fn tick(engine: &Arc<Engine>) -> Result<Option<i64>, DrillError> {
    if engine.running().is_some() {
        return Ok(None);
    }
    let systems = engine.systems()?;
    let cat = Catalog::open(&engine.catalog_path)?;
    let now = pulih_core::now_ns();
    let mut names = BTreeSet::new();
    for s in systems.iter() {
        if due(&cat, s, now)? {
            names.insert(s.name.to_string());
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    let req =
        DrillRequest { selection: Selection::Systems(names.into_iter().collect()), snapshot: None, as_of_ns: None };
    engine.start(&req, Trigger::Scheduled, "scheduler").map(Some)
}

/// The scheduler loop of `serve`; returns when `stop` is set.
pub fn run_scheduled(engine: Arc<Engine>, interval_secs: i64, stop: Arc<crate::stop::Stop>) {
    let interval = Duration::from_secs(interval_secs.max(1) as u64);
    loop {
        // Sleep first: a controller that just started serves agents first.
        if stop.sleep(interval) {
            return;
        }
        match tick(&engine) {
            Ok(Some(id)) => info!(drill = id, "scheduled drill started"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "scheduled drills: cannot start; trying again at the next look"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::DrillSystemRow;

    fn row(drill_id: i64, outcome: &str, ended_ns: i64) -> DrillSystemRow {
        DrillSystemRow {
            drill_id,
            system: "web".into(),
            title: "Web".into(),
            opd: "Diskominfo".into(),
            owner: None,
            restore_place: "sandbox".into(),
            snapshots: vec![],
            bytes_restored: 0,
            files_restored: 0,
            verify_result: None,
            rto_achieved_secs: None,
            rpo_achieved_secs: None,
            rto_target_secs: 3600,
            rpo_target_secs: 3600,
            outcome: outcome.into(),
            reasons: vec![],
            ended_ns: Some(ended_ns),
        }
    }

    #[test]
    fn overdue_follows_the_last_passed_or_partial_drill_and_failures_wait_a_period() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let text = "[system]\nname = \"web\"\ntitle = \"Web\"\nopd = \"Diskominfo\"\ndata_class = \"pokok\"\ntier = 1\n\
                    rpo_target = \"1h\"\nrto_target = \"1h\"\ndrill_every = \"10s\"\n[[dataset]]\nagent = \"a\"\ndataset = \"d\"\n";
        let systems = crate::systems::Systems::from_texts([(std::path::Path::new("web.toml"), text)]).unwrap();
        let web = systems.get("web").unwrap();
        let s = 1_000_000_000i64;
        // Never drilled: overdue and due.
        assert_eq!(overdue(&cat, web, 100 * s).unwrap(), Some(true));
        assert!(due(&cat, web, 100 * s).unwrap());
        // Passed at 100s: not overdue until 110s.
        let id = cat.drill_begin("scheduled", "scheduler", &serde_json::json!({}), 99 * s).unwrap();
        cat.drill_system_put(&row(id, "passed", 100 * s)).unwrap();
        assert_eq!(overdue(&cat, web, 105 * s).unwrap(), Some(false));
        assert_eq!(overdue(&cat, web, 111 * s).unwrap(), Some(true));
        // A failed attempt at 111s: still overdue, but not due again before 121s.
        let id = cat.drill_begin("scheduled", "scheduler", &serde_json::json!({}), 110 * s).unwrap();
        cat.drill_system_put(&row(id, "failed", 111 * s)).unwrap();
        assert_eq!(overdue(&cat, web, 115 * s).unwrap(), Some(true));
        assert!(!due(&cat, web, 115 * s).unwrap());
        assert!(due(&cat, web, 122 * s).unwrap());
    }
}
