//! Failover and failback of a protected system onto agents in standby role,
//! and the standby-job primitives drills use too.
//!
//! **Failover** (`failover SYSTEM --to STANDBY`): record the incident; take
//! the newest snapshot of each dataset that scrub has not marked damaged;
//! restore each onto the standby (delta restore below the standby's root at
//! the system's `[restore] path`/subdir: an older copy from a drill is only
//! brought up to date); run the activation steps (commands on the controller
//! host, or actions the standby's sysadmin declared); mark the system as
//! running at the standby; then ask the standby to protect the restored data
//! from its new place (datasets of the same names under the standby agent),
//! so nothing written during the outage is unprotected. RTO achieved = start
//! to activation done; RPO achieved = start minus the oldest data time of
//! the restored snapshots.
//!
//! **Failback** (`failback SYSTEM --to PRIMARY`, the rebuilt primary runs
//! `pulih-agent` with `[standby] enabled`): snapshot the standby's datasets
//! now; delta restore (only changed, delete) onto the primary's own dataset
//! paths; run the teardown steps (stop the service at the DRC); a final
//! snapshot and delta restore (short: only what changed since); activation
//! at the primary; unprotect at the standby; mark the system running at the
//! primary.
//!
//! Every step is recorded (times, outcome, bounded output) in `failovers`
//! as it ends, so an interrupted run leaves its record; each state change is
//! audited. A failure stops the run, records why, and leaves the system
//! where it was (the catalog's `system_state` changes only at the end).
//! Jobs go through the catalog queue ([`crate::catalog::JobRequest`]); the
//! running `serve` hands them to the agents when they poll.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use pulih_core::tree::Node;
use pulih_core::TreeId;

use crate::catalog::{now_secs, Catalog, CatalogError, FailoverRow, JobRequest, JobRow, NewAudit, SnapshotRow};
use crate::reader;
use crate::store::Store;
use crate::systems::{RestorePlace, Step, StepRun, System, Systems};

/// Most output of a step kept in the record.
const STEP_OUTPUT: usize = 4096;

/// Failover and job failures.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("standby job {id} on agent {agent} ({kind}) {state}: {message}")]
    Job { id: i64, agent: String, kind: String, state: String, message: String },
    #[error("step {step:?} failed: {message}")]
    Step { step: String, message: String },
}

/// How long to wait for agents.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// An agent that does not ask for a queued job within this time fails it.
    pub pickup: Duration,
    /// Longest run of a restore or snapshot job once picked up.
    pub run: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self { pickup: Duration::from_secs(120), run: Duration::from_secs(24 * 3600) }
    }
}

fn lock(cat: &Mutex<Catalog>) -> std::sync::MutexGuard<'_, Catalog> {
    cat.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues `job` for `agent` (audited) and waits until it ends. The entry
