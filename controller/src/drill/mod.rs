//! Failover drills: prove that a protected system comes back within its
//! targets, on demand and on a schedule.
//!
//! A drill ([`Engine::start`]) re-reads the systems directory (edits apply
//! without a restart; an invalid set refuses the drill with every problem),
//! picks one snapshot per dataset ([`select`]), then runs the systems by
//! dependency level, the systems of one level in parallel (threads). For
//! each system ([`run::system`]):
//!
//! 1. restore every dataset into its place ([`place::restore_place`]): an
//!    isolated sandbox `<data dir>/sandbox/<drill id>/<system>/<subdir>`
//!    (0700) on the controller host; `crate::restore` verifies every chunk
//!    as it writes;
//! 2. verify: re-read every restored file and compare it with the
//!    snapshot's chunk hashes ([`verify`]); failures name the files;
//! 3. health checks in order ([`checks`]), the first failure ends them;
//! 4. teardown steps, ALWAYS (also after a failure);
//! 5. remove the sandbox.
//!
//! RTO achieved = drill start to the last health check passing (or to the
//! end of verification when there are none). RPO achieved = drill start
//! minus the data time of the oldest restored snapshot (the snapshot's
//! start: what a snapshot holds is at least as new as its start).
//! Outcome per system: `passed`, `partial` (came back, but a target was
//! missed or teardown failed: the reasons say which and by how much) or
//! `failed`. A system whose dependency failed in the same drill is not run.
//! The run is `passed` when all passed, `failed` when all failed, else
//! `partial`. Everything is recorded as it happens (catalog `drills`,
//! `drill_systems`, `drill_steps`), and every start is audited.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalog::{Catalog, CatalogError, NewAudit};
use crate::store::{Store, StoreError};
use crate::systems::{SystemName, Systems, SystemsError};

pub mod checks;
pub mod place;
mod run;
pub mod schedule;
pub mod select;
pub mod verify;

/// Bytes of output kept per step (the end of it).
pub const STEP_OUTPUT_LIMIT: usize = 4096;

/// Why a drill could not start.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("the systems definitions are invalid; fix them before a drill (pulih-controller systems check): {0}")]
    Systems(#[from] SystemsError),
    #[error("{0}")]
    Selection(String),
    #[error("drill {0} is still running; wait for it to finish")]
    Busy(i64),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Which systems a drill covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    Systems(Vec<String>),
    Opd(String),
    All,
}

/// What a drill is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRequest {
    pub selection: Selection,
    /// A snapshot id (or unique prefix) of one of the datasets: used for
    /// that dataset; every other dataset is restored as of its data time.
    pub snapshot: Option<String>,
    /// Restore the newest snapshot at or before this time (Unix ns).
    pub as_of_ns: Option<i64>,
}

/// Who started a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Scheduled,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
        }
    }
}

/// Runs drills; one at a time (checks of two drills would fight over ports
/// and services on the controller host).
pub struct Engine {
    pub data_dir: PathBuf,
    pub systems_dir: PathBuf,
    pub catalog_path: PathBuf,
    pub store_path: PathBuf,
    /// Set at shutdown: running checks and steps are stopped.
    pub cancel: Arc<AtomicBool>,
    running: Mutex<Option<(i64, std::thread::JoinHandle<()>)>>,
}

