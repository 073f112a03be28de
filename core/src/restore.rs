//! Restore a snapshot (or part of it) into a directory, safely: the one
//! writer used by the controller (blobs from its store) and by a standby
//! agent (blobs fetched over its job connection), through [`BlobSource`].
//!
//! The restore never writes outside its target, whatever the trees say or
//! what a local user plants in the destination (F28-F31): every name was
//! validated as a single path component when the tree was decoded; every
//! directory is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its
//! parent's descriptor; new files are created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, so a symlink is never followed. Hard links are made only to
//! files of this restore, found again by walking the same way. Every tree
//! and chunk is rehashed here, whatever the source did, before it is used;
//! holes of sparse files are skipped, not written.
//!
//! **Delta mode** ([`Options::only_changed`]) restores into a directory that
//! already holds an older copy (failback to a rebuilt primary): a regular file
//! whose size matches is read at the snapshot's chunk boundaries and each
//! piece hashed with blake3 (the boundaries are FastCDC's for that content, so
//! this is the same comparison as re-chunking, without cutting twice, and it
//! handles the holes of sparse files); only files that differ are written, to
//! a temporary name in the same directory and renamed over the old one.
//! Unchanged files get their metadata fixed. Whatever is in the way of an
//! entry (a symlink where a directory is expected, a directory where a file
//! is) is removed, never followed. With [`Options::delete`], entries the
//! snapshot does not have are removed, so the destination ends equal to it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Timespec, Timestamps, CWD};

use crate::formats::{MAX_CHUNK_LEN, MAX_TREE_LEN};
use crate::tree::{Entry, Node, Segment, Tree};
use crate::{ChunkId, TreeId};

/// Deepest directory nesting restored.
pub const MAX_DEPTH: usize = 1024;

/// Error of a blob source (store I/O, missing blob, refused by the peer).
pub type SourceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where the blobs of a restore come from. Implementations return plaintext
/// and need not verify it: the writer rehashes everything.
pub trait BlobSource {
    /// The plaintext encoding of tree `id` (at most [`MAX_TREE_LEN`] bytes).
    fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError>;
    /// The plaintext of chunk `id`, declared `len` bytes long.
    fn chunk(&mut self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError>;
    /// A hint: these chunks are asked for next, in this order (a remote
    /// source pipelines its requests). The default ignores it.
    fn prefetch(&mut self, _chunks: &[(ChunkId, u32)]) {}
    /// The same blobs readable from several threads at once, if this
    /// source can do that (the controller's own store can; a connection
    /// cannot). A restore into an empty target then writes file contents on
    /// a few threads while it walks the trees.
    fn shared(&self) -> Option<&dyn SharedSource> {
        None
    }
}

/// A blob source several threads read at once. As with [`BlobSource`], what
/// it returns is rehashed by the writer before it is used.
pub trait SharedSource: Sync {
    /// The plaintext encoding of tree `id`.
    fn tree(&self, id: &TreeId) -> Result<Vec<u8>, SourceError>;
    /// The plaintext of chunk `id`, declared `len` bytes long.
    fn chunk(&self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError>;
}

/// Every shared source is a blob source that says it is shared.
impl<T: SharedSource> BlobSource for T {
    fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
        SharedSource::tree(self, id)
    }
    fn chunk(&mut self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError> {
        SharedSource::chunk(self, id, len)
    }
    fn shared(&self) -> Option<&dyn SharedSource> {
        Some(self)
    }
}

/// A [`SharedSource`] behind a reference, used where a [`BlobSource`] is expected.
struct Shared<'s>(&'s dyn SharedSource);

impl BlobSource for Shared<'_> {
    fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
        self.0.tree(id)
    }
    fn chunk(&mut self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError> {
        self.0.chunk(id, len)
    }
}

/// Restore failures.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("destination {0} exists and is not an empty directory; restore only into a new or empty directory (or use the delta mode, --only-changed)")]
    DestNotEmpty(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: {source}")]
    Source { path: String, source: SourceError },
    #[error("{path}: {kind} {id} is damaged: {reason}")]
    Damaged { path: String, kind: &'static str, id: String, reason: String },
    #[error("path {0:?} is not in the snapshot")]
    NoSuchPath(String),
    #[error("{0}: directories nested deeper than {MAX_DEPTH}")]
    TooDeep(String),
}

/// How to restore.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Delta mode: the destination may hold an older copy; write only what differs.
    pub only_changed: bool,
    /// With `only_changed`: remove entries the snapshot does not have.
    pub delete: bool,
}

/// What a restore did. `files` and `bytes` count what was written; in delta
/// mode `unchanged` counts files left as they were.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub others: u64,
    pub bytes: u64,
    /// Regular files whose content already matched (delta mode).
    #[serde(default)]
    pub unchanged: u64,
    /// Entries removed because the snapshot does not have them, or because
    /// they were in the way of an entry of another kind (delta mode).
    #[serde(default)]
    pub deleted: u64,
}

/// A source over a closure pair; handy for tests and adapters.
pub struct FnSource<T, C> {
    pub tree: T,
    pub chunk: C,
}

impl<T, C> BlobSource for FnSource<T, C>
where
    T: FnMut(&TreeId) -> Result<Vec<u8>, SourceError>,
    C: FnMut(&ChunkId, u32) -> Result<Vec<u8>, SourceError>,
{
    fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
        (self.tree)(id)
    }
    fn chunk(&mut self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError> {
        (self.chunk)(id, len)
    }
}

struct Ctx<'a, S: BlobSource + ?Sized> {
    src: &'a mut S,
    root: OwnedFd,
    owners: bool,
    opts: Options,
    /// Hard-link group → path (components) of the first file restored.
    links: HashMap<u64, Vec<Vec<u8>>>,
    stats: RestoreStats,
    tmp_seq: u64,
    /// Threads that write the contents of new files, if the source is
    /// shared (see [`restore_parallel`]); `None` writes them inline.
    writers: Option<Writers<'a>>,
}

/// Most files whose contents wait for a writer thread (each holds an open
/// descriptor and its entry).
const WRITE_QUEUE: usize = 64;

/// Writer threads of a restore: at most this many, and no more than cores.
const MAX_WRITERS: usize = 4;

