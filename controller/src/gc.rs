//! Garbage collection: remove the chunks and trees no snapshot reaches,
//! without ever removing one that an upload running at the same time relies
//! on (F12, F13, F14).
//!
//! # Protocol
//!
//! * **Touches.** Every blob row has `touched_at` (controller clock,
//!   seconds): set when the blob is stored and whenever an upload relies on
//!   it — a has-chunks answer "you have it", a tree referencing it, a chunk
//!   or tree re-sent that is already stored, the root of a commit. An upload
//!   session keeps its touches in memory and writes them at its next
//!   checkpoint (in the same transaction that records its new blobs); a
//!   touch that finds no row tells the session that GC removed the blob
//!   after it was checked, and the checkpoint fails with a retryable error
//!   (the agent retries and resends what is missing). The session also
//!   remembers `first_touch`, when it first relied on anything since its
//!   last commit.
//! * **A run.** GC records `T0` and `cutoff = T0 - grace` in `gc_runs`
//!   (default grace 24 h, so an interrupted upload can resume from its
//!   checkpoints for a day). It marks everything reachable from (a) every
//!   snapshot root and (b) every tree touched at or after `cutoff`
//!   (checkpointed trees of uploads in progress: their whole closure is kept,
//!   not only the blobs touched directly). Candidates are the blobs not
//!   marked and touched before `cutoff`.
//! * **Sweep, trees first, parents before children.** Candidate trees are
//!   removed in topological order (a tree before every tree it references),
//!   then candidate chunks. Each batch is one SQLite write transaction
//!   taken with `BEGIN IMMEDIATE`, so sessions cannot touch or record blobs
//!   while it decides. Inside each tree batch's transaction, before it
//!   deletes, candidate trees that were touched since the mark (an upload
//!   referenced an unchanged subtree, or committed it as a root) are
//!   *rescued*: their closures are marked and leave the candidate set. A
//!   touch takes its time after its own transaction got the write lock, so
//!   each batch needs to look back only to the start of the previous one
//!   (plus slack for a clock stepped back; index `blobs_by_touch`). A row is deleted only with
//!   `touched_at < cutoff` re-checked in the `DELETE` itself.
//! * **Commit.** If a GC run with `cutoff > first_touch` ran while the
//!   session was relying on blobs (a writer stalled longer than the grace
//!   period, F14), the commit re-checks the snapshot's whole closure (every
//!   row present, every file present, every tree readable) and touches it,
//!   inside one `BEGIN IMMEDIATE` transaction with the snapshot insert; a
//!   missing blob refuses the commit (retryable).
//!
//! # Why nothing referenced is lost
//!
//! Let S be a snapshot and B a blob its closure contains.
//! 1. If S was committed before the mark read the snapshot list, B is
//!    reachable and never a candidate.
//! 2. Otherwise S's session relied on B: directly (B touched at time
//!    `t >= first_touch`), or through a tree that references B and that was
//!    itself touched (a deduplicated subtree). If the touch reached the
//!    catalog before the batch that would delete B (or a tree above it),
//!    then B has `touched_at >= cutoff` (so the `DELETE` skips it) or it is
//!    in the closure of a tree rescued before B's batch — trees are removed
//!    parents first, so while any tree above B survives, B survives. If the
//!    batch came first, the touch finds no row and the checkpoint fails.
//! 3. The remaining case is a touch older than `cutoff` (the writer stalled
//!    more than the grace period before committing): `first_touch < cutoff`
//!    of a run that had not finished before `first_touch`, so the commit
//!    re-checks the full closure under the write lock (step "Commit").
//!
//! Blobs staged by a session but not yet checkpointed have no row, and GC
//! only ever removes blobs that have a row, so they are never touched.
//! A tree reachable from a snapshot that cannot be read stops GC before it
//! deletes anything: what it references is unknown (run `scrub`, then
//! `forget` the damaged snapshots, to unblock it).
//!
//! # Crash and disk-full safety (F5)
//!
//! Within a batch's transaction each removed row's file is *renamed* into
//! `store/gc-trash/` (no space needed); the transaction commits, then the
//! trash files are unlinked. An error before the commit rolls the rows back
//! and renames the files back. A crash leaves files in `gc-trash/`: the next
//! run puts back every one whose row still exists and unlinks the rest. So
//! a row never points to a file that is gone for good, and a file is never
//! removed while its row exists. (Readers running during a batch may find a
//! file briefly absent while its row is still visible; upload sessions then
//! ask for the blob again, and scrub re-checks under the write lock.)
//!
//! Blobs in pack files (store layout 3) have no file of their own: the
//! sweep deletes their rows only, and [`crate::compact`] then removes packs
//! no row names and rewrites sparse ones, after the sweep, with the same
//! rule (a row never points at bytes that are gone for good).
//!
//! Memory: the marked set holds 32 bytes plus hash-set overhead per
//! reachable blob (about 80 bytes; 8 GiB of RAM per 100 million blobs).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Instant;

