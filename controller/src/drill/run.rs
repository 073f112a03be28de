//! One system of a drill: restore, verify, health checks, teardown (always),
//! sandbox removal; then the verdict against the targets.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use tracing::warn;

use super::place::{self, PlaceError, Restored};
use super::{checks, tail, verify, STEP_OUTPUT_LIMIT};
use crate::catalog::{Catalog, DrillSystemRow, SnapshotRow, SnapshotUsed};
use crate::store::Store;
use crate::systems::{DatasetRef, RestorePlace, System, SystemName};
use crate::units::format_duration;

/// What a drill shares with its systems.
pub struct Ctx<'a> {
    pub drill_id: i64,
    pub started_ns: i64,
    pub store: &'a Store,
    pub catalog: &'a Mutex<Catalog>,
    /// `<data dir>/sandbox/<drill id>`.
    pub sandbox: &'a Path,
    pub cancel: &'a AtomicBool,
}

/// A system's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Partial,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
        }
    }
}

impl Ctx<'_> {
    fn db<T>(&self, f: impl FnOnce(&Catalog) -> Result<T, crate::catalog::CatalogError>) -> Option<T> {
        let c = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        match f(&c) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(drill = self.drill_id, error = %e, "cannot record drill progress in the catalog");
                None
            }
        }
    }

    /// Runs one step and records it; returns whether it passed.
    fn step(&self, system: &str, kind: &str, name: &str, f: impl FnOnce() -> (bool, String)) -> (bool, String) {
        let seq = self.db(|c| c.drill_step_begin(self.drill_id, system, kind, name, pulih_core::now_ns()));
        let (ok, output) = f();
        let output = tail(&output, STEP_OUTPUT_LIMIT);
        if let Some(seq) = seq {
            let outcome = if ok { "passed" } else { "failed" };
            self.db(|c| c.drill_step_end(self.drill_id, seq, outcome, &output, pulih_core::now_ns()));
        }
        (ok, output)
    }

    fn skipped(&self, system: &str, kind: &str, name: &str, why: &str) {
        let now = pulih_core::now_ns();
        if let Some(seq) = self.db(|c| c.drill_step_begin(self.drill_id, system, kind, name, now)) {
            self.db(|c| c.drill_step_end(self.drill_id, seq, "skipped", why, now));
        }
    }
}

fn secs_since(start_ns: i64) -> f64 {
    (pulih_core::now_ns() - start_ns) as f64 / 1e9
}

fn place_text(p: &RestorePlace) -> String {
    match p {
        RestorePlace::Sandbox => "sandbox".into(),
        RestorePlace::Standby { agent, path } => format!("standby {agent}:{}", path.display()),
    }
}

