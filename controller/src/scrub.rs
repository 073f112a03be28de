//! Scrub: re-read, decompress (bounded) and rehash every stored blob at a
//! limited rate, record damage per blob, and mark every snapshot that
//! reaches a damaged blob (F22).
//!
//! Flow and failure paths:
//! * A chunk that fails is recorded `damaged` in `blob_damage`; the agents
//!   that uploaded it are asked to resend it ([`Catalog::repair_wanted`]),
//!   has-chunks answers "missing" for it, and a verified copy received by
//!   any upload session replaces the file and marks it `repaired`
//!   (see `crate::session`). Snapshots that no longer reach any damaged
//!   blob are then marked `ok` again ([`refresh_damaged_snapshots`]).
//! * A tree that fails is recorded `lost`: agents are not asked for trees.
//!   Its snapshots stay `damaged` (never silently good) unless an upload
//!   happens to send the identical tree again, which repairs it too.
//! * A file that is missing is damage only if its catalog row still exists
//!   under the write lock (a GC batch may be moving it away).
//! * An I/O error of the store as a whole (not a damaged blob) stops the
//!   run, which is recorded `failed`.
//!
//! Scrub opens its own catalog connection and never holds the server's
//! catalog mutex; SQLite serializes its few writes with the sessions'.
//!
//! Inside `serve`, one [`ScrubTracker`] is shared by the scheduled scrub and
//! the API (`POST /api/v1/scrub`): at most one scrub runs at a time in the
//! process, its progress is visible (`GET /api/v1/scrub`), and both stop
//! at shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulih_core::codec;
use pulih_core::formats::MAX_TREE_LEN;
use pulih_core::tree::Node;
use pulih_core::{ChunkId, TreeId};
use tracing::{info, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::reader::{self, ReadError};
use crate::store::{BlobKind, BlobRef, Store, StoreError};

/// Why a scrub stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("scrub stopped: the controller is shutting down")]
    Cancelled,
}

/// One damaged blob found by a run, with the snapshots that reach it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScrubDamage {
    pub kind: &'static str,
    pub id: String,
    pub reason: String,
    /// `damaged` (an agent may resend it) or `lost`.
    pub state: &'static str,
    pub snapshots: Vec<String>,
}

/// What a scrub run found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScrubReport {
    pub run_id: i64,
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub damage: Vec<ScrubDamage>,
    /// Every snapshot now marked damaged (also by damage found earlier and
    /// not yet repaired).
    pub damaged_snapshots: Vec<String>,
    pub seconds: f64,
}

/// Progress of a running scrub, updated as it goes.
#[derive(Debug, Default)]
pub struct ScrubProgress {
    /// Row in `scrub_runs` (0 until it is recorded).
    pub run_id: AtomicI64,
    pub blobs_total: AtomicU64,
    pub blobs_checked: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_checked: AtomicU64,
    pub damaged: AtomicU64,
}

/// The scrub running in this process, as shown by `GET /api/v1/scrub`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScrubNow {
    /// Row in `scrub_runs` (none until it is recorded).
    pub run_id: Option<i64>,
    /// Unix seconds.
    pub started_at: i64,
    /// `scheduler` or `token:NAME`.
    pub started_by: String,
    /// Bytes per second at most (none: unlimited).
    pub rate: Option<u64>,
    pub blobs_total: u64,
    pub blobs_checked: u64,
    pub bytes_total: u64,
    pub bytes_checked: u64,
    /// Damaged blobs found so far by this run.
    pub damaged: u64,
}

struct Running {
    started_at: i64,
    started_by: String,
    rate: Option<u64>,
    progress: Arc<ScrubProgress>,
}

/// One scrub at a time per process, its progress, and the stop signal.
#[derive(Default)]
pub struct ScrubTracker {
    running: Mutex<Option<Running>>,
    stop: crate::stop::Stop,
}

/// Held while a scrub runs; dropping it frees the tracker.
pub struct ScrubSlot {
    tracker: Arc<ScrubTracker>,
    pub progress: Arc<ScrubProgress>,
}