use pulih_core::tree::Node;
use pulih_core::TreeId;
use tracing::{info, warn};

use crate::catalog::{now_secs, Catalog, CatalogError};
use crate::reader::{self, ReadError};
use crate::store::{BlobKind, BlobRef, Location, Store};

/// Default grace period: blobs relied on within it are kept.
pub const DEFAULT_GRACE_SECS: i64 = 24 * 3600;
/// Blobs removed per transaction.
const BATCH: usize = 1000;
/// Seconds a rescue scan looks back before the previous batch started.
const RESCUE_SLACK_SECS: i64 = 120;
/// Directory (under the store) of files being removed.
pub const TRASH_DIR: &str = "gc-trash";

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Seconds a blob stays after it was last relied on.
    pub grace_secs: i64,
    /// Only report what would be removed.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self { grace_secs: DEFAULT_GRACE_SECS, dry_run: false }
    }
}

/// What a run did (or, dry, would do).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Row in `gc_runs` (none for a dry run).
    pub run_id: Option<i64>,
    pub dry_run: bool,
    /// Blobs relied on before this Unix time (seconds) were candidates.
    pub cutoff: i64,
    pub snapshots: u64,
    pub reachable_trees: u64,
    pub reachable_chunks: u64,
    /// Unreachable blobs kept because an upload relied on them recently.
    pub kept_recent: u64,
    /// Candidate trees an upload referenced while GC ran (kept, with their closure).
    pub rescued_trees: u64,
    pub trees_removed: u64,
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    /// Files put back from `gc-trash/` after an interrupted run.
    pub trash_restored: u64,
    /// Space given back by removing and rewriting pack files.
    #[serde(default)]
    pub packs: crate::compact::CompactReport,
    pub seconds: f64,
}

/// Why GC stopped. Nothing it already committed is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("store at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("tree {tree} reachable from {from} cannot be read ({reason}); garbage collection removes nothing while reachability is unknown: run `pulih-controller scrub`, then forget the damaged snapshots")]
    Unreadable { tree: String, from: String, reason: String },
    #[error("store error: {0}")]
    Read(ReadError),
}

impl GcError {
    /// Whether the disk is full.
    pub fn is_disk_full(&self) -> bool {
        let full = rustix::io::Errno::NOSPC.raw_os_error();
        match self {
            GcError::Io { source, .. } => source.raw_os_error() == Some(full),
            GcError::Catalog(CatalogError::Sql(rusqlite::Error::SqliteFailure(e, _))) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

fn trash_path(store: &Store, blob: &BlobRef) -> PathBuf {
    store.root().join(TRASH_DIR).join(format!("{}-{}", blob.kind.name(), blob.hex()))
}

/// The marked (kept) set and the tree reader.
struct Mark<'a> {
    store: &'a Store,
    trees: HashSet<[u8; 32]>,
    chunks: HashSet<[u8; 32]>,
}

impl Mark<'_> {
    fn contains(&self, b: &BlobRef) -> bool {
        match b.kind {
            BlobKind::Chunk => self.chunks.contains(&b.id),
            BlobKind::Tree => self.trees.contains(&b.id),
        }
    }

    /// Marks the closure of `root`; newly marked trees are returned.
    fn tree(&mut self, root: [u8; 32], from: &str) -> Result<Vec<[u8; 32]>, GcError> {
        let mut stack = vec![root];
        let mut new = Vec::new();
        while let Some(id) = stack.pop() {
            if !self.trees.insert(id) {
                continue;
            }
            new.push(id);
            let tree = match reader::load_tree(self.store, &TreeId::from_bytes(id)) {
                Ok(t) => t,
                Err(e) if e.is_damage() => {
                    return Err(GcError::Unreadable {
                        tree: hex::encode(id),
                        from: from.to_owned(),
                        reason: e.to_string(),
                    })
                }
                Err(e) => return Err(GcError::Read(e)),
            };
            let (chunks, trees) = tree.references();
            self.chunks.extend(chunks.iter().map(|c| *c.as_bytes()));
            stack.extend(trees.iter().map(|t| *t.as_bytes()));
        }
        Ok(new)
    }
}

/// Puts back (or removes) files left in `gc-trash/` by an interrupted run.
/// Call only while holding the GC lock.
pub fn recover_trash(store: &Store, cat: &Catalog) -> Result<u64, GcError> {
    let dir = store.root().join(TRASH_DIR);
    let io_err = |source| GcError::Io { path: dir.clone(), source };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(e)),
    };
    let mut restored = 0;
    for e in entries {
        let e = e.map_err(io_err)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let blob = name.split_once('-').and_then(|(k, h)| {
            let kind = match k {
                "chunk" => BlobKind::Chunk,
                "tree" => BlobKind::Tree,
                _ => return None,
            };
            Some(BlobRef { kind, id: hex::decode(h).ok()?.try_into().ok()? })
        });
        match blob {
            Some(b) if cat.blob_durable(&b)? && !store.present(&b).unwrap_or(false) => {
                let dest = store.blob_path(&b);
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(io_err)?;
                }
                fs::rename(e.path(), &dest).map_err(io_err)?;
                restored += 1;
                warn!(blob = %b.hex(), kind = b.kind.name(), "put back a blob an interrupted garbage collection had moved");
            }
            _ => fs::remove_file(e.path()).map_err(io_err)?,
        }
    }
    Ok(restored)
}