/// A new file, created (empty) by the walk, whose contents a writer thread
/// writes before it sets the file's owner, mode and times.
struct WriteJob {
    file: File,
    entry: Entry,
    path: Vec<Vec<u8>>,
}

/// What the writer threads share with the walk: the first error any of them
/// met (the restore stops at it and returns it).
#[derive(Default)]
struct WriterState {
    failed: AtomicBool,
    error: Mutex<Option<RestoreError>>,
}

impl WriterState {
    fn fail(&self, e: RestoreError) {
        let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The walk's end of the writer threads' queue.
struct Writers<'a> {
    queue: SyncSender<WriteJob>,
    state: &'a WriterState,
}

impl Writers<'_> {
    fn submit(&self, job: WriteJob) -> Result<(), RestoreError> {
        let stopped =
            |path: &[Vec<u8>], why: &str| RestoreError::Io { path: show(path), source: io::Error::other(why) };
        if self.state.failed.load(Ordering::Relaxed) {
            return Err(stopped(&job.path, "restore stopped: writing another file failed"));
        }
        self.queue.send(job).map_err(|e| stopped(&e.0.path, "restore stopped: no writer thread is left"))
    }
}

fn show(path: &[Vec<u8>]) -> String {
    let v: Vec<String> = path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("/{}", v.join("/"))
}

fn io_at(path: &[Vec<u8>]) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io { path: show(path), source }
}

fn ts(ns: i64) -> Timespec {
    Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) as _ }
}

fn times(mtime_ns: i64) -> Timestamps {
    Timestamps { last_access: ts(mtime_ns), last_modification: ts(mtime_ns) }
}

/// Opens an existing directory `name` under `dir` without following links.
fn open_dir_at(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// What is at `name` in `dir`, without following a link; `None` if nothing.
fn lstat_at(dir: impl AsFd, name: &[u8]) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn kind_of(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Removes `name` from `dir`, a directory with everything below it; links
/// are removed, never followed. Returns the number of entries removed.
fn remove_at(dir: &OwnedFd, name: &[u8], depth: usize) -> io::Result<u64> {
    let Some(st) = lstat_at(dir, name)? else { return Ok(0) };
    if kind_of(&st) != FileType::Directory {
        rustix::fs::unlinkat(dir, OsStr::from_bytes(name), AtFlags::empty())?;
        return Ok(1);
    }
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!("directories nested deeper than {MAX_DEPTH}")));
    }
    let child = open_dir_at(dir, name)?;
    let mut n = 0;
    for c in list_dir(&child)? {
        n += remove_at(&child, &c, depth + 1)?;
    }
    rustix::fs::unlinkat(dir, OsStr::from_bytes(name), AtFlags::REMOVEDIR)?;
    Ok(n + 1)
}

/// Names in a directory, without `.` and `..`.
fn list_dir(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Loads and verifies tree `id` from `src`.
pub fn load_tree<S: BlobSource + ?Sized>(src: &mut S, id: &TreeId, path: &str) -> Result<Tree, RestoreError> {
    let plain = src.tree(id).map_err(|source| RestoreError::Source { path: path.into(), source })?;
    let damaged = |reason: String| RestoreError::Damaged { path: path.into(), kind: "tree", id: id.to_hex(), reason };
    if plain.len() > MAX_TREE_LEN as usize {
        return Err(damaged(format!("{} bytes, more than {MAX_TREE_LEN}", plain.len())));
    }
    let actual = TreeId::of(&plain);
    if actual != *id {
        return Err(damaged(format!("content hashes to {}", actual.to_hex())));
    }
    Tree::decode(&plain).map_err(|e| damaged(e.to_string()))
}

/// Loads and verifies chunk `id` of `len` bytes from `src`.
pub fn load_chunk<S: BlobSource + ?Sized>(
    src: &mut S,
    id: &ChunkId,
    len: u32,
    path: &str,
) -> Result<Vec<u8>, RestoreError> {
    let damaged = |reason: String| RestoreError::Damaged { path: path.into(), kind: "chunk", id: id.to_hex(), reason };
    if len == 0 || len > MAX_CHUNK_LEN {
        return Err(damaged(format!("declared length {len} not in 1..={MAX_CHUNK_LEN}")));
    }
    let data = src.chunk(id, len).map_err(|source| RestoreError::Source { path: path.into(), source })?;
    if data.len() != len as usize {
        return Err(damaged(format!("{} bytes, expected {len}", data.len())));
    }
    let actual = ChunkId::of(&data);
    if actual != *id {
        return Err(damaged(format!("content hashes to {}", actual.to_hex())));
    }
    Ok(data)
}

/// Restores the tree `root` (or the entry at `subpath` within it) into `dest`.
///
/// Without `opts.only_changed`, `dest` must not exist or be empty.
pub fn restore<S: BlobSource + ?Sized>(
    src: &mut S,
    root: &TreeId,
    subpath: &[Vec<u8>],
    dest: &Path,
    opts: Options,
) -> Result<RestoreStats, RestoreError> {
    let dest_s = dest.display().to_string();
    match std::fs::read_dir(dest) {
        Ok(mut it) => {
            if !opts.only_changed && it.next().is_some() {
                return Err(RestoreError::DestNotEmpty(dest_s));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(|source| RestoreError::Io { path: dest_s.clone(), source })?;
        }
        Err(_) if !opts.only_changed => return Err(RestoreError::DestNotEmpty(dest_s)),
        Err(source) => return Err(RestoreError::Io { path: dest_s, source }),
    }
    let root_fd = rustix::fs::openat(CWD, dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| RestoreError::Io { path: dest_s.clone(), source: e.into() })?;
    restore_into(src, root, subpath, root_fd, &dest_s, opts)
}

/// Restores into an open directory (`dest_s` names it in errors), which
/// must be empty unless `opts.only_changed`: how the controller's API
/// restores into a target it opened without following links.
pub fn restore_into<S: BlobSource + ?Sized>(
    src: &mut S,
    root: &TreeId,
    subpath: &[Vec<u8>],
    root_fd: OwnedFd,
    dest_s: &str,
    opts: Options,
) -> Result<RestoreStats, RestoreError> {
    let dest_s = dest_s.to_owned();
    if !opts.only_changed {
        let mut entries = rustix::fs::Dir::read_from(&root_fd)
            .map_err(|e| RestoreError::Io { path: dest_s.clone(), source: e.into() })?;
        let has_entries =
            entries.any(|e| e.is_ok_and(|e| ![&b"."[..], &b".."[..]].contains(&e.file_name().to_bytes())));
        if has_entries {
            return Err(RestoreError::DestNotEmpty(dest_s));
        }
    }
    let owners = rustix::process::geteuid().is_root();
    if !opts.only_changed {
        if let Some(shared) = src.shared() {
            return restore_parallel(shared, root, subpath, root_fd, &dest_s, owners, opts);
        }
    }
    let mut ctx = Ctx::new(src, root_fd, owners, opts);
    walk(&mut ctx, root, subpath, &dest_s)?;
    Ok(ctx.stats)
}

/// Restores with writer threads: the walk (this thread) loads and checks
/// the trees and creates every directory, link and empty file in order, as
/// the serial restore does; up to [`MAX_WRITERS`] threads fill the new files
/// (read, decompress, rehash, write) and then set their owner, mode and
/// times. Nothing about the target is decided on the writer threads: they
/// only write through descriptors the walk opened with `O_EXCL |
/// O_NOFOLLOW`. A directory's own times are set after its entries were
/// created, and writing into a file does not change them. The delta mode
/// stays serial (it compares before it writes).
fn restore_parallel(
    shared: &dyn SharedSource,
    root: &TreeId,
    subpath: &[Vec<u8>],
    root_fd: OwnedFd,
    dest_s: &str,
    owners: bool,
    opts: Options,
) -> Result<RestoreStats, RestoreError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, MAX_WRITERS);
    let state = WriterState::default();
    let (queue, jobs) = mpsc::sync_channel::<WriteJob>(WRITE_QUEUE);
    let jobs = Mutex::new(jobs);
    let walked = std::thread::scope(|s| {
        let mut started = 0;
        for _ in 0..threads {
            let (jobs, state) = (&jobs, &state);
            let spawned = std::thread::Builder::new()
                .name("pulih-restore".into())
                .spawn_scoped(s, move || write_jobs(shared, jobs, state, owners));
            match spawned {
                Ok(_) => started += 1,
                // With none, nobody would empty the queue.
                Err(source) if started == 0 => return Err(RestoreError::Io { path: dest_s.to_owned(), source }),
                Err(_) => break,
            }
        }
        let mut src = Shared(shared);
        let mut ctx = Ctx::new(&mut src, root_fd, owners, opts);
        ctx.writers = Some(Writers { queue, state: &state });
        let walked = walk(&mut ctx, root, subpath, dest_s).map(|()| std::mem::take(&mut ctx.stats));
        if walked.is_err() {
            // The restore failed: the writers skip what is still queued.
            state.failed.store(true, Ordering::Relaxed);
        }
        drop(ctx); // closes the queue: the writers finish what is queued, then stop
        walked
    });
    // A writer's error is the cause; the walk then only saw "stopped".
    match state.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => walked,
    }
}