impl Drop for ScrubSlot {
    fn drop(&mut self) {
        *self.tracker.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl ScrubTracker {
    /// Claims the slot, or `None` when a scrub is already running.
    pub fn try_start(self: &Arc<Self>, by: &str, rate: Option<u64>) -> Option<ScrubSlot> {
        let mut g = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return None;
        }
        let progress = Arc::new(ScrubProgress::default());
        *g = Some(Running {
            started_at: crate::catalog::now_secs(),
            started_by: by.to_owned(),
            rate,
            progress: progress.clone(),
        });
        Some(ScrubSlot { tracker: self.clone(), progress })
    }

    /// The running scrub, if any.
    pub fn now(&self) -> Option<ScrubNow> {
        let g = self.running.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|r| {
            let p = &r.progress;
            let run = p.run_id.load(Ordering::Relaxed);
            ScrubNow {
                run_id: (run > 0).then_some(run),
                started_at: r.started_at,
                started_by: r.started_by.clone(),
                rate: r.rate,
                blobs_total: p.blobs_total.load(Ordering::Relaxed),
                blobs_checked: p.blobs_checked.load(Ordering::Relaxed),
                bytes_total: p.bytes_total.load(Ordering::Relaxed),
                bytes_checked: p.bytes_checked.load(Ordering::Relaxed),
                damaged: p.damaged.load(Ordering::Relaxed),
            }
        })
    }

    /// Asks every scrub of this process to stop (at shutdown).
    pub fn stop(&self) {
        self.stop.stop();
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Sleeps for `d` or until stopped; returns whether it is stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        self.stop.sleep(d)
    }
}

/// Checks one blob; `Ok(Some(reason))` is damage.
fn check(store: &Store, b: &BlobRef, raw_len: u64) -> Result<Option<String>, StoreError> {
    let res = match b.kind {
        BlobKind::Chunk => {
            let len = u32::try_from(raw_len).unwrap_or(u32::MAX);
            reader::load_chunk(store, &ChunkId::from_bytes(b.id), len).map(|_| ())
        }
        BlobKind::Tree => reader::load_tree(store, &TreeId::from_bytes(b.id)).map(|_| ()),
    };
    match res {
        Ok(()) => Ok(None),
        Err(ReadError::Store(StoreError::Missing { .. })) => Ok(Some("missing from the store".into())),
        Err(e) if e.is_damage() => Ok(Some(e.to_string())),
        Err(ReadError::Store(e)) => Err(e),
        Err(e) => Ok(Some(e.to_string())),
    }
}

/// Scrubs every blob the catalog lists, at most `rate` bytes per second
/// (`None`: as fast as the disk allows). `cancelled` is polled between blobs.
pub fn scrub(
    store: &Store,
    cat: &mut Catalog,
    rate: Option<u64>,
    cancelled: &dyn Fn() -> bool,
) -> Result<ScrubReport, ScrubError> {
    scrub_tracked(store, cat, rate, cancelled, &ScrubProgress::default())
}

/// [`scrub`], reporting its progress in `progress` as it goes.
pub fn scrub_tracked(
    store: &Store,
    cat: &mut Catalog,
    rate: Option<u64>,
    cancelled: &dyn Fn() -> bool,
    progress: &ScrubProgress,
) -> Result<ScrubReport, ScrubError> {
    let started = Instant::now();
    let run = cat.scrub_begin()?;
    progress.run_id.store(run, Ordering::Relaxed);
    let mut report = ScrubReport { run_id: run, ..Default::default() };
    let res = scrub_inner(store, cat, rate, cancelled, &mut report, started, progress);
    report.seconds = started.elapsed().as_secs_f64();
    let (outcome, detail) = match &res {
        Ok(()) if report.damage.is_empty() => ("ok", None),
        Ok(()) => ("damage", Some(format!("{} damaged blob(s)", report.damage.len()))),
        Err(e) => ("failed", Some(e.to_string())),
    };
    cat.scrub_end(
        run,
        outcome,
        report.blobs_checked,
        report.bytes_checked,
        report.damage.len() as u64,
        detail.as_deref(),
    )?;
    res.map(|()| report)
}