/// Collects garbage. The caller holds the data directory's GC lock
/// ([`crate::datadir::DataDir::lock_for_gc`]).
pub fn collect(store: &Store, cat: &mut Catalog, opts: &GcOptions) -> Result<GcReport, GcError> {
    let started = Instant::now();
    let mut report = GcReport { dry_run: opts.dry_run, ..Default::default() };
    report.trash_restored = recover_trash(store, cat)?;
    let t0 = now_secs();
    let cutoff = t0 - opts.grace_secs.max(0);
    report.cutoff = cutoff;
    let run = if opts.dry_run { None } else { Some(cat.gc_begin(t0, cutoff)?) };
    report.run_id = run;
    let res = run_inner(store, cat, opts, cutoff, &mut report);
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(run) = run {
        let detail = res.as_ref().err().map(ToString::to_string);
        cat.gc_end(
            run,
            res.is_ok(),
            report.trees_removed,
            report.chunks_removed,
            report.bytes_removed,
            detail.as_deref(),
        )?;
    }
    res.map(|()| report)
}

fn run_inner(
    store: &Store,
    cat: &mut Catalog,
    opts: &GcOptions,
    cutoff: i64,
    report: &mut GcReport,
) -> Result<(), GcError> {
    // Mark: snapshot roots, then trees of uploads in progress.
    let mut mark = Mark { store, trees: HashSet::new(), chunks: HashSet::new() };
    let roots = cat.snapshot_roots()?;
    report.snapshots = roots.len() as u64;
    for (snap, root) in &roots {
        let id: TreeId = root.parse().map_err(|_| GcError::Unreadable {
            tree: root.clone(),
            from: snap.clone(),
            reason: "bad id".into(),
        })?;
        mark.tree(*id.as_bytes(), &format!("snapshot {snap}"))?;
    }
    report.reachable_trees = mark.trees.len() as u64;
    report.reachable_chunks = mark.chunks.len() as u64;
    for t in cat.trees_touched_since(cutoff)? {
        mark.tree(t, "an upload in progress")?;
    }

    // Candidates.
    let mut cand_trees: Vec<(BlobRef, u64)> = Vec::new();
    let mut cand_chunks: Vec<(BlobRef, u64)> = Vec::new();
    let mut kept_recent = 0u64;
    cat.each_blob(|b, touched, len, _raw| {
        if mark.contains(&b) {
            return;
        }
        if touched >= cutoff {
            kept_recent += 1;
        } else if b.kind == BlobKind::Tree {
            cand_trees.push((b, len));
        } else {
            cand_chunks.push((b, len));
        }
    })?;
    report.kept_recent = kept_recent;
    let cand_trees = topological(store, cand_trees);
    info!(
        snapshots = report.snapshots,
        candidate_trees = cand_trees.len(),
        candidate_chunks = cand_chunks.len(),
        kept_recent,
        dry_run = opts.dry_run,
        "garbage collection marked"
    );
    if opts.dry_run {
        report.trees_removed = cand_trees.len() as u64;
        report.chunks_removed = cand_chunks.len() as u64;
        report.bytes_removed = cand_trees.iter().chain(&cand_chunks).map(|c| c.1).sum();
        report.packs = crate::compact::compact_packs(store, cat, true)?;
        return Ok(());
    }

    fs::create_dir_all(store.root().join(TRASH_DIR))
        .map_err(|source| GcError::Io { path: store.root().join(TRASH_DIR), source })?;
    let mut pending: HashSet<[u8; 32]> = cand_trees.iter().map(|c| c.0.id).collect();
    // Touches are written with the time taken after their transaction got
    // the write lock, so one committed after batch k's transaction carries a
    // time no earlier than batch k's start: batch k+1 looks back that far
    // (with slack for a clock stepped back a little).
    let mut scan_from = cutoff;
    for batch in cand_trees.chunks(BATCH) {
        let mut rescue = |tx: &rusqlite::Transaction<'_>| -> Result<Vec<(BlobRef, u64)>, GcError> {
            let scan_start = now_secs();
            // Under this batch's write lock: candidate trees an upload
            // touched since the mark keep their closures.
            let touched: Vec<[u8; 32]> =
                Catalog::trees_touched_since_in(tx, scan_from)?.into_iter().filter(|t| pending.contains(t)).collect();
            for t in touched {
                for newly in mark.tree(t, "an upload in progress")? {
                    if pending.remove(&newly) {
                        report.rescued_trees += 1;
                    }
                }
            }
            scan_from = (scan_start - RESCUE_SLACK_SECS).max(cutoff);
            Ok(batch.iter().filter(|c| !mark.contains(&c.0)).copied().collect())
        };
        let (n, bytes) = sweep(store, cat, cutoff, &mut rescue)?;
        for c in batch {
            pending.remove(&c.0.id);
        }
        report.trees_removed += n;
        report.bytes_removed += bytes;
    }
    for batch in cand_chunks.chunks(BATCH) {
        let todo: Vec<(BlobRef, u64)> = batch.iter().filter(|c| !mark.contains(&c.0)).copied().collect();
        if todo.is_empty() {
            continue;
        }
        let (n, bytes) = sweep(store, cat, cutoff, &mut |_| Ok(todo.clone()))?;
        report.chunks_removed += n;
        report.bytes_removed += bytes;
    }
    report.packs = crate::compact::compact_packs(store, cat, false)?;
    info!(
        trees = report.trees_removed,
        chunks = report.chunks_removed,
        bytes = report.bytes_removed,
        rescued = report.rescued_trees,
        pack_bytes_freed = report.packs.bytes_freed,
        "garbage collection done"
    );
    Ok(())
}

