//! The snapshot pipeline on the primary server.
//!
//! ```text
//! walker ──jobs (bounded)──▶ workers ×N ──chunks──▶ uploader
//!    │                          │                     ▲
//!    └──────events──────────────┴──▶ assembler ──trees┘
//! ```
//!
//! * The **walker** visits the dataset depth-first in name order, stats each
//!   entry, and compares files with the change cache: an unchanged file
//!   (same device, inode, size, mtime and ctime) reuses its chunk list and is
//!   never opened; a changed one becomes a job.
//! * **Workers** read changed files (sparse files by their data extents),
//!   cut them with FastCDC, hash and compress new chunks, and hand them to
//!   the uploader; then report the file's entry to the assembler.
//! * The **assembler** fills each directory's slots as results arrive, and
//!   when a directory is complete builds its tree blob, sends it (unless it
//!   equals the tree of the previous snapshot) and records it in the new
//!   change cache. A tree is always queued after its files' chunks, so the
//!   controller sees references only to what it already has.
//!
//! Every queue is bounded except the events to the assembler, which only
//! carry metadata and are consumed as fast as they come; memory stays flat
//! whatever the size of the data.
//!
//! Every queue carries batches: jobs of up to [`JOB_BATCH_FILES`] files or
//! [`JOB_BATCH_BYTES`], events by the batch of jobs (or [`EVENT_BATCH`]),
//! compressed chunks by [`ITEM_BATCH_BYTES`]. Handing over one file or one
//! chunk at a time woke a sleeping thread for each: ~200,000 context
//! switches for a 1 GiB tree of 25,000 files, a fifth of the agent's CPU.
//! Order still holds: a worker hands over a batch's chunks before the
//! batch's results, and the walker its events before the jobs that fill
//! their directories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek};
use std::num::NonZeroU64;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use pulih_core::chunker::{ChunkWindow, Profile};
use pulih_core::codec::Compressor;
use pulih_core::snapshot::{SnapshotIssue, SnapshotStats};
use pulih_core::tree::{Entry, EntryName, Node, Segment, Tree, FLAG_CHANGED_WHILE_READ};
use pulih_core::{ChunkId, TreeId};

use crate::cache::{CacheEntry, CacheKind, DirRecord, PackReader, PackWriter, PendingPack, Totals};
use crate::config::PathPatterns;
use crate::upload::Item;

/// Counters shared by the pipeline, read by the progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub others: AtomicU64,
    pub bytes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub changed_while_read: AtomicU64,
}

/// Problems met (entries skipped), bounded.
#[derive(Debug, Default)]
pub struct Issues {
    list: Mutex<Vec<SnapshotIssue>>,
    total: AtomicU64,
}

impl Issues {
    fn add(&self, path: &Path, message: String) {
        tracing::warn!(path = %path.display(), "{message}");
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() < pulih_core::formats::MAX_SNAPSHOT_ERRORS as usize {
            l.push(SnapshotIssue { path: path.as_os_str().as_bytes().to_vec(), message });
        }
    }
}

/// What a scan produced.
pub struct ScanOutput {
    pub root: TreeId,
    pub pack: PendingPack,
    pub stats: SnapshotStats,
    pub issues: Vec<SnapshotIssue>,
    pub errors_total: u64,
}

/// Scan failures that stop the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("dataset path {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("the upload stopped")]
    Aborted,
}

/// Inputs of one scan.
pub struct ScanParams<'a> {
    pub paths: &'a [PathBuf],
    pub exclude: &'a PathPatterns,
    /// Files cut with the small chunk profile.
    pub small_chunks: &'a PathPatterns,
    pub threads: usize,
    pub level: i32,
    pub parent: Option<Arc<PackReader>>,
    pub pack: PackWriter,
    pub items: SyncSender<Vec<Item>>,
    pub progress: Arc<Progress>,
    pub abort: Arc<AtomicBool>,
    /// Continuous mode: the paths where something changed since the parent
    /// snapshot, with all their ancestors. A directory not in the set whose
    /// own metadata is unchanged is taken from the parent whole, without
    /// being read. `None` walks everything.
    pub dirty: Option<&'a HashSet<PathBuf>>,
}

type Slot = (usize, usize);

