//! Storage lifecycle operations on a data directory, as the CLI and the
//! HTTP API call them: forget, prune (retention then GC), gc, scrub,
//! rebuild. Each opens its own store handle and catalog connection, so it
//! runs beside `serve` (rebuild excepted), and takes the locks it needs.

use anyhow::{bail, Context, Result};

use crate::catalog::SnapshotRow;
use crate::datadir::DataDir;
use crate::gc::{self, GcOptions, GcReport};
use crate::retention::{self, DatasetPlan};
use crate::scrub::{self, ScrubReport};

/// What `prune` decided and did.
#[derive(Debug, serde::Serialize)]
pub struct PruneOutcome {
    pub dry_run: bool,
    /// Every dataset's decisions, newest snapshot first.
    pub datasets: Vec<DatasetPlan>,
    /// Ids removed (or, dry, that would be).
    pub removed: Vec<String>,
    /// The garbage collection that followed (none for a dry run or `run_gc = false`).
    pub gc: Option<GcReport>,
}

/// Forgets snapshots given by full id or unique prefix (not `latest`).
pub fn forget(dd: &DataDir, specs: &[String]) -> Result<Vec<SnapshotRow>> {
    let mut cat = dd.catalog()?;
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
    let mut cat = dd.catalog()?;
    let datasets = retention::plan_all(&cat, &cfg.retention, cfg.utc_offset(), pulih_core::now_ns(), agent, dataset)?;
    let removed = retention::removals(&datasets);
    if !dry_run && !removed.is_empty() {
        retention::forget(&mut cat, &dd.store()?, &removed)?;
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
    let mut cat = dd.catalog().context("garbage collection did not start (nothing changed)")?;
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
    let mut cat = dd.catalog()?;
    Ok(scrub::scrub(&store, &mut cat, rate, &|| false)?)
}