/// A writer thread: fills the files the walk queued until the queue closes;
/// after an error anywhere it only empties the queue.
fn write_jobs(shared: &dyn SharedSource, jobs: &Mutex<Receiver<WriteJob>>, state: &WriterState, owners: bool) {
    let mut src = Shared(shared);
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(mut job) = job else { return };
        if state.failed.load(Ordering::Relaxed) {
            continue;
        }
        let Node::File { size, segments, .. } = &job.entry.node else { continue };
        let done = write_contents(&mut src, &mut job.file, segments, *size, &job.path)
            .and_then(|()| finish_file(owners, &job.file, &job.entry, &job.path));
        if let Err(e) = done {
            state.fail(e);
        }
    }
}

/// Finds the subtree or entry `subpath` names below `root` and restores it.
fn walk<S: BlobSource + ?Sized>(
    ctx: &mut Ctx<'_, S>,
    root: &TreeId,
    subpath: &[Vec<u8>],
    dest_s: &str,
) -> Result<(), RestoreError> {
    let mut tree_id = *root;
    let mut walked: Vec<Vec<u8>> = Vec::new();
    for (i, comp) in subpath.iter().enumerate() {
        let tree = load_tree(ctx.src, &tree_id, &show(&walked))?;
        let entry = tree.get(comp).ok_or_else(|| RestoreError::NoSuchPath(show(subpath)))?.clone();
        walked.push(comp.clone());
        match &entry.node {
            Node::Dir { tree } => tree_id = *tree,
            _ if i + 1 == subpath.len() => {
                // A single non-directory entry: restore it into dest.
                let dir = ctx.root.try_clone().map_err(io_at(&walked))?;
                return ctx.entry(&dir, &[], &entry, 0);
            }
            _ => return Err(RestoreError::NoSuchPath(show(subpath))),
        }
    }
    let dir = ctx.root.try_clone().map_err(|source| RestoreError::Io { path: dest_s.to_owned(), source })?;
    ctx.tree(&dir, &[], &tree_id, 0)
}

/// Writes a new file's contents: each chunk loaded and rehashed, holes
/// skipped (and a trailing hole made by extending the file).
fn write_contents<S: BlobSource + ?Sized>(
    src: &mut S,
    file: &mut File,
    segments: &[Segment],
    size: u64,
    path: &[Vec<u8>],
) -> Result<(), RestoreError> {
    let shown = show(path);
    let mut at = 0u64;
    for seg in segments {
        match seg {
            Segment::Data { id, len } => {
                let data = load_chunk(src, id, *len, &shown)?;
                file.write_all(&data).map_err(io_at(path))?;
                at += u64::from(*len);
            }
            Segment::Hole { len } => {
                rustix::fs::seek(&*file, SeekFrom::Current(*len as i64)).map_err(|x| io_at(path)(x.into()))?;
                at += len;
            }
        }
    }
    // Trailing holes: extend without writing. (A file that ends with data
    // already has its size; `ftruncate` is not free on ext4.)
    if at != size || matches!(segments.last(), Some(Segment::Hole { .. })) {
        file.set_len(size).map_err(io_at(path))?;
    }
    Ok(())
}