/// Re-checks the whole closure of `root` inside the caller's write
/// transaction (a commit that overlapped a GC run, see the module doc):
/// every blob must have a row and a file, every tree must be readable.
/// Found blobs are touched at `now`; the missing ones are returned.
pub fn verify_closure(
    tx: &rusqlite::Transaction<'_>,
    store: &Store,
    root: &TreeId,
    now: i64,
) -> Result<Vec<BlobRef>, GcError> {
    let mut seen_trees: HashSet<[u8; 32]> = HashSet::new();
    let mut seen_chunks: HashSet<[u8; 32]> = HashSet::new();
    let mut missing = Vec::new();
    let mut found = Vec::new();
    let mut stack = vec![*root];
    let here = |b: &BlobRef| -> Result<bool, GcError> {
        Ok(Catalog::blob_row(tx, b)? && store.present(b).map_err(|e| GcError::Read(ReadError::Store(e)))?)
    };
    while let Some(t) = stack.pop() {
        if !seen_trees.insert(*t.as_bytes()) {
            continue;
        }
        let b = BlobRef::tree(&t);
        if !here(&b)? {
            missing.push(b);
            continue;
        }
        let tree = match reader::load_tree(store, &t) {
            Ok(tree) => tree,
            Err(e) if e.is_damage() => {
                missing.push(b);
                continue;
            }
            Err(e) => return Err(GcError::Read(e)),
        };
        found.push(b);
        let (chunks, trees) = tree.references();
        for c in chunks {
            if seen_chunks.insert(*c.as_bytes()) {
                let cb = BlobRef::chunk(&c);
                if here(&cb)? {
                    found.push(cb);
                } else {
                    missing.push(cb);
                }
            }
        }
        stack.extend(trees);
    }
    Catalog::touch_blobs(tx, &found, now)?;
    Ok(missing)
}