/// point drills use to restore onto a standby or run an agent action.
pub fn run_job(
    cat: &Mutex<Catalog>,
    agent: &str,
    job: &JobRequest,
    failover_id: Option<i64>,
    actor: &str,
    waits: Waits,
) -> Result<JobRow, FailoverError> {
    let entry = NewAudit::new(actor, "standby-job", agent, serde_json::json!({ "job": job, "failover": failover_id }));
    let id =
        lock(cat).audited(&entry, |c| c.queue_job(agent, job, waits.pickup.as_secs() as i64, failover_id, actor))?;
    info!(job = id, %agent, kind = job.kind(), "standby job queued");
    let deadline = Instant::now() + waits.pickup + waits.run;
    loop {
        let row = {
            let c = lock(cat);
            c.expire_jobs()?;
            c.job(id)?.ok_or_else(|| FailoverError::NotFound(format!("job {id} vanished")))?
        };
        match row.state.as_str() {
            "done" => return Ok(row),
            "failed" | "expired" => {
                return Err(FailoverError::Job {
                    id,
                    agent: agent.into(),
                    kind: row.kind,
                    state: row.state,
                    message: row.message.unwrap_or_default(),
                })
            }
            _ if Instant::now() > deadline => {
                lock(cat).abandon_job(id, "the controller stopped waiting for it")?;
                return Err(FailoverError::Job {
                    id,
                    agent: agent.into(),
                    kind: row.kind,
                    state: "timed out".into(),
                    message: format!("not finished within {} s", (waits.pickup + waits.run).as_secs()),
                });
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The tree of a snapshot's (single) dataset path: trees hold the source
/// host's absolute paths, a standby restore wants the data itself.
pub fn data_root(cat: &Mutex<Catalog>, store: &Store, snapshot: &SnapshotRow) -> Result<TreeId, FailoverError> {
    let rec = lock(cat).snapshot_record(&snapshot.id)?;
    let path = match rec.paths.as_slice() {
        [p] => p.clone(),
        ps => {
            return Err(FailoverError::Invalid(format!(
                "snapshot {} of {}/{} has {} paths; a standby restore needs a dataset with one path",
                &snapshot.id[..12],
                snapshot.agent,
                snapshot.dataset,
                ps.len()
            )))
        }
    };
    let mut cur = rec.root;
    for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        let tree = reader::load_tree(store, &cur)
            .map_err(|e| FailoverError::Invalid(format!("snapshot {}: {e}", &snapshot.id[..12])))?;
        match tree.get(comp).map(|e| &e.node) {
            Some(Node::Dir { tree }) => cur = *tree,
            _ => {
                return Err(FailoverError::Invalid(format!(
                    "snapshot {}: its path {} is not a directory in the snapshot",
                    &snapshot.id[..12],
                    String::from_utf8_lossy(&path)
                )))
            }
        }
    }
    Ok(cur)
}

/// Restores the data of `snapshot` (its dataset's path) onto standby
/// `agent` below its `[standby] root` at `below_root` (delta: only changed
/// files written, extras removed).
#[allow(clippy::too_many_arguments)]
pub fn restore_on_standby(
    cat: &Mutex<Catalog>,
    store: &Store,
    agent: &str,
    snapshot: &SnapshotRow,
    below_root: &str,
    failover_id: Option<i64>,
    actor: &str,
    waits: Waits,
) -> Result<JobRow, FailoverError> {
    let root = data_root(cat, store, snapshot)?;
    let job = JobRequest::Restore {
        snapshot: snapshot.id.clone(),
        root: root.to_hex(),
        below_root: Some(below_root.into()),
        dataset: None,
        only_changed: true,
        delete: true,
    };
    run_job(cat, agent, &job, failover_id, actor, waits)
}

/// Has the standby agent re-read what a restore of `snapshot` left below
/// its root at `below_root` and compare it with the snapshot's chunk hashes.
/// The job fails, listing the differences, when anything differs.
pub fn verify_on_standby(
    cat: &Mutex<Catalog>,
    store: &Store,
    agent: &str,
    snapshot: &SnapshotRow,
    below_root: &str,
    actor: &str,
    waits: Waits,
) -> Result<JobRow, FailoverError> {
    let root = data_root(cat, store, snapshot)?;
    let job = JobRequest::Verify {
        snapshot: snapshot.id.clone(),
        root: root.to_hex(),
        below_root: Some(below_root.into()),
        dataset: None,
    };
    run_job(cat, agent, &job, None, actor, waits)
}

/// Runs the action `name` of `agent`'s `[standby.actions]`; `env` names
/// must be `PULIH_*`. `waits.run` should be the step's timeout plus a margin.
pub fn run_agent_action(
    cat: &Mutex<Catalog>,
    agent: &str,
    name: &str,
    env: &[(String, String)],
    failover_id: Option<i64>,
    actor: &str,
    waits: Waits,
) -> Result<JobRow, FailoverError> {
    let job = JobRequest::RunAction { name: name.into(), env: env.to_vec() };
    run_job(cat, agent, &job, failover_id, actor, waits)
}

/// One recorded step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub started_at: i64,
    pub ended_at: i64,
    /// `ok` or `failed`.
    pub outcome: String,
    pub output: String,
}

/// A run being recorded.
struct Run<'a> {
    cat: &'a Mutex<Catalog>,
    store: &'a Store,
    id: i64,
    actor: String,
    waits: Waits,
    steps: Vec<StepRecord>,
    snapshots: Vec<serde_json::Value>,
}

fn bounded(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(STEP_OUTPUT)..].iter().collect()
}

