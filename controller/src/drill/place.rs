//! Where a drill restores a system, and how it reaches an agent.
//!
//! [`restore_place`] is the ONE place that decides how a system's datasets
//! are restored: into the controller's sandbox today; onto a standby agent
//! once the standby role exists ([`RestorePlace::Standby`] answers "not
//! available yet" until then). [`agent_action`] is the one place checks and
//! steps reach an agent's declared actions. Wiring the standby engine in
//! means replacing the two `not available yet` branches.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use pulih_core::TreeId;

use crate::catalog::{Catalog, SnapshotRow};
use crate::restore::RestoreError;
use crate::store::Store;
use crate::systems::{DatasetRef, RestorePlace, System};

/// The message of everything the standby role will bring.
pub const NOT_AVAILABLE: &str = "not available yet: standby restores come with failover";

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
    match &sys.restore {
        RestorePlace::Sandbox => {}
        RestorePlace::Standby { agent, .. } => {
            return Err(PlaceError::NotAvailable(format!("restore onto standby agent {agent}: {NOT_AVAILABLE}")))
        }
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
        match crate::restore::restore(store, &root, &subpath, &dest) {
            Ok(stats) => {
                out.files += stats.files;
                out.bytes += stats.bytes;
            }
            Err(RestoreError::Read { path, source }) if source.is_damage() => {
                return Err(PlaceError::Damaged {
                    snapshot: snap.id.clone(),
                    root,
                    message: format!("{path}: {source}"),
                })
            }
            Err(e) => return Err(PlaceError::Failed(format!("restoring {}/{}: {e}", d.agent, d.dataset))),
        }
        out.datasets.push(RestoredDataset { dir: dest, snapshot: snap.clone(), root, subpath });
    }
    Ok(out)
}

/// Runs an action declared in the standby agent's `agent.toml`.
/// Returns `(passed, output)`.
pub fn agent_action(sys: &System, action: &str, _cancel: &AtomicBool) -> (bool, String) {
    let on = match &sys.restore {
        RestorePlace::Standby { agent, .. } => agent.to_string(),
        RestorePlace::Sandbox => "(no standby agent)".into(),
    };
    (false, format!("agent action {action:?} on {on}: {NOT_AVAILABLE}"))
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