impl Engine {
    pub fn new(data_dir: &Path, systems_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            systems_dir: systems_dir.to_owned(),
            catalog_path: data_dir.join("catalog.db"),
            store_path: data_dir.join("store"),
            cancel: Arc::new(AtomicBool::new(false)),
            running: Mutex::new(None),
        }
    }

    /// Where a drill's sandboxes go.
    pub fn sandbox_root(&self) -> PathBuf {
        self.data_dir.join("sandbox")
    }

    /// Reads and validates the systems (every drill and listing does).
    pub fn systems(&self) -> Result<Systems, SystemsError> {
        Systems::load(&self.systems_dir)
    }

    /// The drill running now, if any.
    pub fn running(&self) -> Option<i64> {
        let mut r = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if r.as_ref().is_some_and(|(_, h)| h.is_finished()) {
            if let Some((_, h)) = r.take() {
                let _ = h.join();
            }
        }
        r.as_ref().map(|(id, _)| *id)
    }

    /// Waits for the running drill, if any.
    pub fn join(&self) {
        let h = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((_, h)) = h {
            let _ = h.join();
        }
    }

    /// Closes drills a stopped controller left running (call once at start).
    pub fn recover(&self) -> Result<(), DrillError> {
        let n = Catalog::open(&self.catalog_path)?.drills_close_stale(pulih_core::now_ns())?;
        if n > 0 {
            warn!(drills = n, "drills interrupted by a stop of the controller were recorded as failed");
        }
        // Their sandboxes are stale too.
        let root = self.sandbox_root();
        if root.exists() {
            if let Err(e) = place::remove_tree(&root) {
                warn!(path = %root.display(), error = %e, "cannot remove stale drill sandboxes");
            }
        }
        Ok(())
    }

    /// Validates `req`, records and audits the start, and runs the drill on
    /// its own thread. Returns the drill id.
    pub fn start(self: &Arc<Self>, req: &DrillRequest, trigger: Trigger, actor: &str) -> Result<i64, DrillError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, h)) = running.as_ref() {
            if !h.is_finished() {
                return Err(DrillError::Busy(*id));
            }
        }
        let prepared = self.prepare(req);
        let mut cat = Catalog::open(&self.catalog_path)?;
        let detail = serde_json::to_value(req).unwrap_or_default();
        let target = match &req.selection {
            Selection::Systems(s) => s.join(","),
            Selection::Opd(o) => format!("opd:{o}"),
            Selection::All => "all".into(),
        };
        let audit = NewAudit::new(actor, "drill-start", &target, detail.clone());
        let (systems, names, plan) = match prepared {
            Ok(p) => p,
            Err(e) => {
                cat.audit(&audit, &Err::<(), _>(e.to_string()))?;
                return Err(e);
            }
        };
        let started_ns = pulih_core::now_ns();
        let id = cat.drill_begin(trigger.as_str(), actor, &detail, started_ns)?;
        let mut audit = audit;
        audit.detail["drill_id"] = id.into();
        cat.audit(&audit, &Ok::<(), String>(()))?;
        info!(drill = id, systems = %names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(","), trigger = trigger.as_str(), actor, "drill starting");
        let engine = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("drill-{id}"))
            .spawn(move || {
                let outcome = engine.execute(id, started_ns, &systems, &names, plan);
                info!(drill = id, outcome, "drill finished");
            })
            .map_err(|e| DrillError::Io { path: "drill thread".into(), source: e })?;
        *running = Some((id, handle));
        Ok(id)
    }

    /// Loads the systems, resolves the selection and picks the snapshots.
    #[allow(clippy::type_complexity)]
    fn prepare(&self, req: &DrillRequest) -> Result<(Systems, BTreeSet<SystemName>, select::Plan), DrillError> {
        let systems = self.systems()?;
        let names = select::systems(&systems, &req.selection)?;
        let cat = Catalog::open(&self.catalog_path)?;
        let plan = select::snapshots(&cat, &systems, &names, req.snapshot.as_deref(), req.as_of_ns)?;
        Ok((systems, names, plan))
    }

    /// Runs a prepared drill to its end; returns the run's outcome.
    fn execute(
        &self,
        id: i64,
        started_ns: i64,
        systems: &Systems,
        names: &BTreeSet<SystemName>,
        plan: select::Plan,
    ) -> &'static str {
        let store = match Store::open_with_catalog(&self.store_path, &self.catalog_path) {
            Ok(s) => s,
            Err(e) => return self.abort(id, &format!("cannot open the store: {e}")),
        };
        let cat = match Catalog::open(&self.catalog_path) {
            Ok(c) => Mutex::new(c),
            Err(e) => return self.abort(id, &format!("cannot open the catalog: {e}")),
        };
        let levels = match systems.levels(Some(names)) {
            Ok(l) => l,
            Err(e) => return self.abort(id, &e.to_string()),
        };
        let sandbox = self.sandbox_root().join(id.to_string());
        let ctx = run::Ctx {
            drill_id: id,
            started_ns,
            store: &store,
            catalog: &cat,
            sandbox: &sandbox,
            cancel: &self.cancel,
        };
        let outcomes: Mutex<BTreeMap<SystemName, run::Outcome>> = Mutex::new(BTreeMap::new());
        for level in levels {
            std::thread::scope(|s| {
                for sys in level {
                    let (ctx, outcomes, plan) = (&ctx, &outcomes, &plan);
                    s.spawn(move || {
                        let failed_dep = {
                            let o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                            sys.depends_on.iter().find(|d| o.get(*d) == Some(&run::Outcome::Failed)).cloned()
                        };
                        let outcome = run::system(ctx, sys, plan.get(&sys.name), failed_dep.as_ref());
                        outcomes.lock().unwrap_or_else(|e| e.into_inner()).insert(sys.name.clone(), outcome);
                    });
                }
            });
        }
        if let Err(e) = std::fs::remove_dir(&sandbox) {
            if e.kind() != std::io::ErrorKind::NotFound {
                let _ = place::remove_tree(&sandbox);
            }
        }
        let all: Vec<run::Outcome> = outcomes.into_inner().unwrap_or_else(|e| e.into_inner()).into_values().collect();
        let outcome = if all.iter().all(|o| *o == run::Outcome::Passed) {
            "passed"
        } else if all.iter().all(|o| *o == run::Outcome::Failed) {
            "failed"
        } else {
            "partial"
        };
        let cat = cat.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = cat.drill_end(id, outcome, pulih_core::now_ns()) {
            warn!(drill = id, error = %e, "cannot record the end of the drill");
        }
        outcome
    }

    fn abort(&self, id: i64, why: &str) -> &'static str {
        warn!(drill = id, reason = why, "drill could not run");
        if let Ok(cat) = Catalog::open(&self.catalog_path) {
            let _ = cat.drill_end(id, "failed", pulih_core::now_ns());
        }
        "failed"
    }
}

/// The last `limit` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut start = s.len() - limit;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_system_file_is_valid() {
        let text = include_str!("../../../deploy/systems/simpeg.toml.example");
        let s = crate::systems::Systems::from_texts([(std::path::Path::new("simpeg.toml"), text)]).unwrap();
        let simpeg = s.get("simpeg").unwrap();
        assert_eq!(simpeg.datasets.len(), 2);
        assert_eq!(simpeg.health_checks.len(), 2);
        assert_eq!(simpeg.teardown.len(), 1);
    }

    #[test]
    fn tail_keeps_the_end_at_a_char_boundary() {
        assert_eq!(super::tail("abc", 5), "abc");
        let t = super::tail("ééééé", 3);
        assert!(t.ends_with('é') && t.len() <= 3 + '…'.len_utf8(), "{t}");
    }
}