/// Runs one system; records everything; returns its verdict.
pub fn system(
    ctx: &Ctx<'_>,
    sys: &System,
    picks: Option<&Vec<(DatasetRef, Result<SnapshotRow, String>)>>,
    failed_dep: Option<&SystemName>,
) -> Outcome {
    let name = sys.name.as_str();
    let mut row = DrillSystemRow {
        drill_id: ctx.drill_id,
        system: name.to_owned(),
        title: sys.title.clone(),
        opd: sys.opd.clone(),
        owner: sys.owner.as_ref().map(|o| match &o.contact {
            Some(c) => format!("{} <{c}>", o.name),
            None => o.name.clone(),
        }),
        restore_place: place_text(&sys.restore),
        snapshots: Vec::new(),
        bytes_restored: 0,
        files_restored: 0,
        verify_result: None,
        rto_achieved_secs: None,
        rpo_achieved_secs: None,
        rto_target_secs: sys.rto_target.as_secs() as i64,
        rpo_target_secs: sys.rpo_target.as_secs() as i64,
        outcome: "running".into(),
        reasons: Vec::new(),
        ended_ns: None,
    };
    let finish = |mut row: DrillSystemRow, outcome: Outcome| {
        row.outcome = outcome.as_str().into();
        row.ended_ns = Some(pulih_core::now_ns());
        ctx.db(|c| c.drill_system_put(&row));
        outcome
    };
    if let Some(dep) = failed_dep {
        row.reasons.push(format!("dependency {dep} failed"));
        return finish(row, Outcome::Failed);
    }
    let mut ok_picks = Vec::new();
    for (d, pick) in picks.map(Vec::as_slice).unwrap_or_default() {
        match pick {
            Ok(s) => {
                row.snapshots.push(SnapshotUsed {
                    agent: d.agent.to_string(),
                    dataset: d.dataset.to_string(),
                    subdir: d.subdir.clone(),
                    snapshot: s.id.clone(),
                    started_ns: s.started_ns,
                });
                ok_picks.push((d.clone(), s.clone()));
            }
            Err(why) => row.reasons.push(why.clone()),
        }
    }
    if !row.reasons.is_empty() {
        return finish(row, Outcome::Failed);
    }
    // RPO: the oldest restored data decides.
    let oldest = row.snapshots.iter().map(|s| s.started_ns).min().unwrap_or(ctx.started_ns);
    row.rpo_achieved_secs = Some(((ctx.started_ns - oldest) as f64 / 1e9).max(0.0));
    ctx.db(|c| c.drill_system_put(&row));

    let outcome = restore_verify_check(ctx, sys, &ok_picks, &mut row);

    // Teardown always: a check may have started services on the restored data.
    let env = env_of(ctx, sys, &row);
    let env_ref: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut teardown_failed = Vec::new();
    for st in &sys.teardown {
        let (ok, _) = ctx.step(name, "teardown", &st.name, || checks::step(ctx.catalog, sys, st, &env_ref, ctx.cancel));
        if !ok {
            teardown_failed.push(st.name.clone());
        }
    }
    if let RestorePlace::Sandbox = sys.restore {
        let dir = ctx.sandbox.join(name);
        if let Err(e) = place::remove_tree(&dir) {
            warn!(path = %dir.display(), error = %e, "cannot remove the drill sandbox");
            row.reasons.push(format!("the sandbox {} could not be removed: {e}", dir.display()));
        }
    }
    let mut outcome = outcome;
    if !teardown_failed.is_empty() {
        row.reasons.push(format!("teardown failed: {}", teardown_failed.join(", ")));
        if outcome == Outcome::Passed {
            outcome = Outcome::Partial;
        }
    }
    finish(row, outcome)
}

fn env_of(ctx: &Ctx<'_>, sys: &System, row: &DrillSystemRow) -> Vec<(&'static str, String)> {
    let place = match &sys.restore {
        // On a standby host: the path below its [standby] root; the agent
        // turns it into PULIH_RESTORE_DIR for its actions.
        crate::systems::RestorePlace::Standby { path, .. } => ("PULIH_RESTORE_PATH", path.display().to_string()),
        crate::systems::RestorePlace::Sandbox => {
            ("PULIH_RESTORE_DIR", ctx.sandbox.join(sys.name.as_str()).display().to_string())
        }
    };
    vec![
        place,
        ("PULIH_SYSTEM", sys.name.to_string()),
        ("PULIH_DRILL_ID", ctx.drill_id.to_string()),
        ("PULIH_SNAPSHOT_IDS", row.snapshots.iter().map(|s| s.snapshot.as_str()).collect::<Vec<_>>().join(",")),
    ]
}