/// Sets a restored file's owner (as root), mode and times, after its
/// contents: writing would change the times again.
fn finish_file(owners: bool, file: &File, e: &Entry, path: &[Vec<u8>]) -> Result<(), RestoreError> {
    own(owners, file, e, path)?;
    rustix::fs::fchmod(file, Mode::from_raw_mode(e.mode)).map_err(|x| io_at(path)(x.into()))?;
    rustix::fs::futimens(file, &times(e.mtime_ns)).map_err(|x| io_at(path)(x.into()))?;
    Ok(())
}

fn own(owners: bool, fd: impl AsFd, e: &Entry, path: &[Vec<u8>]) -> Result<(), RestoreError> {
    if owners {
        rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(e.uid)), Some(rustix::fs::Gid::from_raw(e.gid)))
            .map_err(|x| io_at(path)(x.into()))?;
    }
    Ok(())
}

impl<'a, S: BlobSource + ?Sized> Ctx<'a, S> {
    fn new(src: &'a mut S, root: OwnedFd, owners: bool, opts: Options) -> Self {
        Self {
            src,
            root,
            owners,
            opts,
            links: HashMap::new(),
            stats: RestoreStats::default(),
            tmp_seq: 0,
            writers: None,
        }
    }

    fn tree(&mut self, dir: &OwnedFd, path: &[Vec<u8>], id: &TreeId, depth: usize) -> Result<(), RestoreError> {
        if depth > MAX_DEPTH {
            return Err(RestoreError::TooDeep(show(path)));
        }
        let tree = load_tree(self.src, id, &show(path))?;
        for entry in tree.entries() {
            self.entry(dir, path, entry, depth)?;
        }
        if self.opts.only_changed && self.opts.delete {
            let keep: HashSet<&[u8]> = tree.entries().iter().map(|e| e.name.as_bytes()).collect();
            for name in list_dir(dir).map_err(io_at(path))? {
                if !keep.contains(name.as_slice()) {
                    let mut p = path.to_vec();
                    p.push(name.clone());
                    self.stats.deleted += remove_at(dir, &name, depth).map_err(io_at(&p))?;
                }
            }
        }
        Ok(())
    }