/// Orders candidate trees so that a tree comes before every candidate tree
/// it references. An unreadable candidate has no known references.
fn topological(store: &Store, trees: Vec<(BlobRef, u64)>) -> Vec<(BlobRef, u64)> {
    let index: HashMap<[u8; 32], usize> = trees.iter().enumerate().map(|(i, t)| (t.0.id, i)).collect();
    let children: Vec<Vec<usize>> = trees
        .iter()
        .map(|(b, _)| match reader::load_tree(store, &TreeId::from_bytes(b.id)) {
            Ok(t) => t
                .entries()
                .iter()
                .filter_map(|e| match &e.node {
                    Node::Dir { tree } => index.get(tree.as_bytes()).copied(),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        })
        .collect();
    // Iterative DFS post-order; reversed it lists parents first.
    let mut state = vec![0u8; trees.len()]; // 0 new, 1 open, 2 done
    let mut post = Vec::with_capacity(trees.len());
    for start in 0..trees.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((node, next)) = stack.pop() {
            if let Some(&child) = children[node].get(next) {
                stack.push((node, next + 1));
                if state[child] == 0 {
                    state[child] = 1;
                    stack.push((child, 0));
                }
            } else {
                state[node] = 2;
                post.push(node);
            }
        }
    }
    post.into_iter().rev().map(|i| trees[i]).collect()
}

/// Picks, inside a batch's transaction, the blobs (with stored size) to remove.
type Choose<'a> = dyn FnMut(&rusqlite::Transaction<'_>) -> Result<Vec<(BlobRef, u64)>, GcError> + 'a;