/// Restore, verify and checks; the verdict before teardown.
fn restore_verify_check(
    ctx: &Ctx<'_>,
    sys: &System,
    picks: &[(DatasetRef, SnapshotRow)],
    row: &mut DrillSystemRow,
) -> Outcome {
    let name = sys.name.as_str();
    let mut restored: Option<Restored> = None;
    let mut damaged: Option<(String, pulih_core::TreeId, String)> = None;
    let (ok, out) = ctx.step(name, "restore", "restore", || {
        match place::restore_place(ctx.store, ctx.catalog, ctx.sandbox, sys, picks) {
            Ok(r) => {
                let text = format!(
                    "{} file(s), {} restored into {}",
                    r.files,
                    crate::units::human_bytes(r.bytes),
                    r.dir.display()
                );
                restored = Some(r);
                (true, text)
            }
            Err(PlaceError::Damaged { snapshot, root, message }) => {
                let text = format!("stopped: stored data of snapshot {snapshot} is damaged: {message}");
                damaged = Some((snapshot, root, message));
                (false, text)
            }
            Err(e) => (false, e.to_string()),
        }
    });
    let Some(r) = restored else {
        if let Some((snapshot, root, message)) = damaged {
            // Name every damaged file, not only the first the restore met.
            let (_, list) = ctx.step(name, "verify", "verify", || {
                let mut v = crate::verify::Verifier::new(ctx.store);
                let mut lines = Vec::new();
                match v.snapshot(&snapshot, &root) {
                    Ok(()) => {
                        for d in &v.report.damage {
                            lines.push(format!("{}: {} {} damaged: {}", d.path, d.kind, d.id, d.reason));
                        }
                    }
                    Err(e) => lines.push(format!("cannot verify snapshot {snapshot}: {e}")),
                }
                if lines.is_empty() {
                    lines.push(message.clone());
                }
                (false, lines.join("\n"))
            });
            row.verify_result = Some(format!("failed: {}", first_line(&list)));
            row.reasons
                .push(format!("verification failed: snapshot {snapshot} is damaged: {}", list.replace('\n', "; ")));
        } else {
            row.reasons.push(format!("restore failed: {out}"));
        }
        for c in &sys.health_checks {
            ctx.skipped(name, "check", &c.name, "not run: the restore failed");
        }
        return Outcome::Failed;
    };
    debug_assert!(ok);
    row.files_restored = r.files;
    row.bytes_restored = r.bytes;
    ctx.db(|c| c.drill_system_put(row));

    let (verified, out) = ctx.step(name, "verify", "verify", || {
        let mut files = 0;
        let mut bytes = 0;
        let mut problems = Vec::new();
        let mut count = 0;
        for d in &r.datasets {
            let c = match &d.standby {
                // The files are on the standby host: its agent re-reads them.
                Some((agent, below)) => {
                    match place::verify_on_standby(ctx.store, ctx.catalog, agent, below, &d.snapshot) {
                        Ok(c) => c,
                        Err(e) => return (false, e),
                    }
                }
                None => verify::restored(ctx.store, &d.root, &d.subpath, &d.dir),
            };
            files += c.files;
            bytes += c.bytes;
            count += c.problem_count;
            problems.extend(c.problems.into_iter().map(|p| format!("{}{p}", d.dir.display())));
        }
        if count == 0 {
            (true, format!("{files} file(s), {} re-read and match the snapshot", crate::units::human_bytes(bytes)))
        } else {
            (false, format!("{count} difference(s) from the snapshot:\n{}", problems.join("\n")))
        }
    });
    if !verified {
        row.verify_result = Some(format!("failed: {}", first_line(&out)));
        row.reasons.push(format!("verification failed: {}", out.replace('\n', "; ")));
        for c in &sys.health_checks {
            ctx.skipped(name, "check", &c.name, "not run: verification failed");
        }
        return Outcome::Failed;
    }
    row.verify_result = Some("ok".into());

    let env = env_of(ctx, sys, row);
    let env_ref: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut failed: Option<String> = None;
    for c in &sys.health_checks {
        if let Some(f) = &failed {
            ctx.skipped(name, "check", &c.name, &format!("not run: check {f:?} failed"));
            continue;
        }
        let (ok, out) = ctx.step(name, "check", &c.name, || checks::check(ctx.catalog, sys, c, &env_ref, ctx.cancel));
        if !ok {
            row.reasons.push(format!("health check {:?} failed: {}", c.name, last_line(&out)));
            failed = Some(c.name.clone());
        }
    }
    if failed.is_some() {
        return Outcome::Failed;
    }
    let rto = secs_since(ctx.started_ns);
    row.rto_achieved_secs = Some(rto);
    let mut outcome = Outcome::Passed;
    let missed = |achieved: f64, target: Duration| achieved > target.as_secs_f64();
    if missed(rto, sys.rto_target) {
        row.reasons.push(format!(
            "RTO target missed: {} achieved against {} (over by {})",
            secs_text(rto),
            format_duration(sys.rto_target.as_secs() as i64),
            secs_text(rto - sys.rto_target.as_secs_f64())
        ));
        outcome = Outcome::Partial;
    }
    let rpo = row.rpo_achieved_secs.unwrap_or(0.0);
    if missed(rpo, sys.rpo_target) {
        row.reasons.push(format!(
            "RPO target missed: the restored data was {} old against {} (over by {})",
            secs_text(rpo),
            format_duration(sys.rpo_target.as_secs() as i64),
            secs_text(rpo - sys.rpo_target.as_secs_f64())
        ));
        outcome = Outcome::Partial;
    }
    outcome
}

/// Seconds for people: "2.3s", "4m05s", "3h12m".
pub fn secs_text(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, (s % 3600.0 / 60.0) as u64)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn last_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    // The status line is last; the line before it is usually the reason.
    match lines.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [.., a, b] => format!("{a} {b}"),
    }
}