    /// Delta mode: clears whatever is at `name` unless it is of kind `want`.
    /// Returns what stays there.
    fn clear_unless(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        want: FileType,
        path: &[Vec<u8>],
        depth: usize,
    ) -> Result<Option<rustix::fs::Stat>, RestoreError> {
        if !self.opts.only_changed {
            return Ok(None);
        }
        match lstat_at(dir, name).map_err(io_at(path))? {
            Some(st) if kind_of(&st) == want => Ok(Some(st)),
            Some(_) => {
                self.stats.deleted += remove_at(dir, name, depth).map_err(io_at(path))?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn entry(&mut self, dir: &OwnedFd, parent: &[Vec<u8>], e: &Entry, depth: usize) -> Result<(), RestoreError> {
        let name = OsStr::from_bytes(e.name.as_bytes());
        let nb = e.name.as_bytes();
        let mut path = parent.to_vec();
        path.push(nb.to_vec());
        let mode = Mode::from_raw_mode(e.mode);
        match &e.node {
            Node::Dir { tree } => {
                let existing = self.clear_unless(dir, nb, FileType::Directory, &path, depth)?;
                if existing.is_none() {
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(|x| io_at(&path)(x.into()))?;
                }
                let child = open_dir_at(dir, nb).map_err(io_at(&path))?;
                if existing.is_some() {
                    // We must be able to write into it; its mode is set below.
                    rustix::fs::fchmod(&child, Mode::from_raw_mode(0o700)).map_err(|x| io_at(&path)(x.into()))?;
                }
                self.tree(&child, &path, tree, depth + 1)?;
                // Metadata after the children, so their creation does not
                // change the directory's mtime afterwards.
                own(self.owners, &child, e, &path)?;
                rustix::fs::fchmod(&child, mode).map_err(|x| io_at(&path)(x.into()))?;
                rustix::fs::futimens(&child, &times(e.mtime_ns)).map_err(|x| io_at(&path)(x.into()))?;
                self.stats.dirs += 1;
            }
            Node::File { size, link_group, segments, .. } => {
                if let Some(first) = link_group.and_then(|g| self.links.get(&g.get())).cloned() {
                    let (src_dir, src_name) = self.open_parent(&first).map_err(io_at(&first))?;
                    if self.opts.only_changed {
                        let target = lstat_at(&src_dir, &src_name).map_err(io_at(&first))?;
                        let here = lstat_at(dir, nb).map_err(io_at(&path))?;
                        if let (Some(t), Some(h)) = (&target, &here) {
                            if (t.st_dev, t.st_ino) == (h.st_dev, h.st_ino) {
                                self.stats.unchanged += 1;
                                return Ok(());
                            }
                        }
                        if here.is_some() {
                            self.stats.deleted += remove_at(dir, nb, depth).map_err(io_at(&path))?;
                        }
                    }
                    rustix::fs::linkat(&src_dir, OsStr::from_bytes(&src_name), dir, name, AtFlags::empty())
                        .map_err(|x| io_at(&path)(x.into()))?;
                    self.stats.hardlinks += 1;
                    return Ok(());
                }
                let existing = self.clear_unless(dir, nb, FileType::RegularFile, &path, depth)?;
                let mut replace = false;
                if let Some(st) = existing {
                    // A file hard-linked from elsewhere is replaced, never
                    // modified in place (its other names may be outside).
                    let shared = st.st_nlink > 1 && link_group.is_none();
                    if st.st_size as u64 == *size && !shared {
                        let fd = rustix::fs::openat(
                            dir,
                            name,
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(|x| io_at(&path)(x.into()))?;
                        let file = File::from(fd);
                        if same_content(&file, segments).map_err(io_at(&path))? {
                            finish_file(self.owners, &file, e, &path)?;
                            if let Some(g) = link_group {
                                self.links.insert(g.get(), path.clone());
                            }
                            self.stats.unchanged += 1;
                            return Ok(());
                        }
                    }
                    replace = true;
                }
                // A changed file is written under a temporary name and renamed
                // over the old one: never half old, half new.
                let tmp = if replace {
                    self.tmp_seq += 1;
                    format!(".pulih-restore-{}-{}.tmp", std::process::id(), self.tmp_seq).into_bytes()
                } else {
                    nb.to_vec()
                };
                let fd = rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(&tmp),
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|x| io_at(&path)(x.into()))?;
                let mut file = File::from(fd);
                if let Some(writers) = self.writers.as_ref().filter(|_| !replace) {
                    // A writer thread fills it (and sets its metadata).
                    writers.submit(WriteJob { file, entry: e.clone(), path: path.clone() })?;
                } else {
                    let wanted: Vec<(ChunkId, u32)> = segments
                        .iter()
                        .filter_map(|s| match s {
                            Segment::Data { id, len } => Some((*id, *len)),
                            Segment::Hole { .. } => None,
                        })
                        .collect();
                    self.src.prefetch(&wanted);
                    let written = write_contents(self.src, &mut file, segments, *size, &path)
                        .and_then(|()| finish_file(self.owners, &file, e, &path));
                    if replace {
                        if let Err(err) = written {
                            let _ = rustix::fs::unlinkat(dir, OsStr::from_bytes(&tmp), AtFlags::empty());
                            return Err(err);
                        }
                        rustix::fs::renameat(dir, OsStr::from_bytes(&tmp), dir, name)
                            .map_err(|x| io_at(&path)(x.into()))?;
                    } else {
                        written?;
                    }
                }
                if let Some(g) = link_group {
                    self.links.insert(g.get(), path.clone());
                }
                self.stats.files += 1;
                self.stats.bytes += size;
            }
            Node::Symlink { target } => {
                let existing = self.clear_unless(dir, nb, FileType::Symlink, &path, depth)?;
                let same = existing.is_some()
                    && rustix::fs::readlinkat(dir, name, Vec::new()).map_err(|x| io_at(&path)(x.into()))?.as_bytes()
                        == target.as_slice();
                if existing.is_some() && !same {
                    self.stats.deleted += remove_at(dir, nb, depth).map_err(io_at(&path))?;
                }
                if !same {
                    rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name).map_err(|x| io_at(&path)(x.into()))?;
                }
                self.own_at(dir, name, e, &path)?;
                rustix::fs::utimensat(dir, name, &times(e.mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|x| io_at(&path)(x.into()))?;
                self.stats.symlinks += 1;
            }
            Node::Fifo => {
                let existing = self.clear_unless(dir, nb, FileType::Fifo, &path, depth)?;
                if existing.is_none() {
                    rustix::fs::mknodat(dir, name, FileType::Fifo, mode, 0).map_err(|x| io_at(&path)(x.into()))?;
                }
                self.own_at(dir, name, e, &path)?;
                // A FIFO cannot be opened without blocking; it was just
                // checked to be one, and chmod does not follow it anyway.
                rustix::fs::chmodat(dir, name, mode, AtFlags::empty()).map_err(|x| io_at(&path)(x.into()))?;
                rustix::fs::utimensat(dir, name, &times(e.mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|x| io_at(&path)(x.into()))?;
                self.stats.others += 1;
            }
        }
        Ok(())
    }

    /// Sets the owner of a non-directory entry without following a link.
    fn own_at(&self, dir: &OwnedFd, name: &OsStr, e: &Entry, path: &[Vec<u8>]) -> Result<(), RestoreError> {
        if self.owners {
            let (uid, gid) = (rustix::fs::Uid::from_raw(e.uid), rustix::fs::Gid::from_raw(e.gid));
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|x| io_at(path)(x.into()))?;
        }
        Ok(())
    }

    /// Opens the parent directory of `path` (relative to the restore root)
    /// component by component, never following a symlink.
    fn open_parent(&self, path: &[Vec<u8>]) -> io::Result<(OwnedFd, Vec<u8>)> {
        let (last, dirs) = path.split_last().ok_or_else(|| io::Error::other("empty path"))?;
        let mut fd = self.root.try_clone()?;
        for d in dirs {
            fd = open_dir_at(&fd, d)?;
        }
        Ok((fd, last.clone()))
    }
}

/// Whether `file` holds exactly the content of `segments` (its size was
/// checked by the caller): each data piece hashed at the snapshot's chunk
/// boundaries, each hole all zeros.
fn same_content(file: &File, segments: &[Segment]) -> io::Result<bool> {
    let mut buf = Vec::new();
    let mut pos = 0u64;
    for seg in segments {
        match seg {
            Segment::Data { id, len } => {
                buf.resize(*len as usize, 0);
                if file.read_exact_at(&mut buf, pos).is_err() {
                    return Ok(false);
                }
                if ChunkId::of(&buf) != *id {
                    return Ok(false);
                }
                pos += u64::from(*len);
            }
            Segment::Hole { len } => {
                let end = pos + len;
                // Skip what the filesystem knows is a hole; read the rest.
                let data_at = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
                    Ok(d) => d,
                    Err(rustix::io::Errno::NXIO) => end,
                    Err(_) => pos,
                };
                let mut at = data_at.min(end);
                buf.resize(1 << 20, 0);
                while at < end {
                    let n = (end - at).min(buf.len() as u64) as usize;
                    if file.read_exact_at(&mut buf[..n], at).is_err() {
                        return Ok(false);
                    }
                    if buf[..n].iter().any(|b| *b != 0) {
                        return Ok(false);
                    }
                    at += n as u64;
                }
                pos = end;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::EntryName;
    use std::num::NonZeroU64;
    use std::os::unix::fs::{symlink, MetadataExt};

    /// An in-memory blob source.
    #[derive(Default)]
    struct Mem {
        trees: HashMap<TreeId, Vec<u8>>,
        chunks: HashMap<ChunkId, Vec<u8>>,
        chunk_reads: u64,
    }

    impl BlobSource for Mem {
        fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
            self.trees.get(id).cloned().ok_or_else(|| format!("tree {id} missing").into())
        }
        fn chunk(&mut self, id: &ChunkId, _len: u32) -> Result<Vec<u8>, SourceError> {
            self.chunk_reads += 1;
            self.chunks.get(id).cloned().ok_or_else(|| format!("chunk {id} missing").into())
        }
    }

    impl Mem {
        fn put_tree(&mut self, entries: Vec<Entry>) -> TreeId {
            let (id, bytes) = Tree::new(entries).unwrap().encode();
            self.trees.insert(id, bytes);
            id
        }
        fn put_chunk(&mut self, data: &[u8]) -> Segment {
            let id = ChunkId::of(data);
            self.chunks.insert(id, data.to_vec());
            Segment::Data { id, len: data.len() as u32 }
        }
        fn file(&mut self, name: &str, data: &[u8], group: u64) -> Entry {
            let seg = self.put_chunk(data);
            entry(
                name,
                Node::File {
                    size: data.len() as u64,
                    link_group: NonZeroU64::new(group),
                    flags: 0,
                    segments: vec![seg],
                },
            )
        }
    }

    /// The same blobs as a [`SharedSource`], so a restore writes file
    /// contents on writer threads; `fail` makes reading that chunk fail.
    struct SharedMem {
        mem: Mem,
        fail: Option<ChunkId>,
        /// Threads that read chunks.
        readers: Mutex<HashSet<std::thread::ThreadId>>,
    }

    impl SharedMem {
        fn new(mem: Mem) -> Self {
            Self { mem, fail: None, readers: Mutex::default() }
        }
    }

    impl SharedSource for SharedMem {
        fn tree(&self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
            self.mem.trees.get(id).cloned().ok_or_else(|| format!("tree {id} missing").into())
        }
        fn chunk(&self, id: &ChunkId, _len: u32) -> Result<Vec<u8>, SourceError> {
            self.readers.lock().unwrap().insert(std::thread::current().id());
            if self.fail == Some(*id) {
                return Err(format!("chunk {id} unreadable").into());
            }
            self.mem.chunks.get(id).cloned().ok_or_else(|| format!("chunk {id} missing").into())
        }
    }

    /// Everything a restore sets, per path below `root`, sorted: kind,
    /// mode, size, mtime, content or link target, and which paths share an
    /// inode (hard links).
    fn describe(root: &Path) -> Vec<String> {
        fn go(dir: &Path, rel: &str, inodes: &mut HashMap<u64, String>, out: &mut Vec<String>) {
            let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                let p = dir.join(&n);
                let r = format!("{rel}/{}", n.to_string_lossy());
                let m = std::fs::symlink_metadata(&p).unwrap();
                let what = if m.is_dir() {
                    go(&p, &r, inodes, out);
                    "dir".to_string()
                } else if m.file_type().is_symlink() {
                    format!("link {:?}", std::fs::read_link(&p).unwrap())
                } else if m.is_file() {
                    let first = inodes.entry(m.ino()).or_insert_with(|| r.clone()).clone();
                    format!("file {:?} same-as {first}", std::fs::read(&p).unwrap())
                } else {
                    "other".to_string()
                };
                out.push(format!(
                    "{r} {what} mode {:o} size {} mtime {}",
                    m.mode(),
                    m.len(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                ));
            }
        }
        let mut out = Vec::new();
        go(root, "", &mut HashMap::new(), &mut out);
        out
    }

    /// A tree with a bit of everything a restore writes: nested and empty
    /// directories with their own modes and times, many small files, one of
    /// several chunks, a sparse file ending in a hole, hard links across
    /// directories, a symlink and a FIFO.
    fn varied_tree(mem: &mut Mem) -> TreeId {
        let mut deep = Vec::new();
        for i in 0..150 {
            let mut f = mem.file(&format!("f{i:03}"), format!("file number {i}").as_bytes(), 0);
            f.mode = 0o600 + (i % 3) * 0o10;
            f.mtime_ns = 1_600_000_000_123_456_789 + i64::from(i);
            deep.push(f);
        }
        deep.push(mem.file("linked", b"shared inode", 7));
        let empty = mem.put_tree(vec![]);
        deep.push(Entry {
            mode: 0o555,
            mtime_ns: 1_500_000_000_000_000_000,
            ..entry("empty", Node::Dir { tree: empty })
        });
        let deep = mem.put_tree(deep);
        let segs = vec![mem.put_chunk(&[1u8; 5000]), mem.put_chunk(&[2u8; 7000]), mem.put_chunk(b"tail")];
        let big = entry("big", Node::File { size: 12_004, link_group: None, flags: 0, segments: segs });
        let sparse_segs = vec![Segment::Hole { len: 4096 }, mem.put_chunk(b"middle"), Segment::Hole { len: 10_000 }];
        let sparse = entry("sparse", Node::File { size: 14_102, link_group: None, flags: 0, segments: sparse_segs });
        let link2 = mem.file("linked-again", b"shared inode", 7);
        let root = vec![
            big,
            Entry { mode: 0o750, mtime_ns: 1_400_000_000_000_000_000, ..entry("deep", Node::Dir { tree: deep }) },
            mem.file("lone", b"lone", 0),
            link2,
            Entry { mode: 0o644, ..entry("pipe", Node::Fifo) },
            sparse,
            entry("to-lone", Node::Symlink { target: b"lone".to_vec() }),
        ];
        mem.put_tree(root)
    }

    /// A restore with writer threads leaves exactly what the serial one
    /// leaves: contents, modes, times (also of directories, which the
    /// threads writing into their files must not move), holes and links.
    #[test]
    fn writer_threads_restore_what_the_serial_restore_does() {
        let (dir, mut mem, _) = setup();
        let root = varied_tree(&mut mem);
        let serial = dir.path().join("serial");
        let s1 = restore(&mut mem, &root, &[], &serial, Options::default()).unwrap();
        let mut shared = SharedMem::new(mem);
        let parallel = dir.path().join("parallel");
        let s2 = restore(&mut shared, &root, &[], &parallel, Options::default()).unwrap();
        let readers = shared.readers.lock().unwrap().clone();
        assert!(
            !readers.is_empty() && !readers.contains(&std::thread::current().id()),
            "contents not written on writer threads"
        );
        assert_eq!(s1, s2);
        assert_eq!((s2.files, s2.hardlinks, s2.dirs), (154, 1, 2), "{s2:?}");
        let (a, b) = (describe(&serial), describe(&parallel));
        assert_eq!(a, b);
        assert!(a.iter().any(|l| l.starts_with("/deep/empty dir mode 40555")), "{a:?}");
        let sparse = std::fs::metadata(parallel.join("sparse")).unwrap();
        assert!(sparse.blocks() * 512 < 14_102, "holes were written: {} blocks", sparse.blocks());
        // The delta mode over it stays on one thread and finds nothing to do.
        let s3 = restore(&mut shared, &root, &[], &parallel, Options { only_changed: true, delete: true }).unwrap();
        assert_eq!((s3.files, s3.unchanged, s3.deleted), (0, 155, 0), "{s3:?}");
        assert_eq!(describe(&parallel), a);
        // A subpath naming a single file goes through the threads too.
        let one = dir.path().join("one");
        restore(&mut shared, &root, &[b"deep".to_vec(), b"f007".to_vec()], &one, Options::default()).unwrap();
        assert_eq!(std::fs::read(one.join("f007")).unwrap(), b"file number 7");
    }

    /// F24/F26 with writer threads: a damaged chunk stops the restore with
    /// an error naming the file and the chunk, and none of its bytes are
    /// written; a chunk the source cannot read stops it the same way.
    #[test]
    fn writer_threads_stop_at_a_damaged_or_unreadable_chunk() {
        let (dir, mut mem, _) = setup();
        let root = varied_tree(&mut mem);
        let bad = mem.file("f042", b"file number 42", 0);
        let Node::File { segments, .. } = &bad.node else { unreachable!() };
        let Segment::Data { id, .. } = segments[0] else { unreachable!() };
        mem.chunks.insert(id, b"evil number 42".to_vec());
        let mut shared = SharedMem::new(mem);
        let dest = dir.path().join("dest");
        let err = restore(&mut shared, &root, &[], &dest, Options::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RestoreError::Damaged { .. }) && text.contains("/deep/f042"), "{text}");
        let written = std::fs::read(dest.join("deep/f042")).unwrap_or_default();
        assert!(!written.starts_with(b"evil"), "damaged data reached the restored file");

        shared.mem.chunks.insert(id, b"file number 42".to_vec());
        let Node::File { segments, .. } = &shared.mem.file("x", &[2u8; 7000], 0).node else { unreachable!() };
        let Segment::Data { id: unreadable, .. } = segments[0] else { unreachable!() };
        shared.fail = Some(unreadable);
        let err = restore(&mut shared, &root, &[], &dir.path().join("d2"), Options::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, RestoreError::Source { .. }) && text.contains("/big") && text.contains("unreadable"),
            "{text}"
        );
        shared.fail = None;
        restore(&mut shared, &root, &[], &dir.path().join("d3"), Options::default()).unwrap();
    }

    fn entry(name: &str, node: Node) -> Entry {
        Entry { name: EntryName::new(name).unwrap(), mode: 0o644, uid: 0, gid: 0, mtime_ns: 0, node }
    }

    fn setup() -> (tempfile::TempDir, Mem, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        (dir, Mem::default(), outside)
    }

    fn ctx<'a>(src: &'a mut Mem, dest: &Path, opts: Options) -> Ctx<'a, Mem> {
        let root_fd = rustix::fs::openat(CWD, dest, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        Ctx::new(src, root_fd, false, opts)
    }

    /// F29: a symlink in the snapshot pointing outside is restored as a
    /// symlink and never followed, not by `--path` either.
    #[test]
    fn f29_symlinked_parent_is_not_followed() {
        let (dir, mut mem, outside) = setup();
        let ok = mem.file("ok", b"x", 0);
        let root =
            mem.put_tree(vec![entry("evil", Node::Symlink { target: outside.as_os_str().as_bytes().to_vec() }), ok]);
        let dest = dir.path().join("dest");
        restore(&mut mem, &root, &[], &dest, Options::default()).unwrap();
        assert!(std::fs::symlink_metadata(dest.join("evil")).unwrap().file_type().is_symlink());
        let err = restore(
            &mut mem,
            &root,
            &[b"evil".to_vec(), b"passwd".to_vec()],
            &dir.path().join("d2"),
            Options::default(),
        )
        .unwrap_err();
        assert!(matches!(err, RestoreError::NoSuchPath(_)), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote outside the target");
    }

    /// F29: a symlink that appears in the target while restoring (a racing
    /// local user) is neither written through nor descended into.
    #[test]
    fn f29_symlink_planted_in_target_is_not_followed() {
        let (dir, mut mem, outside) = setup();
        let f = mem.file("passwd", b"owned", 0);
        let sub = mem.put_tree(vec![f]);
        let ff = mem.file("f", b"owned", 0);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        symlink(&outside, dest.join("d")).unwrap();
        symlink(outside.join("f"), dest.join("f")).unwrap();
        let mut c = ctx(&mut mem, &dest, Options::default());
        let dirfd = c.root.try_clone().unwrap();
        assert!(c.entry(&dirfd, &[], &entry("d", Node::Dir { tree: sub }), 0).is_err());
        assert!(c.entry(&dirfd, &[], &ff, 0).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote outside the target");
    }

    /// F29 in delta mode: a symlink planted where a directory or a file is
    /// expected is replaced by the real entry, never followed; the data
    /// outside is untouched.
    #[test]
    fn f29_delta_mode_replaces_planted_symlinks_without_following() {
        let (dir, mut mem, outside) = setup();
        std::fs::write(outside.join("passwd"), b"outside").unwrap();
        std::fs::write(outside.join("f"), b"outside").unwrap();
        let p = mem.file("passwd", b"inside", 0);
        let sub = mem.put_tree(vec![p]);
        let f = mem.file("f", b"inside", 0);
        let root = mem.put_tree(vec![entry("d", Node::Dir { tree: sub }), f]);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        symlink(&outside, dest.join("d")).unwrap();
        symlink(outside.join("f"), dest.join("f")).unwrap();
        let opts = Options { only_changed: true, delete: true };
        let stats = restore(&mut mem, &root, &[], &dest, opts).unwrap();
        assert!(std::fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
        assert_eq!(std::fs::read(dest.join("d/passwd")).unwrap(), b"inside");
        assert!(std::fs::symlink_metadata(dest.join("f")).unwrap().is_file());
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"inside");
        assert_eq!(std::fs::read(outside.join("passwd")).unwrap(), b"outside");
        assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"outside");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2);
        assert_eq!(stats.deleted, 2, "{stats:?}");
    }

    /// F30: hard links are made only to files this restore created, reached
    /// without following symlinks; a swapped parent makes the link fail.
    #[test]
    fn f30_hard_links_stay_inside_the_target() {
        let (dir, mut mem, outside) = setup();
        std::fs::write(outside.join("f"), b"outside").unwrap();
        let f = mem.file("f", b"inside", 9);
        let sub = mem.put_tree(vec![f]);
        let z = mem.file("z", b"inside", 9);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let mut c = ctx(&mut mem, &dest, Options::default());
        let dirfd = c.root.try_clone().unwrap();
        c.entry(&dirfd, &[], &entry("d", Node::Dir { tree: sub }), 0).unwrap();
        // Swap d for a symlink to a directory outside holding a file of the same name.
        std::fs::rename(dest.join("d"), dir.path().join("moved")).unwrap();
        symlink(&outside, dest.join("d")).unwrap();
        assert!(c.entry(&dirfd, &[], &z, 0).is_err());
        assert_eq!(std::fs::metadata(outside.join("f")).unwrap().nlink(), 1, "linked to a file outside the target");
    }

    /// F31: a tree served under an id it does not hash to (forged by someone
    /// with write access to the store) is refused, not restored.
    #[test]
    fn f31_forged_tree_is_refused() {
        let (dir, mut mem, _) = setup();
        let (_, bytes) = Tree::new(vec![entry("x", Node::Fifo)]).unwrap().encode();
        let claimed = TreeId::of(b"something else");
        mem.trees.insert(claimed, bytes);
        let err = restore(&mut mem, &claimed, &[], &dir.path().join("dest"), Options::default()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    /// F24/F26: a chunk whose content does not match is never written,
    /// whatever the source claims.
    #[test]
    fn damaged_chunk_is_not_written() {
        let (dir, mut mem, _) = setup();
        let f = mem.file("f", b"good content", 0);
        let Node::File { segments, .. } = &f.node else { unreachable!() };
        let Segment::Data { id, .. } = &segments[0] else { unreachable!() };
        mem.chunks.insert(*id, b"evil content".to_vec());
        let root = mem.put_tree(vec![f.clone()]);
        let dest = dir.path().join("dest");
        let err = restore(&mut mem, &root, &[], &dest, Options::default()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        let written = std::fs::read(dest.join("f")).unwrap_or_default();
        assert!(!written.starts_with(b"evil"), "damaged data reached the restored file");
    }

    /// F8: the first read of a chunk returns flipped bytes, a second read
    /// is good. The writer rehashes what it got, refuses the bad copy (no
    /// byte of it reaches the file), keeps nothing of it, and the next
    /// attempt reads afresh and restores the right content. The same holds
    /// for the delta mode over a copy the bad attempt left behind.
    #[test]
    fn f8_a_flipped_first_read_is_refused_and_the_retry_reads_afresh() {
        struct FlipOnce {
            mem: Mem,
            flipped: bool,
        }
        impl BlobSource for FlipOnce {
            fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
                self.mem.tree(id)
            }
            fn chunk(&mut self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError> {
                let mut data = self.mem.chunk(id, len)?;
                if !self.flipped {
                    self.flipped = true;
                    data[3] ^= 0x20;
                }
                Ok(data)
            }
        }
        let (dir, mut mem, _) = setup();
        let f = mem.file("f", b"good content", 0);
        let root = mem.put_tree(vec![f]);
        let mut src = FlipOnce { mem, flipped: false };
        let dest = dir.path().join("dest");
        let err = restore(&mut src, &root, &[], &dest, Options::default()).unwrap_err();
        assert!(err.to_string().contains("damaged") && err.to_string().contains("/f"), "{err}");
        let left = std::fs::read(dest.join("f")).unwrap_or_default();
        assert!(!left.windows(4).any(|w| w == b"good" || w == b"gooD"), "bytes of the bad read were written: {left:?}");
        // The retry, into the same (now not empty) destination, in delta mode.
        let opts = Options { only_changed: true, delete: true };
        restore(&mut src, &root, &[], &dest, opts).unwrap();
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"good content");
        assert_eq!(src.mem.chunk_reads, 2, "the retry must read the chunk again, not reuse the first copy");
    }

    /// Delta mode writes only what differs, keeps what matches, removes
    /// extras with `delete`, and leaves extras without it.
    #[test]
    fn delta_mode_writes_only_changed_files() {
        let (dir, mut mem, _) = setup();
        let a = mem.file("a", b"same", 0);
        let b = mem.file("b", b"new content", 0);
        let hole = Entry {
            node: Node::File {
                size: 10,
                link_group: None,
                flags: 0,
                segments: vec![Segment::Hole { len: 8 }, mem.put_chunk(b"zz")],
            },
            ..entry("sparse", Node::Fifo)
        };
        let root = mem.put_tree(vec![a, b, hole]);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("a"), b"same").unwrap();
        std::fs::write(dest.join("b"), b"old content").unwrap();
        std::fs::write(dest.join("sparse"), b"\0\0\0\0\0\0\0\0zz").unwrap();
        std::fs::create_dir_all(dest.join("extra/sub")).unwrap();
        std::fs::write(dest.join("extra/sub/x"), b"x").unwrap();
        let before = mem.chunk_reads;
        let s = restore(&mut mem, &root, &[], &dest, Options { only_changed: true, delete: false }).unwrap();
        assert_eq!((s.files, s.unchanged, s.deleted, s.bytes), (1, 2, 0, 11), "{s:?}");
        assert_eq!(mem.chunk_reads - before, 1, "fetched chunks of unchanged files");
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"new content");
        assert!(dest.join("extra/sub/x").exists());
        let s = restore(&mut mem, &root, &[], &dest, Options { only_changed: true, delete: true }).unwrap();
        assert_eq!((s.files, s.unchanged, s.deleted), (0, 3, 3), "{s:?}");
        assert!(!dest.join("extra").exists());
        assert_eq!(std::fs::metadata(dest.join("a")).unwrap().mode() & 0o7777, 0o644);
    }
}
