//! Where a drill restores a system, and how it reaches an agent.
//!
//! [`restore_place`] is the ONE place that decides how a system's datasets
//! are restored: into the controller's sandbox, or onto a standby agent
//! through the standby job queue ([`crate::failover::restore_on_standby`]).
//! [`agent_action`] is the one place checks and steps reach an agent's
//! declared actions ([`crate::failover::run_agent_action`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use pulih_core::TreeId;

use crate::catalog::{Catalog, SnapshotRow};
use crate::restore::RestoreError;
use crate::store::Store;
use crate::systems::{DatasetRef, RestorePlace, System};

/// Where a system was restored.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The system's restore location (`PULIH_RESTORE_DIR` of checks).
    pub dir: PathBuf,
    /// Per dataset: its directory below `dir`, and the snapshot path that
    /// was restored into it (empty: the whole snapshot).
    pub datasets: Vec<RestoredDataset>,
    pub files: u64,
    pub bytes: u64,
}

/// One dataset as restored.
#[derive(Debug, Clone)]
pub struct RestoredDataset {
    pub dir: PathBuf,
    pub snapshot: SnapshotRow,
    pub root: TreeId,
    pub subpath: Vec<Vec<u8>>,
    /// On a standby agent: the agent and the directory below its
    /// `[standby] root` (the data is on that host, not here).
    pub standby: Option<(String, PathBuf)>,
}

/// Why a restore did not complete.
#[derive(Debug)]
pub enum PlaceError {
    /// The restore place is not supported by this build.
    NotAvailable(String),
    /// A stored chunk or tree no longer matches its hash: verification
    /// failed while restoring `snapshot`.
    Damaged { snapshot: String, root: TreeId, message: String },
    /// Anything else (I/O, a snapshot record that cannot be read).
    Failed(String),
}

impl std::fmt::Display for PlaceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlaceError::NotAvailable(m) | PlaceError::Failed(m) => f.write_str(m),
            PlaceError::Damaged { snapshot, message, .. } => write!(f, "snapshot {snapshot}: {message}"),
        }
    }
}