struct Done {
    entry: Entry,
    cache: Option<CacheEntry>,
    /// For a directory: its subtree's totals.
    sub: Totals,
}

impl Done {
    fn new(entry: Entry, cache: Option<CacheEntry>) -> Self {
        Self { entry, cache, sub: Totals::default() }
    }
}

enum Event {
    DirStart {
        id: usize,
        parent: Option<Slot>,
        slots: usize,
        template: Option<Done>,
        old_tree: Option<TreeId>,
    },
    Done {
        slot: Slot,
        out: Option<Done>,
    },
    /// An unchanged subtree taken from the parent: its records are copied.
    Reuse {
        slot: Slot,
        out: Done,
        record: [u8; 32],
    },
}

struct Job {
    slot: Slot,
    path: PathBuf,
    meta: Metadata,
    name: EntryName,
    known: Vec<ChunkId>,
    profile: Profile,
}

/// Runs the pipeline; returns when every tree was queued for upload.
pub fn scan(p: ScanParams<'_>) -> Result<ScanOutput, ScanError> {
    let ScanParams { paths, exclude, small_chunks, threads, level, parent, pack, items, progress, abort, dirty } = p;
    let issues = Arc::new(Issues::default());
    let (ev_tx, ev_rx) = mpsc::channel::<Vec<Event>>();
    let (job_tx, job_rx) = mpsc::sync_channel::<Vec<Job>>(threads.max(1) * 2);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let seen = Arc::new(Mutex::new(HashSet::<ChunkId>::with_capacity(SEEN_LIMIT)));

    let root_rec = match &parent {
        Some(pr) => pr.get(&pr.root)?,
        None => None,
    };

    std::thread::scope(|s| -> Result<ScanOutput, ScanError> {
        let mut workers = Vec::new();
        for _ in 0..threads.max(1) {
            let (rx, ev, it, pr, ab, seen, iss) = (
                job_rx.clone(),
                ev_tx.clone(),
                items.clone(),
                progress.clone(),
                abort.clone(),
                seen.clone(),
                issues.clone(),
            );
            workers.push(s.spawn(move || worker(rx, ev, it, level, pr, ab, seen, iss)));
        }
        // Only the workers may hold the job receiver: if they all stop, the
        // walker's next send fails instead of blocking forever.
        drop(job_rx);
        let assembler = {
            let (it, ab, from) = (items.clone(), abort.clone(), parent.clone());
            s.spawn(move || assemble(ev_rx, it, pack, from, ab))
        };
        drop(items);

        let mut w = Walker {
            events: ev_tx,
            jobs: job_tx,
            pending_events: Vec::new(),
            pending_jobs: Vec::new(),
            pending_bytes: 0,
            parent: parent.clone(),
            next_id: 0,
            exclude,
            small_chunks,
            issues: issues.clone(),
            progress: progress.clone(),
            abort: abort.clone(),
            dirty,
        };
        let walked = w.walk_root(paths, root_rec).and_then(|()| w.flush_jobs());
        drop(w); // closes the job queue and the walker's event sender
        for h in workers {
            h.join().expect("worker panicked");
        }
        let assembled = assembler.join().expect("assembler panicked");
        walked?;
        let (root, pack) = assembled.ok_or(ScanError::Aborted)??;
        if abort.load(Ordering::Relaxed) {
            pack.discard();
            return Err(ScanError::Aborted);
        }
        let stats = SnapshotStats {
            files: progress.files.load(Ordering::Relaxed),
            dirs: progress.dirs.load(Ordering::Relaxed),
            symlinks: progress.symlinks.load(Ordering::Relaxed),
            others: progress.others.load(Ordering::Relaxed),
            bytes: progress.bytes.load(Ordering::Relaxed),
            bytes_read: progress.bytes_read.load(Ordering::Relaxed),
            bytes_sent: 0,
            changed_while_read: progress.changed_while_read.load(Ordering::Relaxed),
        };
        let list = std::mem::take(&mut *issues.list.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(ScanOutput { root, pack, stats, issues: list, errors_total: issues.total.load(Ordering::Relaxed) })
    })
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn entry_of(name: EntryName, m: &Metadata, node: Node) -> Entry {
    Entry { name, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), mtime_ns: ns(m.mtime(), m.mtime_nsec()), node }
}

fn cache_of(name: &EntryName, m: &Metadata, kind: CacheKind) -> CacheEntry {
    CacheEntry {
        name: name.as_bytes().to_vec(),
        dev: m.dev(),
        ino: m.ino(),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        size: m.size(),
        kind,
    }
}

fn link_group(m: &Metadata) -> Option<NonZeroU64> {
    if m.nlink() > 1 {
        let mut h = blake3::Hasher::new();
        h.update(&m.dev().to_le_bytes());
        h.update(&m.ino().to_le_bytes());
        let b = h.finalize();
        NonZeroU64::new(u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes")) | 1)
    } else {
        None
    }
}

/// Dataset paths as a trie of path components.
#[derive(Default)]
struct PathTrie {
    children: BTreeMap<Vec<u8>, PathTrie>,
    leaf: bool,
}

/// Most files in one batch of jobs.
const JOB_BATCH_FILES: usize = 32;
/// A batch of jobs is handed over once its files hold this many bytes (a
/// large file goes alone, so workers share the large files evenly).
const JOB_BATCH_BYTES: u64 = 1024 * 1024;
/// Most events the walker holds before handing them to the assembler (a
/// snapshot with few changed files is mostly the walker's own events).
const EVENT_BATCH: usize = 256;
/// A worker hands its compressed chunks to the uploader once they reach
/// this many bytes, and at the end of each batch of jobs.
const ITEM_BATCH_BYTES: usize = 512 * 1024;

struct Walker<'a> {
    events: Sender<Vec<Event>>,
    jobs: SyncSender<Vec<Job>>,
    pending_events: Vec<Event>,
    pending_jobs: Vec<Job>,
    /// Bytes in the files of `pending_jobs`.
    pending_bytes: u64,
    parent: Option<Arc<PackReader>>,
    next_id: usize,
    exclude: &'a PathPatterns,
    small_chunks: &'a PathPatterns,
    issues: Arc<Issues>,
    progress: Arc<Progress>,
    abort: Arc<AtomicBool>,
    dirty: Option<&'a HashSet<PathBuf>>,
}

impl Walker<'_> {
    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id
    }

    fn send(&mut self, ev: Event) -> Result<(), ScanError> {
        self.pending_events.push(ev);
        if self.pending_events.len() >= EVENT_BATCH {
            self.flush_events()?;
        }
        Ok(())
    }

    fn flush_events(&mut self) -> Result<(), ScanError> {
        if self.pending_events.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.pending_events, Vec::with_capacity(EVENT_BATCH));
        self.events.send(batch).map_err(|_| ScanError::Aborted)
    }

    fn queue_job(&mut self, job: Job) -> Result<(), ScanError> {
        self.pending_bytes += job.meta.size();
        self.pending_jobs.push(job);
        if self.pending_jobs.len() >= JOB_BATCH_FILES || self.pending_bytes >= JOB_BATCH_BYTES {
            self.flush_jobs()?;
        }
        Ok(())
    }

    /// Hands over the pending jobs, after the events that start their
    /// directories (a worker's result must never reach the assembler
    /// before its directory does); with none pending, only the events.
    fn flush_jobs(&mut self) -> Result<(), ScanError> {
        self.flush_events()?;
        if self.pending_jobs.is_empty() {
            return Ok(());
        }
        self.pending_bytes = 0;
        let batch = std::mem::take(&mut self.pending_jobs);
        self.jobs.send(batch).map_err(|_| ScanError::Aborted)
    }

    fn child_record(&self, old: Option<&DirRecord>, name: &[u8]) -> Option<DirRecord> {
        let e = old?.get(name)?;
        let CacheKind::Dir { record } = &e.kind else { return None };
        // A damaged cache only costs a re-read.
        self.parent.as_ref()?.get(record).ok().flatten()
    }

    fn walk_root(&mut self, paths: &[PathBuf], old: Option<DirRecord>) -> Result<(), ScanError> {
        let mut trie = PathTrie::default();
        for p in paths {
            let meta = std::fs::symlink_metadata(p).map_err(|source| ScanError::Root { path: p.clone(), source })?;
            if !meta.is_dir() && !meta.is_file() {
                return Err(ScanError::Root {
                    path: p.clone(),
                    source: io::Error::other("is neither a directory nor a file"),
                });
            }
            let mut node = &mut trie;
            for c in p.components().skip(1) {
                node = node.children.entry(c.as_os_str().as_bytes().to_vec()).or_default();
            }
            node.leaf = true;
        }
        if trie.leaf {
            // The dataset is "/" itself.
            let id = self.id();
            return self.walk_dir(Path::new("/"), Path::new("/"), id, None, None, old.as_ref());
        }
        let id = self.id();
        self.walk_virtual(&trie, PathBuf::from("/"), id, None, None, old.as_ref())
    }

    /// A directory that exists only to lead to dataset paths: its entries
    /// are the next path components, its mode and owner the real
    /// directory's.
    fn walk_virtual(
        &mut self,
        trie: &PathTrie,
        path: PathBuf,
        id: usize,
        parent: Option<Slot>,
        template: Option<Done>,
        old: Option<&DirRecord>,
    ) -> Result<(), ScanError> {
        let old_tree = old.and_then(|o| o.tree);
        self.send(Event::DirStart { id, parent, slots: trie.children.len(), template, old_tree })?;
        for (slot, (name, child)) in trie.children.iter().enumerate() {
            let child_path = path.join(OsStr::from_bytes(name));
            let meta = std::fs::symlink_metadata(&child_path)
                .map_err(|source| ScanError::Root { path: child_path.clone(), source })?;
            let ename = EntryName::new(name.clone())
                .map_err(|e| ScanError::Root { path: child_path.clone(), source: io::Error::other(e) })?;
            if child.leaf {
                self.entry(&child_path, &child_path, ename, meta, (id, slot), old)?;
            } else {
                let cid = self.id();
                // A directory above a dataset path (`/srv` for `/srv/x/data`)
                // is recorded with mtime 0, in its entry and in the change
                // cache (ctime too): its times change whenever anything next
                // to the dataset is created or removed (a file in `/tmp`), and
                // recording them would make every snapshot of an unchanged
                // dataset send new trees up to the root. Its contents in the
                // snapshot are only the way to the dataset paths, so its times
                // say nothing about the data.
                let mut entry = entry_of(ename.clone(), &meta, Node::Fifo);
                entry.mtime_ns = 0;
                let mut cache = cache_of(&ename, &meta, CacheKind::Dir { record: [0; 32] });
                (cache.mtime_ns, cache.ctime_ns) = (0, 0);
                let tmpl = Done::new(entry, Some(cache));
                let rec = self.child_record(old, name);
                self.walk_virtual(child, child_path, cid, Some((id, slot)), Some(tmpl), rec.as_ref())?;
            }
        }
        Ok(())
    }

    /// Walks the directory at `path`, which is `base` (a dataset path) or
    /// inside it.
    fn walk_dir(
        &mut self,
        path: &Path,
        base: &Path,
        id: usize,
        parent: Option<Slot>,
        template: Option<Done>,
        old: Option<&DirRecord>,
    ) -> Result<(), ScanError> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(ScanError::Aborted);
        }
        let listing = std::fs::read_dir(path).and_then(|rd| {
            let mut names: Vec<OsString> = Vec::new();
            for e in rd {
                names.push(e?.file_name());
            }
            Ok(names)
        });
        let mut names = match listing {
            Ok(n) => n,
            Err(e) => {
                self.issues.add(path, format!("cannot list directory: {e}"));
                return match parent {
                    Some(slot) => self.send(Event::Done { slot, out: None }),
                    None => Err(ScanError::Root { path: path.to_owned(), source: e }),
                };
            }
        };
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut kept = Vec::with_capacity(names.len());
        for n in names {
            let p = path.join(&n);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if self.exclude.matches(&p, p.strip_prefix(base).unwrap_or(&p), m.is_dir()) => {}
                Ok(m) => kept.push((n, p, m)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.issues.add(&p, "vanished while the snapshot ran; not in this snapshot".into())
                }
                Err(e) => self.issues.add(&p, format!("cannot read metadata: {e}")),
            }
        }
        self.progress.dirs.fetch_add(1, Ordering::Relaxed);
        self.send(Event::DirStart { id, parent, slots: kept.len(), template, old_tree: old.and_then(|o| o.tree) })?;
        for (slot, (n, p, m)) in kept.into_iter().enumerate() {
            let name = match EntryName::new(n.as_bytes()) {
                Ok(x) => x,
                Err(e) => {
                    self.issues.add(&p, e.to_string());
                    self.send(Event::Done { slot: (id, slot), out: None })?;
                    continue;
                }
            };
            self.entry(&p, base, name, m, (id, slot), old)?;
        }
        Ok(())
    }

    /// In continuous mode, the event that takes the directory at `path`
    /// from the parent snapshot unread: nothing under it changed (not in
    /// the dirty set) and the directory itself is the same inode with the
    /// same times (a directory renamed into place is walked).
    fn reusable(
        &self,
        path: &Path,
        name: &EntryName,
        m: &Metadata,
        prev: Option<&CacheEntry>,
        old: Option<&DirRecord>,
        slot: Slot,
    ) -> Option<Event> {
        let dirty = self.dirty?;
        let prev = prev?;
        if dirty.contains(path)
            || prev.dev != m.dev()
            || prev.ino != m.ino()
            || prev.mtime_ns != ns(m.mtime(), m.mtime_nsec())
            || prev.ctime_ns != ns(m.ctime(), m.ctime_nsec())
        {
            return None;
        }
        let CacheKind::Dir { record } = prev.kind else { return None };
        let rec = self.child_record(old, name.as_bytes())?;
        let tree = rec.tree?;
        let t = rec.totals;
        for (counter, v) in [
            (&self.progress.files, t.files),
            (&self.progress.dirs, t.dirs),
            (&self.progress.symlinks, t.symlinks),
            (&self.progress.others, t.others),
            (&self.progress.bytes, t.bytes),
        ] {
            counter.fetch_add(v, Ordering::Relaxed);
        }
        let out = Done {
            entry: entry_of(name.clone(), m, Node::Dir { tree }),
            cache: Some(cache_of(name, m, CacheKind::Dir { record })),
            sub: t,
        };
        Some(Event::Reuse { slot, out, record })
    }

    /// One entry at `path`, which is `base` (a dataset path) or inside it.
    fn entry(
        &mut self,
        path: &Path,
        base: &Path,
        name: EntryName,
        m: Metadata,
        slot: Slot,
        old: Option<&DirRecord>,
    ) -> Result<(), ScanError> {
        let ft = m.file_type();
        let prev = old.and_then(|o| o.get(name.as_bytes()));
        if ft.is_dir() {
            if let Some(ev) = self.reusable(path, &name, &m, prev, old, slot) {
                return self.send(ev);
            }
            let id = self.id();
            let tmpl = Done::new(
                entry_of(name.clone(), &m, Node::Fifo),
                Some(cache_of(&name, &m, CacheKind::Dir { record: [0; 32] })),
            );
            let rec = self.child_record(old, name.as_bytes());
            return self.walk_dir(path, base, id, Some(slot), Some(tmpl), rec.as_ref());
        }
        let out = if ft.is_file() {
            let unchanged = prev.filter(|c| {
                c.dev == m.dev()
                    && c.ino == m.ino()
                    && c.size == m.size()
                    && c.mtime_ns == ns(m.mtime(), m.mtime_nsec())
                    && c.ctime_ns == ns(m.ctime(), m.ctime_nsec())
                    && matches!(&c.kind, CacheKind::File { flags, .. } if flags & FLAG_CHANGED_WHILE_READ == 0)
            });
            if let Some(CacheEntry { kind: CacheKind::File { flags, segments }, .. }) = unchanged {
                self.progress.files.fetch_add(1, Ordering::Relaxed);
                self.progress.bytes.fetch_add(m.size(), Ordering::Relaxed);
                let node = Node::File {
                    size: m.size(),
                    link_group: link_group(&m),
                    flags: *flags,
                    segments: segments.clone(),
                };
                let cache = cache_of(&name, &m, CacheKind::File { flags: *flags, segments: segments.clone() });
                Some(Done::new(entry_of(name, &m, node), Some(cache)))
            } else {
                let known = match prev.map(|c| &c.kind) {
                    Some(CacheKind::File { segments, .. }) => segments
                        .iter()
                        .filter_map(|s| match s {
                            Segment::Data { id, .. } => Some(*id),
                            Segment::Hole { .. } => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let relative = path.strip_prefix(base).unwrap_or(Path::new(""));
                let profile =
                    if self.small_chunks.matches(path, relative, false) { Profile::Small } else { Profile::Standard };
                let job = Job { slot, path: path.to_owned(), meta: m, name, known, profile };
                return self.queue_job(job);
            }
        } else if ft.is_symlink() {
            match std::fs::read_link(path) {
                Ok(t)
                    if !t.as_os_str().is_empty() && t.as_os_str().len() <= pulih_core::formats::MAX_LINK_TARGET_LEN =>
                {
                    self.progress.symlinks.fetch_add(1, Ordering::Relaxed);
                    let node = Node::Symlink { target: t.as_os_str().as_bytes().to_vec() };
                    Some(Done::new(entry_of(name, &m, node), None))
                }
                Ok(_) => {
                    self.issues.add(path, "symlink target is empty or too long".into());
                    None
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.issues.add(path, "vanished while the snapshot ran; not in this snapshot".into());
                    None
                }
                Err(e) => {
                    self.issues.add(path, format!("cannot read symlink: {e}"));
                    None
                }
            }
        } else if ft.is_fifo() {
            self.progress.others.fetch_add(1, Ordering::Relaxed);
            Some(Done::new(entry_of(name, &m, Node::Fifo), None))
        } else {
            self.progress.others.fetch_add(1, Ordering::Relaxed);
            self.issues.add(path, "skipped: sockets and device files are not backed up".into());
            None
        };
        self.send(Event::Done { slot, out })
    }
}

#[allow(clippy::too_many_arguments)]
fn worker(
    jobs: Arc<Mutex<Receiver<Vec<Job>>>>,
    events: Sender<Vec<Event>>,
    items: SyncSender<Vec<Item>>,
    level: i32,
    progress: Arc<Progress>,
    abort: Arc<AtomicBool>,
    seen: Arc<Mutex<HashSet<ChunkId>>>,
    issues: Arc<Issues>,
) {
    let mut zstd = Compressor::new(level);
    let mut window = ChunkWindow::new();
    let mut outbox = Outbox { to: &items, items: Vec::new(), bytes: 0 };
    loop {
        let batch = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(batch) = batch else { return };
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            if abort.load(Ordering::Relaxed) {
                return;
            }
            let out = match read_file(&job, &mut zstd, &mut window, &mut outbox, &progress, &seen) {
                Ok(Some((done, changed))) => {
                    if changed {
                        progress.changed_while_read.fetch_add(1, Ordering::Relaxed);
                        issues
                            .add(&job.path, "file changed while it was read; the next snapshot reads it again".into());
                    }
                    Some(done)
                }
                Ok(None) => None,
                Err(ReadFail::Aborted) => {
                    abort.store(true, Ordering::Relaxed);
                    return;
                }
                Err(ReadFail::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    issues.add(&job.path, "vanished while the snapshot ran; not in this snapshot".into());
                    None
                }
                Err(ReadFail::Io(e)) => {
                    issues.add(&job.path, format!("cannot read file: {e}"));
                    None
                }
            };
            results.push(Event::Done { slot: job.slot, out });
        }
        // The chunks first: the assembler may send a tree as soon as it
        // has the results, and the tree must reach the uploader after them.
        if outbox.flush().is_err() {
            abort.store(true, Ordering::Relaxed);
            return;
        }
        if events.send(results).is_err() {
            return;
        }
    }
}

/// Compressed chunks a worker made, handed to the uploader in batches.
struct Outbox<'a> {
    to: &'a SyncSender<Vec<Item>>,
    items: Vec<Item>,
    bytes: usize,
}