impl Run<'_> {
    /// Runs and records one step.
    fn step<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<(T, String), FailoverError>,
    ) -> Result<T, FailoverError> {
        let started_at = now_secs();
        info!(failover = self.id, step = name, "step started");
        let r = f(self);
        let (outcome, output) = match &r {
            Ok((_, out)) => ("ok", out.clone()),
            Err(e) => ("failed", e.to_string()),
        };
        self.steps.push(StepRecord {
            name: name.into(),
            started_at,
            ended_at: now_secs(),
            outcome: outcome.into(),
            output: bounded(&output),
        });
        let (steps, snaps) = (serde_json::json!(self.steps), serde_json::json!(self.snapshots));
        if let Err(e) = lock(self.cat).update_failover(self.id, &steps, &snaps) {
            warn!(error = %e, "cannot record a failover step");
        }
        r.map(|(t, _)| t)
    }

    fn job(&mut self, agent: &str, job: &JobRequest) -> Result<JobRow, FailoverError> {
        run_job(self.cat, agent, job, Some(self.id), &self.actor, self.waits)
    }

    /// Runs activation or teardown steps: commands here, actions on `agent`.
    fn steps(
        &mut self,
        kind: &str,
        steps: &[Step],
        agent: &str,
        env: &[(String, String)],
    ) -> Result<(), FailoverError> {
        for s in steps {
            self.step(&format!("{kind}: {}", s.name), |run| match &s.run {
                StepRun::Command(hook) => {
                    let vars: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                    let o = pulih_core::hooks::run(hook, &vars, s.timeout, &AtomicBool::new(false));
                    if o.success {
                        Ok(((), format!("{}: {}", o.status, o.output)))
                    } else {
                        Err(FailoverError::Step {
                            step: s.name.clone(),
                            message: format!("{}: {}", o.status, bounded(&o.output)),
                        })
                    }
                }
                StepRun::AgentAction(action) => {
                    let job = JobRequest::RunAction { name: action.clone(), env: env.to_vec() };
                    let waits = Waits { pickup: run.waits.pickup, run: s.timeout + Duration::from_secs(30) };
                    let row = run_job(run.cat, agent, &job, Some(run.id), &run.actor, waits)?;
                    Ok(((), row.message.unwrap_or_default()))
                }
            })?;
        }
        Ok(())
    }
}

/// The newest snapshot of each dataset of `system` not marked damaged.
fn newest_snapshots(cat: &Catalog, system: &System) -> Result<Vec<SnapshotRow>, FailoverError> {
    let mut out = Vec::new();
    for d in &system.datasets {
        let rows = cat.snapshots(Some(d.agent.as_str()), Some(d.dataset.as_str()))?;
        let s = rows.into_iter().rev().find(|s| s.state == "ok").ok_or_else(|| {
            FailoverError::NotFound(format!(
                "no usable snapshot of {}/{} (none, or all marked damaged by scrub)",
                d.agent, d.dataset
            ))
        })?;
        out.push(s);
    }
    Ok(out)
}

fn base_env(system: &System, agent: &str, path: &str) -> Vec<(String, String)> {
    vec![
        ("PULIH_SYSTEM".into(), system.name.as_str().into()),
        ("PULIH_TARGET_AGENT".into(), agent.into()),
        ("PULIH_RESTORE_PATH".into(), path.into()),
    ]
}

/// Where the system's data goes below the standby root.
fn standby_path(system: &System) -> String {
    match &system.restore {
        RestorePlace::Standby { path, .. } => path.display().to_string(),
        RestorePlace::Sandbox => system.name.as_str().to_string(),
    }
}

fn join_rel(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else {
        format!("{}/{}", a.trim_end_matches('/'), b)
    }
}

/// Finishes the record and the audit trail, whatever the outcome.
fn finish(
    run: &Run<'_>,
    system: &str,
    kind: &str,
    target: &str,
    result: &Result<(Option<i64>, Option<i64>), FailoverError>,
) -> Result<FailoverRow, FailoverError> {
    let c = lock(run.cat);
    let (rto, rpo) = result.as_ref().map_or((None, None), |r| *r);
    let err = result.as_ref().err().map(ToString::to_string);
    c.end_failover(run.id, result.is_ok(), rto, rpo, err.as_deref())?;
    drop(c);
    let entry = NewAudit::new(
        &run.actor,
        kind,
        system,
        serde_json::json!({ "id": run.id, "target": target, "rto_achieved_secs": rto, "rpo_achieved_secs": rpo }),
    );
    let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
    lock(run.cat).audit(&entry, &outcome)?;
    lock(run.cat).failover(run.id)?.ok_or_else(|| FailoverError::NotFound(format!("failover {} vanished", run.id)))
}