/// The snapshot path restored for a dataset: a dataset of one source path
/// comes back with that path's content directly in its directory; one of
/// several paths keeps them as on the source host.
pub fn dataset_subpath(cat: &Catalog, snapshot: &str) -> Result<Vec<Vec<u8>>, String> {
    let record = cat.snapshot_record(snapshot).map_err(|e| e.to_string())?;
    Ok(match record.paths.as_slice() {
        [one] => one.split(|b| *b == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect(),
        _ => Vec::new(),
    })
}

/// Restores every dataset of `sys` for drill `drill_id`.
pub fn restore_place(
    store: &Store,
    cat: &std::sync::Mutex<Catalog>,
    sandbox: &Path,
    sys: &System,
    picks: &[(DatasetRef, SnapshotRow)],
) -> Result<Restored, PlaceError> {
    if let RestorePlace::Standby { agent, path } = &sys.restore {
        return restore_on_standby(store, cat, agent.as_str(), path, picks);
    }
    let dir = sandbox.join(sys.name.as_str());
    std::fs::create_dir_all(&dir).map_err(|e| PlaceError::Failed(format!("{}: {e}", dir.display())))?;
    for p in [sandbox, dir.as_path()] {
        // Restored data of an agency: the controller's user only.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PlaceError::Failed(format!("{}: {e}", p.display())))?;
    }
    let mut out = Restored { dir: dir.clone(), datasets: Vec::new(), files: 0, bytes: 0 };
    for (d, snap) in picks {
        let root: TreeId =
            snap.root_tree.parse().map_err(|e| PlaceError::Failed(format!("snapshot {}: {e}", snap.id)))?;
        let subpath = {
            let c = cat.lock().unwrap_or_else(|e| e.into_inner());
            dataset_subpath(&c, &snap.id).map_err(PlaceError::Failed)?
        };
        let dest = dir.join(&d.subdir);
        match crate::restore::restore(store, &root, &subpath, &dest, Default::default()) {
            Ok(stats) => {
                out.files += stats.files;
                out.bytes += stats.bytes;
            }
            // A blob that no longer matches its hash, or is gone from the store.
            Err(e @ (RestoreError::Damaged { .. } | RestoreError::Source { .. })) => {
                return Err(PlaceError::Damaged { snapshot: snap.id.clone(), root, message: e.to_string() })
            }
            Err(e) => return Err(PlaceError::Failed(format!("restoring {}/{}: {e}", d.agent, d.dataset))),
        }
        out.datasets.push(RestoredDataset { dir: dest, snapshot: snap.clone(), root, subpath, standby: None });
    }
    Ok(out)
}

/// Restores every dataset onto the standby agent, below its restore root
/// at `path/<subdir>` (a delta restore: what is already there and equal is
/// kept). The agent's writer rehashes every blob before writing it.
fn restore_on_standby(
    store: &Store,
    cat: &std::sync::Mutex<Catalog>,
    agent: &str,
    path: &Path,
    picks: &[(DatasetRef, SnapshotRow)],
) -> Result<Restored, PlaceError> {
    let dir = PathBuf::from(format!("{agent}:")).join(path);
    let mut out = Restored { dir: dir.clone(), datasets: Vec::new(), files: 0, bytes: 0 };
    for (d, snap) in picks {
        let root: TreeId =
            snap.root_tree.parse().map_err(|e| PlaceError::Failed(format!("snapshot {}: {e}", snap.id)))?;
        let below = path.join(&d.subdir);
        let job = crate::failover::restore_on_standby(
            cat,
            store,
            agent,
            snap,
            &below.to_string_lossy(),
            None,
            "drill",
            crate::failover::Waits::default(),
        )
        .map_err(|e| PlaceError::Failed(format!("restoring {}/{} onto {agent}: {e}", d.agent, d.dataset)))?;
        let stats = job.result.as_ref().and_then(|r| r.get("stats"));
        let n = |k: &str| stats.and_then(|s| s.get(k)).and_then(|v| v.as_u64()).unwrap_or(0);
        out.files += n("files") + n("unchanged");
        out.bytes += n("bytes");
        out.datasets.push(RestoredDataset {
            dir: dir.join(&d.subdir),
            snapshot: snap.clone(),
            root,
            subpath: Vec::new(),
            standby: Some((agent.to_owned(), below)),
        });
    }
    Ok(out)
}

/// Has the standby agent re-read a dataset it restored and compare it with
/// the snapshot ([`pulih_core::restored`] on the agent's host).
/// `Err` carries the agent's message, with the differences it found.
pub fn verify_on_standby(
    store: &Store,
    cat: &std::sync::Mutex<Catalog>,
    agent: &str,
    below: &Path,
    snapshot: &SnapshotRow,
) -> Result<pulih_core::restored::Checked, String> {
    let job = crate::failover::verify_on_standby(
        cat,
        store,
        agent,
        snapshot,
        &below.to_string_lossy(),
        "drill",
        crate::failover::Waits::default(),
    )
    .map_err(|e| format!("verifying on {agent}: {e}"))?;
    if job.state != "done" {
        return Err(job.message.unwrap_or_else(|| format!("verify job {} {}", job.id, job.state)));
    }
    job.result
        .and_then(|r| r.get("checked").cloned())
        .and_then(|c| serde_json::from_value(c).ok())
        .ok_or_else(|| format!("verify job {} on {agent} reported no result", job.id))
}

/// Runs an action declared in the standby agent's `agent.toml` through the
/// standby job queue. Returns `(passed, output)`.
pub fn agent_action(
    cat: &std::sync::Mutex<Catalog>,
    sys: &System,
    action: &str,
    env: &[(&str, String)],
    timeout: std::time::Duration,
    _cancel: &AtomicBool,
) -> (bool, String) {
    let RestorePlace::Standby { agent, .. } = &sys.restore else {
        // systems.rs refuses agent actions without a standby; kept for safety.
        return (false, format!("agent action {action:?}: the system has no standby agent"));
    };
    // Only PULIH_* variables reach an agent.
    let env: Vec<(String, String)> =
        env.iter().filter(|(k, _)| k.starts_with("PULIH_")).map(|(k, v)| (k.to_string(), v.clone())).collect();
    let waits = crate::failover::Waits { run: timeout + std::time::Duration::from_secs(30), ..Default::default() };
    match crate::failover::run_agent_action(cat, agent.as_str(), action, &env, None, "drill", waits) {
        Ok(job) => {
            let output = job
                .result
                .as_ref()
                .and_then(|r| r.get("output"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| job.message.clone().unwrap_or_default());
            (job.state == "done", output)
        }
        Err(e) => (false, format!("agent action {action:?} on {agent}: {e}")),
    }
}

/// Removes a restored tree even where the snapshot made directories
/// read-only (their mode came from the source host). Symlinks are removed,
/// never followed.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    fn open_up(p: &Path) -> std::io::Result<()> {
        let md = std::fs::symlink_metadata(p)?;
        if md.is_dir() {
            if md.permissions().mode() & 0o700 != 0o700 {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
            }
            for e in std::fs::read_dir(p)? {
                open_up(&e?.path())?;
            }
        }
        Ok(())
    }
    match open_up(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    }
    std::fs::remove_dir_all(path)
}
