//! Continuous mode's watcher: inotify (through `notify`) on every path of a
//! dataset, turned into the set of changed paths the next snapshot walks.
//!
//! The watcher is a hint, never the source of truth. Whenever it may have
//! missed something — the kernel queue overflowed, a watch could not be
//! added (the `fs.inotify.max_user_watches` limit), the backend reported an
//! error — the dataset falls back to a full rescan, which compares every
//! file with the change cache; a periodic full rescan covers what no event
//! reports at all (changes made while the agent was down are caught by the
//! full snapshot every start begins with).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use notify::{RecursiveMode, Watcher as _};

/// What a dataset's watcher reports to the daemon.
#[derive(Debug)]
pub enum WatchEvent {
    /// Something changed at these paths.
    Changed { dataset: String, paths: Vec<PathBuf> },
    /// Events may have been lost; the next snapshot must walk everything.
    Lost { dataset: String, reason: String },
}

/// An active watch on one dataset; dropping it stops watching.
pub struct DatasetWatcher {
    _inner: notify::RecommendedWatcher,
}

impl std::fmt::Debug for DatasetWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatasetWatcher")
    }
}

/// Starts watching `paths` recursively. Fails (with a reason for the log)
/// when a watch cannot be set up, e.g. at the inotify limits.
pub fn watch<M>(dataset: &str, paths: &[PathBuf], tx: Sender<M>) -> Result<DatasetWatcher, String>
where
    M: From<WatchEvent> + Send + 'static,
{
    let name = dataset.to_owned();
    let handler = move |res: notify::Result<notify::Event>| {
        let ev = match res {
            Ok(ev) if ev.need_rescan() => {
                WatchEvent::Lost { dataset: name.clone(), reason: "the kernel's event queue overflowed".into() }
            }
            Ok(ev) if ev.paths.is_empty() => return,
            // Reads (access events) change nothing.
            Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => return,
            Ok(ev) => WatchEvent::Changed { dataset: name.clone(), paths: ev.paths },
            Err(e) => WatchEvent::Lost { dataset: name.clone(), reason: describe(&e) },
        };
        let _ = tx.send(M::from(ev));
    };
    let mut w = notify::recommended_watcher(handler).map_err(|e| describe(&e))?;
    for p in paths {
        w.watch(p, RecursiveMode::Recursive).map_err(|e| format!("watching {}: {}", p.display(), describe(&e)))?;
    }
    Ok(DatasetWatcher { _inner: w })
}

fn describe(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "the inotify watch limit was reached (raise fs.inotify.max_user_watches)".into()
        }
        _ => e.to_string(),
    }
}

/// Adds `path` and all its ancestors to `dirty`: the walker must enter
/// every directory on the way to a change.
pub fn mark(dirty: &mut HashSet<PathBuf>, path: &Path) {
    let mut p = Some(path);
    while let Some(x) = p {
        if !dirty.insert(x.to_owned()) {
            break; // its ancestors are in already
        }
        p = x.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[test]
    fn mark_adds_ancestors_once() {
        let mut d = HashSet::new();
        mark(&mut d, Path::new("/srv/a/b/c.txt"));
        mark(&mut d, Path::new("/srv/a/x"));
        let mut v: Vec<_> = d.iter().map(|p| p.display().to_string()).collect();
        v.sort();
        assert_eq!(v, ["/", "/srv", "/srv/a", "/srv/a/b", "/srv/a/b/c.txt", "/srv/a/x"]);
    }

    #[test]
    fn a_write_in_a_new_subdirectory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel::<WatchEvent>();
        let _w = watch("d", &[dir.path().to_owned()], tx).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let target = dir.path().join("sub/f.txt");
        std::fs::write(&target, b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = HashSet::new();
        while Instant::now() < deadline && !seen.contains(&target) {
            if let Ok(WatchEvent::Changed { paths, .. }) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.extend(paths);
            }
        }
        assert!(seen.contains(&target), "events: {seen:?}");
    }
}
