//! Storage lifecycle operations on a data directory, as the CLI, the HTTP
//! API and the scheduler inside `serve` call them: forget, prune (retention
//! then GC), gc, scrub, rebuild. Each opens its own store handle and
//! catalog connection, so it runs beside `serve` (rebuild excepted), and
//! takes the locks it needs: GC takes the data directory's GC lock whoever
//! calls it, so a GC over the API or from the scheduler excludes a local
//! `pulih-controller gc` exactly as two local ones exclude each other.
//!
//! Also here: the tables the CLI and `pulihctl` print, so both show the
//! same thing, and [`run_scheduled`], the prune and GC loop of `serve`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use crate::catalog::{now_secs, rfc3339_ns, Catalog, DamageRow, NewAudit, SnapshotRow};
use crate::datadir::DataDir;
use crate::gc::{self, GcOptions, GcReport};
use crate::retention::{self, DatasetPlan};
use crate::scrub::{self, ScrubReport};

/// Audit actor of what `serve` runs on its own schedule.
pub const SCHEDULER: &str = "scheduler";
/// `meta` key: Unix seconds of the end of the last real prune.
pub const META_PRUNE_AT: &str = "prune_last_at";
/// `meta` key: snapshots the last real prune removed.
pub const META_PRUNE_REMOVED: &str = "prune_last_removed";

/// What `prune` decided and did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PruneOutcome {
    pub dry_run: bool,
    /// Every dataset's decisions, newest snapshot first.
    pub datasets: Vec<DatasetPlan>,
    /// Ids removed (or, dry, that would be).
    pub removed: Vec<String>,
    /// The garbage collection that followed (none for a dry run or `run_gc = false`).
    pub gc: Option<GcReport>,
}

/// The catalog, for a command that changes the catalog or the store:
/// refused like `serve` refuses it when it is older than the data
/// directory (F18), so a GC or prune working from an older copy cannot
/// delete what the newest catalog still needs.
fn catalog_to_change(dd: &DataDir) -> Result<Catalog> {
    let cat = dd.catalog()?;
    crate::witness::check(&cat, &dd.store_path())?;
    Ok(cat)
}

/// Forgets snapshots given by full id or unique prefix (not `latest`).
pub fn forget(dd: &DataDir, specs: &[String]) -> Result<Vec<SnapshotRow>> {
    let mut cat = catalog_to_change(dd)?;
    let mut ids = Vec::new();
    for s in specs {
        if s == "latest" {
            bail!("forget needs snapshot ids, not 'latest'");
        }
        ids.push(cat.resolve_snapshot(s, None, None)?.id);
    }
    Ok(retention::forget(&mut cat, &dd.store()?, &ids)?)
}

/// Applies the `[[retention]]` policies of `controller.toml` (optionally
/// to one agent and/or dataset), then collects garbage when `run_gc`.
pub fn prune(
    dd: &DataDir,
    dry_run: bool,
    agent: Option<&str>,
    dataset: Option<&str>,
    run_gc: bool,
) -> Result<PruneOutcome> {
    let cfg = dd.config()?;
    let mut cat = if dry_run { dd.catalog()? } else { catalog_to_change(dd)? };
    let datasets = retention::plan_all(&cat, &cfg.retention, cfg.utc_offset(), pulih_core::now_ns(), agent, dataset)?;
    let removed = retention::removals(&datasets);
    if !dry_run {
        if !removed.is_empty() {
            retention::forget(&mut cat, &dd.store()?, &removed)?;
        }
        // For the metrics: when retention last ran and what it removed.
        cat.set_meta(META_PRUNE_AT, &now_secs().to_string())?;
        cat.set_meta(META_PRUNE_REMOVED, &removed.len().to_string())?;
    }
    drop(cat);
    let gc = if dry_run || !run_gc { None } else { Some(collect(dd, None, false)?) };
    Ok(PruneOutcome { dry_run, datasets, removed, gc })
}