/// Removes one batch: rows deleted and files moved to the trash in one
/// write transaction, trash emptied after the commit. `choose` runs first
/// inside the transaction and returns the blobs to remove.
fn sweep(store: &Store, cat: &mut Catalog, cutoff: i64, choose: &mut Choose<'_>) -> Result<(u64, u64), GcError> {
    let mut moved: Vec<(BlobRef, u64)> = Vec::new();
    let mut packed: Vec<(BlobRef, u64)> = Vec::new();
    let res = (|| -> Result<(), GcError> {
        let tx = cat.immediate()?;
        for (b, len) in choose(&tx)? {
            let loc = Catalog::blob_location_in(&tx, &b)?;
            if !Catalog::sweep_blob(&tx, &b, cutoff)? {
                continue;
            }
            if let Some(Location::Packed(_)) = loc {
                // Its bytes stay in the pack until the pack is compacted
                // (see `compact_packs`).
                packed.push((b, len));
                continue;
            }
            let from = store.blob_path(&b);
            match fs::rename(&from, trash_path(store, &b)) {
                Ok(()) => moved.push((b, len)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => moved.push((b, 0)),
                Err(source) => return Err(GcError::Io { path: from, source }),
            }
        }
        tx.commit().map_err(CatalogError::from)?;
        Ok(())
    })();
    if let Err(e) = res {
        // Rolled back: put every moved file back under its name.
        for (b, _) in &moved {
            let _ = fs::rename(trash_path(store, b), store.blob_path(b));
        }
        return Err(e);
    }
    let mut bytes: u64 = packed.iter().map(|p| p.1).sum();
    for (b, len) in &moved {
        match fs::remove_file(trash_path(store, b)) {
            Ok(()) => bytes += len,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(blob = %b.hex(), error = %e, "could not unlink a removed blob; the next run retries"),
        }
    }
    Ok(((moved.len() + packed.len()) as u64, bytes))
}

/// Helpers shared by the lifecycle tests of other modules.
#[cfg(test)]
pub(crate) mod tests_support {
    /// Deterministic pseudo-random bytes.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulih_core::tree::{Entry, EntryName, Segment, Tree};
    use pulih_core::ChunkId;

    pub(crate) fn put(store: &Store, cat: &mut Catalog, blob: BlobRef, frame: &[u8], touched: i64) {
        store.put_unsynced(&blob, frame).unwrap();
        let tx = cat.transaction().unwrap();
        Catalog::record_blobs(
            &tx,
            1,
            &[crate::catalog::StagedBlob { blob, raw_len: 1, stored_len: frame.len() as u64, at: None }],
        )
        .unwrap();
        tx.execute("UPDATE blobs SET touched_at = ?1 WHERE id = ?2", rusqlite::params![touched, &blob.id[..]]).unwrap();
        tx.commit().unwrap();
    }

    fn dir_tree(children: &[TreeId], chunks: &[ChunkId]) -> (TreeId, Vec<u8>) {
        let mut entries = Vec::new();
        for (i, c) in children.iter().enumerate() {
            entries.push(Entry {
                name: EntryName::new(format!("d{i}")).unwrap(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                node: Node::Dir { tree: *c },
            });
        }
        for (i, c) in chunks.iter().enumerate() {
            entries.push(Entry {
                name: EntryName::new(format!("f{i}")).unwrap(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                node: Node::File {
                    size: 1,
                    link_group: None,
                    flags: 0,
                    segments: vec![Segment::Data { id: *c, len: 1 }],
                },
            });
        }
        let (id, plain) = Tree::new(entries).unwrap().encode();
        (id, pulih_core::codec::compress(&plain, 3))
    }

    /// F12/F13: an old unreachable subtree referenced again by an upload
    /// while GC runs keeps its whole closure (rescue), and the trash is
    /// recovered after a crash.
    #[test]
    fn f12_touched_subtree_keeps_its_closure_and_garbage_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s")).unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let old = now_secs() - 100_000;
        let c1 = ChunkId::of(b"a");
        let c2 = ChunkId::of(b"b");
        put(&store, &mut cat, BlobRef::chunk(&c1), &pulih_core::codec::compress(b"a", 3), old);
        put(&store, &mut cat, BlobRef::chunk(&c2), &pulih_core::codec::compress(b"b", 3), old);
        let (sub, sub_frame) = dir_tree(&[], &[c1]);
        let (top, top_frame) = dir_tree(&[sub], &[c2]);
        put(&store, &mut cat, BlobRef::tree(&sub), &sub_frame, old);
        put(&store, &mut cat, BlobRef::tree(&top), &top_frame, old);

        // Dry run: everything is garbage; nothing changes.
        let r = collect(&store, &mut cat, &GcOptions { grace_secs: 60, dry_run: true }).unwrap();
        assert_eq!((r.trees_removed, r.chunks_removed), (2, 2));
        assert!(store.present(&BlobRef::chunk(&c1)).unwrap());

        // An upload touches `sub` (dedup of an unchanged subtree): sub and c1 stay.
        let tx = cat.transaction().unwrap();
        assert!(Catalog::touch_blobs(&tx, &[BlobRef::tree(&sub)], now_secs()).unwrap().is_empty());
        tx.commit().unwrap();
        let r = collect(&store, &mut cat, &GcOptions { grace_secs: 60, dry_run: false }).unwrap();
        assert_eq!((r.trees_removed, r.chunks_removed), (1, 1), "{r:?}");
        for (b, kept) in [
            (BlobRef::tree(&sub), true),
            (BlobRef::chunk(&c1), true),
            (BlobRef::tree(&top), false),
            (BlobRef::chunk(&c2), false),
        ] {
            assert_eq!(store.present(&b).unwrap(), kept, "{b:?}");
            assert_eq!(cat.blob_durable(&b).unwrap(), kept, "{b:?}");
        }

        // A crash mid-batch left a file in the trash whose row still exists.
        let b = BlobRef::chunk(&c1);
        fs::create_dir_all(store.root().join(TRASH_DIR)).unwrap();
        fs::rename(store.blob_path(&b), trash_path(&store, &b)).unwrap();
        fs::write(store.root().join(TRASH_DIR).join("chunk-00"), b"junk").unwrap();
        assert_eq!(recover_trash(&store, &cat).unwrap(), 1);
        assert!(store.present(&b).unwrap());
        assert_eq!(fs::read_dir(store.root().join(TRASH_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn parents_come_before_children() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s")).unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let (a, fa) = dir_tree(&[], &[]);
        let (b, fb) = dir_tree(&[a], &[]);
        let (c, fc) = dir_tree(&[b, a], &[]);
        for (id, f) in [(a, &fa), (b, &fb), (c, &fc)] {
            put(&store, &mut cat, BlobRef::tree(&id), f, 0);
        }
        let order = topological(&store, vec![(BlobRef::tree(&a), 0), (BlobRef::tree(&b), 0), (BlobRef::tree(&c), 0)]);
        let pos = |t: &TreeId| order.iter().position(|o| o.0.id == *t.as_bytes()).unwrap();
        assert!(pos(&c) < pos(&b) && pos(&b) < pos(&a), "{order:?}");
    }
}