fn scrub_inner(
    store: &Store,
    cat: &mut Catalog,
    rate: Option<u64>,
    cancelled: &dyn Fn() -> bool,
    report: &mut ScrubReport,
    started: Instant,
    progress: &ScrubProgress,
) -> Result<(), ScrubError> {
    let mut blobs = Vec::new();
    cat.each_blob(|b, _, stored, raw| blobs.push((b, stored, raw)))?;
    progress.blobs_total.store(blobs.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(blobs.iter().map(|b| b.1).sum(), Ordering::Relaxed);
    let mut read = 0u64;
    for (b, stored, raw) in blobs {
        if cancelled() {
            return Err(ScrubError::Cancelled);
        }
        let verdict = check(store, &b, raw)?;
        report.blobs_checked += 1;
        report.bytes_checked += stored;
        read += stored;
        progress.blobs_checked.fetch_add(1, Ordering::Relaxed);
        progress.bytes_checked.fetch_add(stored, Ordering::Relaxed);
        if let Some(reason) = verdict {
            let real = if reason.starts_with("missing") {
                cat.blob_missing_confirmed(&b, || store.present(&b).unwrap_or(false))?
            } else {
                true
            };
            if real {
                cat.record_damage(&b, &reason)?;
                progress.damaged.fetch_add(1, Ordering::Relaxed);
                warn!(blob = %b.hex(), kind = b.kind.name(), %reason, "scrub found a damaged blob");
                report.damage.push(ScrubDamage {
                    kind: b.kind.name(),
                    id: b.hex(),
                    reason,
                    state: if b.kind == BlobKind::Chunk { "damaged" } else { "lost" },
                    snapshots: Vec::new(),
                });
            }
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(read as f64 / rate as f64);
            let spent = started.elapsed();
            if due > spent {
                std::thread::sleep((due - spent).min(Duration::from_secs(5)));
            }
        }
    }
    // Snapshot states, from every blob damaged now (found by this run or
    // earlier and not yet repaired).
    let bad = cat.damaged_blobs()?;
    let snaps = cat.snapshot_roots()?;
    let mut walk = Reach::new(store, &bad);
    let mut damaged = HashSet::new();
    let mut per_blob: HashMap<String, Vec<String>> = HashMap::new();
    for (id, root) in &snaps {
        let Ok(root) = root.parse::<TreeId>() else { continue };
        if walk.reaches(&root) {
            damaged.insert(id.clone());
            for blob in walk.which(&root) {
                per_blob.entry(blob).or_default().push(id.clone());
            }
        }
    }
    let ids: Vec<String> = snaps.iter().map(|s| s.0.clone()).collect();
    cat.set_snapshot_states(&ids, &damaged)?;
    for d in &mut report.damage {
        d.snapshots = per_blob.remove(&d.id).unwrap_or_default();
        d.snapshots.sort();
    }
    let mut list: Vec<String> = damaged.into_iter().collect();
    list.sort();
    report.damaged_snapshots = list;
    info!(
        blobs = report.blobs_checked,
        bytes = report.bytes_checked,
        damaged = report.damage.len(),
        damaged_snapshots = report.damaged_snapshots.len(),
        "scrub done"
    );
    Ok(())
}

/// Which trees reach a bad blob (memoized over one run).
struct Reach<'a> {
    store: &'a Store,
    bad: &'a HashSet<BlobRef>,
    memo: HashMap<TreeId, bool>,
}

impl<'a> Reach<'a> {
    fn new(store: &'a Store, bad: &'a HashSet<BlobRef>) -> Self {
        Self { store, bad, memo: HashMap::new() }
    }