/// Garbage collection with `[gc] grace` of `controller.toml`, or `grace_secs`.
pub fn collect(dd: &DataDir, grace_secs: Option<i64>, dry_run: bool) -> Result<GcReport> {
    let cfg = dd.config()?;
    let grace_secs = grace_secs.unwrap_or_else(|| cfg.gc_grace_secs());
    let _lock = dd.lock_for_gc()?;
    let store = dd.store()?;
    let mut cat = catalog_to_change(dd).context("garbage collection did not start (nothing changed)")?;
    gc::collect(&store, &mut cat, &GcOptions { grace_secs, dry_run }).map_err(|e| {
        if e.is_disk_full() {
            anyhow::anyhow!(
                "garbage collection stopped, the disk is full; nothing was lost (store and catalog are consistent): {e}"
            )
        } else {
            anyhow::anyhow!("garbage collection stopped; store and catalog are consistent: {e}")
        }
    })
}

/// Scrubs every blob at most `rate` bytes per second (`None`: unlimited).
pub fn scrub(dd: &DataDir, rate: Option<u64>) -> Result<ScrubReport> {
    let store = dd.store()?;
    let mut cat = catalog_to_change(dd)?;
    Ok(scrub::scrub(&store, &mut cat, rate, &|| false)?)
}

/// The audit detail of a GC run (what the CLI, the API and the scheduler record).
pub fn gc_detail(report: &Result<GcReport>) -> serde_json::Value {
    report.as_ref().map_or(serde_json::json!({}), |r| {
        serde_json::json!({ "trees_removed": r.trees_removed, "chunks_removed": r.chunks_removed,
            "bytes_removed": r.bytes_removed })
    })
}

/// Appends an audit row for an action that already ran, on its own
/// catalog connection.
pub fn record<T, E: std::fmt::Display>(
    dd: &DataDir,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    outcome: &Result<T, E>,
) -> Result<()> {
    let entry = NewAudit::new(actor, action, target, detail);
    dd.catalog()?.audit(&entry, outcome)?;
    Ok(())
}

impl PruneOutcome {
    /// Every dataset's decisions with their reasons, then a summary line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for p in &self.datasets {
            let rule = p
                .rule
                .map_or("no [[retention]] matches: keep all".to_string(), |i| format!("[[retention]] #{}", i + 1));
            out.push_str(&format!("{}/{} ({rule})\n", p.agent, p.dataset));
            for d in &p.decisions {
                out.push_str(&format!(
                    "  {} {} {}  {}\n",
                    if d.keep { "keep  " } else { "remove" },
                    &d.id[..12.min(d.id.len())],
                    rfc3339_ns(d.time_ns),
                    d.reasons.join(", ")
                ));
            }
        }
        let verb = if self.dry_run { "would be removed (dry run)" } else { "removed" };
        out.push_str(&format!("{} snapshot(s) {verb}", self.removed.len()));
        if let Some(g) = &self.gc {
            out.push('\n');
            out.push_str(&g.summary());
        }
        out
    }
}

impl GcReport {
    /// One line for people.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run { "would remove" } else { "removed" };
        format!(
            "GC: {} snapshot(s), {} tree(s) and {} chunk(s) reachable, {} recent blob(s) kept (grace); {verb} {} tree(s) and {} chunk(s), {} in {:.1} s",
            self.snapshots,
            self.reachable_trees,
            self.reachable_chunks,
            self.kept_recent,
            self.trees_removed,
            self.chunks_removed,
            crate::units::human_bytes(self.bytes_removed),
            self.seconds
        )
    }
}

impl DamageRow {
    /// The damage table.
    pub fn table(rows: &[Self]) -> String {
        let mut out = format!("{:<6} {:<64} {:<9} {:<21} DETAIL", "KIND", "ID", "STATE", "FOUND");
        for r in rows {
            out.push_str(&format!(
                "\n{:<6} {:<64} {:<9} {:<21} {}",
                r.kind,
                r.id,
                r.state,
                rfc3339_ns(r.found_at.saturating_mul(1_000_000_000)),
                r.detail
            ));
        }
        out
    }
}