fn begin<'a>(
    cat: &'a Mutex<Catalog>,
    store: &'a Store,
    system: &str,
    kind: &str,
    target: &str,
    actor: &str,
    waits: Waits,
) -> Result<Run<'a>, FailoverError> {
    let entry = NewAudit::new(actor, &format!("{kind}-start"), system, serde_json::json!({ "target": target }));
    let id = lock(cat).audited(&entry, |c| c.begin_failover(system, kind, target, actor))?;
    info!(failover = id, %system, %target, kind, "started");
    Ok(Run { cat, store, id, actor: actor.into(), waits, steps: Vec::new(), snapshots: Vec::new() })
}

/// Fails `system` over to a standby agent (`to`, or the system's
/// `[restore] standby`). Returns the record (also when it failed: check
/// `outcome`); `Err` only when it could not start or be recorded.
pub fn failover(
    cat: &Mutex<Catalog>,
    store: &Store,
    systems: &Systems,
    system: &str,
    to: Option<&str>,
    actor: &str,
    waits: Waits,
) -> Result<FailoverRow, FailoverError> {
    let sys = systems.get(system).ok_or_else(|| FailoverError::NotFound(format!("no system named {system:?}")))?;
    let target = match (to, &sys.restore) {
        (Some(t), _) => t.to_string(),
        (None, RestorePlace::Standby { agent, .. }) => agent.to_string(),
        (None, RestorePlace::Sandbox) => {
            return Err(FailoverError::Invalid(format!(
                "system {system} has no [restore] standby agent; name one with --to"
            )))
        }
    };
    pulih_core::AgentName::new(&target).map_err(|e| FailoverError::Invalid(format!("--to {target:?}: {e}")))?;
    let mut run = begin(cat, store, system, "failover", &target, actor, waits)?;
    let started = now_secs();
    let base = standby_path(sys);
    let result = (|| {
        let snaps = run.step("choose snapshots", |_| {
            let s = newest_snapshots(&lock(cat), sys)?;
            let text = s.iter().map(|s| format!("{}/{} {}", s.agent, s.dataset, &s.id[..12])).collect::<Vec<_>>();
            Ok((s, text.join(", ")))
        })?;
        let oldest = snaps.iter().map(|s| s.started_ns / 1_000_000_000).min().unwrap_or(started);
        let rpo = (started - oldest).max(0);
        run.snapshots = snaps
            .iter()
            .map(|s| serde_json::json!({"agent": s.agent, "dataset": s.dataset, "snapshot": s.id, "data_time": s.started_ns / 1_000_000_000}))
            .collect();
        for (d, s) in sys.datasets.iter().zip(&snaps) {
            let dest = join_rel(&base, &d.subdir);
            run.step(&format!("restore {}/{} onto {target}:{dest}", d.agent, d.dataset), |run| {
                let row = restore_on_standby(
                    run.cat,
                    run.store,
                    &target,
                    s,
                    &dest,
                    Some(run.id),
                    &run.actor.clone(),
                    run.waits,
                )?;
                Ok(((), row.message.unwrap_or_default()))
            })?;
        }
        run.steps("activation", &sys.activation, &target, &base_env(sys, &target, &base))?;
        let rto = now_secs() - started;
        run.step("mark running at the standby", |run| {
            let entry = NewAudit::new(
                &run.actor,
                "system-running-at",
                system,
                serde_json::json!({ "agent": target, "failover": run.id }),
            );
            lock(run.cat).audited(&entry, |c| c.set_system_running(system, &target, run.id))?;
            Ok(((), format!("{system} runs at {target}")))
        })?;
        for d in &sys.datasets {
            let dest = join_rel(&base, &d.subdir);
            run.step(&format!("protect {dest} as {target}/{}", d.dataset), |run| {
                let job = JobRequest::Protect {
                    dataset: d.dataset.to_string(),
                    relative_path: dest.clone(),
                    mode: "continuous".into(),
                };
                let row = run.job(&target, &job)?;
                Ok(((), row.message.unwrap_or_default()))
            })?;
        }
        Ok((Some(rto), Some(rpo)))
    })();
    finish(&run, system, "failover", &target, &result)
}