    /// Children of a readable tree, or `None` when the tree itself is bad.
    fn children(&self, id: &TreeId) -> Option<(Vec<ChunkId>, Vec<TreeId>)> {
        if self.bad.contains(&BlobRef::tree(id)) {
            return None;
        }
        // Read without the reader's error detail: unreadable is bad.
        let frame = self.store.read(&BlobRef::tree(id)).ok()?;
        let plain = codec::decompress_bounded(&frame, MAX_TREE_LEN).ok()?;
        if TreeId::of(&plain) != *id {
            return None;
        }
        let tree = pulih_core::tree::Tree::decode(&plain).ok()?;
        let chunks = tree
            .entries()
            .iter()
            .flat_map(|e| match &e.node {
                Node::File { segments, .. } => segments
                    .iter()
                    .filter_map(|s| match s {
                        pulih_core::tree::Segment::Data { id, .. } => Some(*id),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        Some((chunks, tree.references().1))
    }

    /// Whether the closure of `id` contains a bad (or unreadable) blob.
    fn reaches(&mut self, id: &TreeId) -> bool {
        if let Some(v) = self.memo.get(id) {
            return *v;
        }
        // Iterative post-order so deep trees cannot overflow the stack.
        let mut stack = vec![(*id, false)];
        while let Some((t, expanded)) = stack.pop() {
            if self.memo.contains_key(&t) {
                continue;
            }
            match self.children(&t) {
                None => {
                    self.memo.insert(t, true);
                }
                Some((chunks, trees)) => {
                    if expanded {
                        let v = chunks.iter().any(|c| self.bad.contains(&BlobRef::chunk(c)))
                            || trees.iter().any(|s| self.memo.get(s).copied().unwrap_or(true));
                        self.memo.insert(t, v);
                    } else {
                        stack.push((t, true));
                        stack.extend(trees.into_iter().filter(|s| !self.memo.contains_key(s)).map(|s| (s, false)));
                    }
                }
            }
        }
        self.memo[id]
    }

    /// The bad blobs (hex) a damaged tree's closure reaches.
    fn which(&mut self, root: &TreeId) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![*root];
        while let Some(t) = stack.pop() {
            if !seen.insert(t) || !self.reaches(&t) {
                continue;
            }
            match self.children(&t) {
                None => out.push(t.to_hex()),
                Some((chunks, trees)) => {
                    out.extend(chunks.iter().filter(|c| self.bad.contains(&BlobRef::chunk(c))).map(ChunkId::to_hex));
                    stack.extend(trees);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The scrub scheduled inside `serve`: runs every `interval_secs` after the
/// end of the previous run (the first one `interval_secs` after the catalog
/// was created), at `rate` bytes per second, until `tracker` is stopped.
/// Uses its own store handle and catalog connection; errors are logged and
/// the next run is tried one interval later. While a scrub started over the
/// API runs, the scheduled one waits for it (and then counts from its end).
pub fn run_scheduled(
    store_root: &std::path::Path,
    catalog_path: &std::path::Path,
    interval_secs: i64,
    rate: u64,
    tracker: &Arc<ScrubTracker>,
) {
    let stopped = || tracker.stopping();
    while !stopped() {
        let due = (|| -> Result<i64, CatalogError> {
            let cat = Catalog::open(catalog_path)?;
            let last = cat.scrub_runs(1)?.first().map(|r| r.finished_at.unwrap_or(r.started_at));
            let created = cat.meta("created_at")?.and_then(|v| v.parse().ok()).unwrap_or_else(crate::catalog::now_secs);
            Ok(last.unwrap_or(created) + interval_secs)
        })()
        .unwrap_or_else(|e| {
            warn!(error = %e, "scheduled scrub: cannot read the catalog; trying again later");
            crate::catalog::now_secs() + interval_secs.min(3600)
        });
        while !stopped() && crate::catalog::now_secs() < due {
            tracker.sleep(Duration::from_secs(1));
        }
        if stopped() {
            break;
        }
        let Some(slot) = tracker.try_start(crate::lifecycle::SCHEDULER, Some(rate)) else {
            // A scrub started over the API is running; look again after it.
            tracker.sleep(Duration::from_secs(1));
            continue;
        };
        info!("scheduled scrub starting");
        let res = Store::open_with_catalog(store_root, catalog_path)
            .map_err(ScrubError::from)
            .and_then(|store| Ok((store, Catalog::open(catalog_path)?)))
            .and_then(|(store, mut cat)| scrub_tracked(&store, &mut cat, Some(rate), &stopped, &slot.progress));
        drop(slot);
        // Audited like a scrub started by hand (it marks snapshots damaged).
        let detail = res.as_ref().map_or(
            serde_json::json!({}),
            |r| serde_json::json!({ "damaged": r.damage.len(), "blobs_checked": r.blobs_checked, "run_id": r.run_id }),
        );
        let entry = crate::catalog::NewAudit::new(crate::lifecycle::SCHEDULER, "scrub", "store", detail);
        if let Err(e) = Catalog::open(catalog_path).and_then(|mut c| c.audit(&entry, &res)) {
            warn!(error = %e, "scheduled scrub could not be recorded in the audit log");
        }
        match res {
            Ok(r) if r.damage.is_empty() => {}
            Ok(r) => {
                warn!(damaged = r.damage.len(), snapshots = r.damaged_snapshots.len(), "scheduled scrub found damage")
            }
            Err(ScrubError::Cancelled) => break,
            Err(e) => {
                warn!(error = %e, "scheduled scrub failed");
                // Avoid a tight loop when the failure is immediate.
                tracker.sleep(Duration::from_secs(60));
            }
        }
    }
}

/// The damaged or lost blobs (hex) the closure of `root` reaches, given the
/// set `bad` (an unreadable tree counts too). Empty when intact.
pub fn damaged_reached(store: &Store, bad: &HashSet<BlobRef>, root: &TreeId) -> Vec<String> {
    let mut walk = Reach::new(store, bad);
    if walk.reaches(root) {
        walk.which(root)
    } else {
        Vec::new()
    }
}

/// Marks `ok` again every snapshot marked damaged that no longer reaches a
/// damaged or lost blob (after a repair). Returns how many.
pub fn refresh_damaged_snapshots(store: &Store, cat: &mut Catalog) -> Result<usize, CatalogError> {
    let bad = cat.damaged_blobs()?;
    let snaps = cat.damaged_snapshots()?;
    let mut walk = Reach::new(store, &bad);
    let mut still = HashSet::new();
    let mut ids = Vec::new();
    for (id, root) in snaps {
        ids.push(id.clone());
        match root.parse::<TreeId>() {
            Ok(r) if !walk.reaches(&r) => {}
            _ => {
                still.insert(id);
            }
        }
    }
    cat.set_snapshot_states(&ids, &still)?;
    Ok(ids.len() - still.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rate limit holds: 2 MiB at 4 MiB/s takes at least ~0.5 s.
    #[test]
    fn rate_limit_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s")).unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let mut blobs = Vec::new();
        for i in 0..4u64 {
            // Incompressible data, so the stored size is about 512 KiB.
            let data = crate::gc::tests_support::bytes(i + 1, 512 * 1024);
            let id = ChunkId::of(&data);
            let frame = codec::compress(&data, 1);
            store.put_unsynced(&BlobRef::chunk(&id), &frame).unwrap();
            blobs.push(crate::catalog::StagedBlob {
                blob: BlobRef::chunk(&id),
                raw_len: data.len() as u64,
                stored_len: frame.len() as u64,
                at: None,
            });
        }
        let tx = cat.transaction().unwrap();
        Catalog::record_blobs(&tx, 1, &blobs).unwrap();
        tx.commit().unwrap();
        let started = Instant::now();
        let r = scrub(&store, &mut cat, Some(4 << 20), &|| false).unwrap();
        assert_eq!(r.blobs_checked, 4);
        assert!(r.damage.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
        // Cancelled between blobs.
        assert!(matches!(scrub(&store, &mut cat, None, &|| true), Err(ScrubError::Cancelled)));
        assert_eq!(cat.scrub_runs(5).unwrap()[0].outcome, "failed");
    }
}