/// When the scheduled prune and GC are next due: an interval after their
/// last run, or after the catalog was created.
fn first_due(dd: &DataDir, prune_every: Option<i64>, gc_every: Option<i64>) -> Result<(Option<i64>, Option<i64>)> {
    let cat: Catalog = dd.catalog()?;
    let created = cat.meta("created_at")?.and_then(|v| v.parse().ok()).unwrap_or_else(now_secs);
    let last_prune = cat.meta(META_PRUNE_AT)?.and_then(|v| v.parse::<i64>().ok());
    let last_gc = cat.gc_runs(1)?.first().map(|r| r.finished_at.unwrap_or(r.started_at));
    Ok((prune_every.map(|e| last_prune.unwrap_or(created) + e), gc_every.map(|e| last_gc.unwrap_or(created) + e)))
}

/// The prune and garbage collection scheduled inside `serve`: each runs
/// every interval (`None`: disabled) after its previous run, prune first
/// when both are due (so GC frees what prune forgot), until `stop` is set.
/// Each run is audited with actor [`SCHEDULER`]; a failure (e.g. a local
/// `gc` holding the GC lock) is logged and audited, and tried again one
/// interval later. A GC in progress finishes before `stop` is seen.
pub fn run_scheduled(dd: &DataDir, prune_every: Option<i64>, gc_every: Option<i64>, stop: &crate::stop::Stop) {
    if prune_every.is_none() && gc_every.is_none() {
        return;
    }
    let stopped = || stop.is_stopped();
    let (mut next_prune, mut next_gc) = first_due(dd, prune_every, gc_every).unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "scheduled prune/gc: cannot read the catalog; first run in one interval");
        (prune_every.map(|e| now_secs() + e), gc_every.map(|e| now_secs() + e))
    });
    while !stopped() {
        let due = next_prune.unwrap_or(i64::MAX).min(next_gc.unwrap_or(i64::MAX));
        if now_secs() < due {
            stop.sleep(Duration::from_secs(1));
            continue;
        }
        if let (Some(at), Some(every)) = (next_prune, prune_every) {
            if now_secs() >= at {
                scheduled_prune(dd);
                next_prune = Some(now_secs() + every);
            }
        }
        if stopped() {
            break;
        }
        if let (Some(at), Some(every)) = (next_gc, gc_every) {
            if now_secs() >= at {
                scheduled_gc(dd);
                next_gc = Some(now_secs() + every);
            }
        }
    }
}

fn scheduled_prune(dd: &DataDir) {
    let outcome = prune(dd, false, None, None, false);
    let removed = outcome.as_ref().map(|o| o.removed.clone()).unwrap_or_default();
    let detail = serde_json::json!({ "agent": null, "dataset": null, "removed": removed, "gc": false });
    if let Err(e) = record(dd, SCHEDULER, "prune", "*", detail, &outcome.as_ref().map_err(|e| format!("{e:#}"))) {
        warn!(error = %format!("{e:#}"), "scheduled prune could not be recorded in the audit log");
    }
    match outcome {
        Ok(o) => info!(removed = o.removed.len(), "scheduled prune done"),
        Err(e) => warn!(error = %format!("{e:#}"), "scheduled prune failed"),
    }
}

fn scheduled_gc(dd: &DataDir) {
    let report = collect(dd, None, false);
    if let Err(e) =
        record(dd, SCHEDULER, "gc", "store", gc_detail(&report), &report.as_ref().map_err(|e| format!("{e:#}")))
    {
        warn!(error = %format!("{e:#}"), "scheduled garbage collection could not be recorded in the audit log");
    }
    match report {
        Ok(r) => info!(
            chunks = r.chunks_removed,
            trees = r.trees_removed,
            bytes = r.bytes_removed,
            "scheduled garbage collection done"
        ),
        Err(e) => warn!(error = %format!("{e:#}"), "scheduled garbage collection failed"),
    }
}