impl Outbox<'_> {
    fn push(&mut self, item: Item, len: usize) -> Result<(), ReadFail> {
        self.items.push(item);
        self.bytes += len;
        if self.bytes >= ITEM_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ReadFail> {
        if self.items.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        self.to.send(std::mem::take(&mut self.items)).map_err(|_| ReadFail::Aborted)
    }
}

enum ReadFail {
    Io(io::Error),
    Aborted,
}

impl From<io::Error> for ReadFail {
    fn from(e: io::Error) -> Self {
        ReadFail::Io(e)
    }
}

/// Most chunk ids remembered as sent in one snapshot: 7/8 of 65,536, the
/// load limit of a table of that size, so the set is allocated once (about
/// 2.1 MiB) and never grows with the data set (the earlier limit, 250,000
/// ids, let it grow to a 17 MiB table). When full it is emptied; a chunk met
/// again after that is compressed and asked about again (usually answered
/// "present"; at worst sent again, and the controller stores it once).
const SEEN_LIMIT: usize = 57_344;

/// Data extents of a file: `(offset, len)`; several only for sparse files.
fn extents(f: &File, size: u64, blocks: u64) -> io::Result<Vec<(u64, u64)>> {
    if size == 0 {
        return Ok(Vec::new());
    }
    if blocks.saturating_mul(512) >= size {
        return Ok(vec![(0, size)]);
    }
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(rustix::io::Errno::INVAL) => return Ok(vec![(0, size)]), // no SEEK_DATA support
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(data))?.min(size);
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}