/// Brings `system` back from the standby it runs at to the rebuilt primary
/// `to` (whose agent has the system's datasets configured and `[standby]`
/// enabled).
pub fn failback(
    cat: &Mutex<Catalog>,
    store: &Store,
    systems: &Systems,
    system: &str,
    to: &str,
    actor: &str,
    waits: Waits,
) -> Result<FailoverRow, FailoverError> {
    let sys = systems.get(system).ok_or_else(|| FailoverError::NotFound(format!("no system named {system:?}")))?;
    let standby = lock(cat).system_state(system)?.map(|s| s.running_at).filter(|a| a != to).ok_or_else(|| {
        FailoverError::Invalid(format!("system {system} is not running at a standby; nothing to fail back"))
    })?;
    pulih_core::AgentName::new(to).map_err(|e| FailoverError::Invalid(format!("--to {to:?}: {e}")))?;
    let mut run = begin(cat, store, system, "failback", to, actor, waits)?;
    let started = now_secs();
    let result = (|| {
        // Sync, teardown at the DRC, final short sync: the service is down
        // only for the last (small) delta.
        let mut written: BTreeMap<String, u64> = BTreeMap::new();
        let mut sync = |run: &mut Run<'_>, phase: &str| -> Result<i64, FailoverError> {
            let mut oldest = i64::MAX;
            for d in &sys.datasets {
                let ds = d.dataset.to_string();
                let snap = run.step(&format!("{phase}: snapshot {standby}/{ds}"), |run| {
                    let row = run.job(&standby, &JobRequest::SnapshotNow { dataset: ds.clone() })?;
                    let id = row.result.as_ref().and_then(|r| r["snapshot"].as_str()).map(str::to_owned).ok_or_else(
                        || FailoverError::Invalid(format!("agent {standby} reported no snapshot id for {ds}")),
                    )?;
                    let snap = lock(run.cat).resolve_snapshot(&id, None, None)?;
                    Ok((snap, format!("snapshot {}", &id[..12.min(id.len())])))
                })?;
                oldest = oldest.min(snap.started_ns / 1_000_000_000);
                run.snapshots.push(serde_json::json!({"phase": phase, "agent": snap.agent, "dataset": snap.dataset, "snapshot": snap.id}));
                run.step(&format!("{phase}: delta restore {ds} onto {to}"), |run| {
                    let root = data_root(run.cat, run.store, &snap)?;
                    let job = JobRequest::Restore {
                        snapshot: snap.id.clone(),
                        root: root.to_hex(),
                        below_root: None,
                        dataset: Some(ds.clone()),
                        only_changed: true,
                        delete: true,
                    };
                    let row = run.job(to, &job)?;
                    let files = row.result.as_ref().and_then(|r| r["stats"]["files"].as_u64()).unwrap_or(0);
                    *written.entry(format!("{phase}:{ds}")).or_default() += files;
                    Ok(((), row.message.unwrap_or_default()))
                })?;
            }
            Ok(oldest)
        };
        sync(&mut run, "sync")?;
        let env_drc = base_env(sys, &standby, &standby_path(sys));
        run.steps("teardown at the DRC", &sys.teardown, &standby, &env_drc)?;
        let teardown_done = now_secs();
        let final_data = sync(&mut run, "final sync")?;
        run.steps("activation at the primary", &sys.activation, to, &base_env(sys, to, ""))?;
        let rto = now_secs() - started;
        // Changes after the final snapshot are lost only if the service
        // still wrote after teardown: the RPO is that gap (normally 0).
        let rpo = (teardown_done - final_data).max(0);
        run.step("mark running at the primary", |run| {
            let entry = NewAudit::new(
                &run.actor,
                "system-running-at",
                system,
                serde_json::json!({ "agent": to, "failover": run.id }),
            );
            lock(run.cat).audited(&entry, |c| c.set_system_running(system, to, run.id))?;
            Ok(((), format!("{system} runs at {to}; files written per sync: {written:?}")))
        })?;
        for d in &sys.datasets {
            let ds = d.dataset.to_string();
            run.step(&format!("unprotect {standby}/{ds}"), |run| {
                let row = run.job(&standby, &JobRequest::Unprotect { dataset: ds.clone() })?;
                Ok(((), row.message.unwrap_or_default()))
            })?;
        }
        Ok((Some(rto), Some(rpo)))
    })();
    finish(&run, system, "failback", to, &result)
}