fn read_file(
    job: &Job,
    zstd: &mut Compressor,
    window: &mut ChunkWindow,
    outbox: &mut Outbox<'_>,
    progress: &Progress,
    seen: &Mutex<HashSet<ChunkId>>,
) -> Result<Option<(Done, bool)>, ReadFail> {
    let open = |noatime: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        let mut flags = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
        if noatime {
            flags |= rustix::fs::OFlags::NOATIME.bits() as i32;
        }
        o.custom_flags(flags);
        o.open(&job.path)
    };
    // O_NOATIME is allowed only to the file's owner (or with CAP_FOWNER).
    let mut f = open(true).or_else(|_| open(false))?;
    let before = f.metadata()?;
    if !before.is_file() {
        return Ok(None);
    }
    let known: HashSet<ChunkId> = job.known.iter().copied().collect();
    let mut segments = Vec::new();
    let mut pos = 0u64;
    let mut total = 0u64;
    for (off, len) in extents(&f, before.size(), before.blocks())? {
        if off > pos {
            segments.push(Segment::Hole { len: off - pos });
        }
        f.seek(io::SeekFrom::Start(off))?;
        let read = window.chunks(job.profile, (&f).take(len), |data| -> Result<(), ReadFail> {
            let id = ChunkId::of(data);
            let raw_len = data.len() as u32;
            segments.push(Segment::Data { id, len: raw_len });
            let fresh = !known.contains(&id) && {
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() >= SEEN_LIMIT {
                    s.clear();
                }
                s.insert(id)
            };
            if fresh {
                let packed = zstd.compress(data);
                let len = packed.len();
                outbox.push(Item::Chunk { id, raw_len, data: packed }, len)?;
            }
            Ok(())
        })?;
        progress.bytes_read.fetch_add(read, Ordering::Relaxed);
        pos = off + read;
        total = pos;
        if read < len {
            break; // the file shrank while we read it
        }
    }
    let size = before.size();
    if total < size {
        // Trailing hole (or the file shrank: then `changed` below is set).
        segments.push(Segment::Hole { len: size - total });
    }
    let after = f.metadata()?;
    let changed = after.size() != before.size()
        || after.mtime() != before.mtime()
        || after.mtime_nsec() != before.mtime_nsec()
        || after.ctime() != before.ctime()
        || after.ctime_nsec() != before.ctime_nsec()
        || after.ino() != job.meta.ino();
    let flags = if changed { FLAG_CHANGED_WHILE_READ } else { 0 };
    progress.files.fetch_add(1, Ordering::Relaxed);
    progress.bytes.fetch_add(size, Ordering::Relaxed);
    let node = Node::File { size, link_group: link_group(&before), flags, segments: segments.clone() };
    let cache = cache_of(&job.name, &before, CacheKind::File { flags, segments });
    Ok(Some((Done::new(entry_of(job.name.clone(), &before, node), Some(cache)), changed)))
}

struct PendingDir {
    parent: Option<Slot>,
    template: Option<Done>,
    old_tree: Option<TreeId>,
    slots: Vec<Option<Done>>,
    remaining: usize,
}

type Assembled = Option<Result<(TreeId, PendingPack), ScanError>>;

fn assemble(
    events: Receiver<Vec<Event>>,
    items: SyncSender<Vec<Item>>,
    mut pack: PackWriter,
    from: Option<Arc<PackReader>>,
    abort: Arc<AtomicBool>,
) -> Assembled {
    let mut dirs: HashMap<usize, PendingDir> = HashMap::new();
    let mut sent_trees: HashSet<TreeId> = HashSet::new();
    let mut root: Option<(TreeId, [u8; 32])> = None;
    let fail = |e: ScanError, abort: &AtomicBool| {
        abort.store(true, Ordering::Relaxed);
        Some(Err(e))
    };
    let mut trees = Vec::new();
    while let Ok(batch) = events.recv() {
        for ev in batch {
            let mut ready = match ev {
                Event::DirStart { id, parent, slots, template, old_tree } => {
                    let mut v = Vec::with_capacity(slots);
                    v.resize_with(slots, || None);
                    dirs.insert(id, PendingDir { parent, template, old_tree, slots: v, remaining: slots });
                    if slots == 0 {
                        Some(id)
                    } else {
                        None
                    }
                }
                Event::Done { slot: (dir, i), out } => {
                    let d = dirs.get_mut(&dir).expect("slot of a started directory");
                    d.slots[i] = out;
                    d.remaining -= 1;
                    (d.remaining == 0).then_some(dir)
                }
                Event::Reuse { slot: (dir, i), out, record } => {
                    let copied = match &from {
                        Some(f) => pack.copy_subtree(f, record),
                        None => Ok(false),
                    };
                    match copied {
                        Ok(true) => {}
                        Ok(false) => {
                            let why = "a reused directory's records are missing".to_string();
                            let e = crate::cache::CacheError::Damaged { path: PathBuf::from("(parent pack)"), why };
                            return fail(e.into(), &abort);
                        }
                        Err(e) => return fail(e.into(), &abort),
                    }
                    let d = dirs.get_mut(&dir).expect("slot of a started directory");
                    d.slots[i] = Some(out);
                    d.remaining -= 1;
                    (d.remaining == 0).then_some(dir)
                }
            };
            // Completing a directory may complete its parent, and so on up.
            while let Some(id) = ready.take() {
                let d = dirs.remove(&id).expect("pending directory");
                let mut entries = Vec::with_capacity(d.slots.len());
                let mut cache = Vec::with_capacity(d.slots.len());
                let mut totals = Totals { dirs: 1, ..Totals::default() };
                for done in d.slots.into_iter().flatten() {
                    match &done.entry.node {
                        Node::File { size, .. } => {
                            totals.files += 1;
                            totals.bytes += size;
                        }
                        Node::Dir { .. } => totals.add(&done.sub),
                        Node::Symlink { .. } => totals.symlinks += 1,
                        Node::Fifo => totals.others += 1,
                    }
                    if let Some(c) = done.cache {
                        cache.push(c);
                    }
                    entries.push(done.entry);
                }
                let tree = match Tree::new(entries) {
                    Ok(t) => t,
                    Err(e) => {
                        return fail(ScanError::Root { path: PathBuf::new(), source: io::Error::other(e) }, &abort)
                    }
                };
                let (tid, bytes) = tree.encode();
                if d.old_tree != Some(tid) && sent_trees.insert(tid) {
                    let data = pulih_core::codec::compress(&bytes, 3);
                    trees.push(Item::Tree { id: tid, raw_len: bytes.len() as u32, data });
                }
                let key = match pack.add(&DirRecord { tree: Some(tid), totals, entries: cache }) {
                    Ok(k) => k,
                    Err(e) => return fail(e.into(), &abort),
                };
                match (d.parent, d.template) {
                    (Some((pdir, pslot)), Some(mut t)) => {
                        t.entry.node = Node::Dir { tree: tid };
                        t.sub = totals;
                        if let Some(c) = &mut t.cache {
                            c.kind = CacheKind::Dir { record: key };
                        }
                        let p = dirs.get_mut(&pdir).expect("parent directory pending");
                        p.slots[pslot] = Some(t);
                        p.remaining -= 1;
                        if p.remaining == 0 {
                            ready = Some(pdir);
                        }
                    }
                    _ => root = Some((tid, key)),
                }
            }
        }
        // Trees completed by this batch, in completion order (children first).
        if !trees.is_empty() && items.send(std::mem::take(&mut trees)).is_err() {
            return fail(ScanError::Aborted, &abort);
        }
    }
    let (tid, key) = root?;
    Some(pack.finish(key).map(|p| (tid, p)).map_err(ScanError::from))
}
