//! The content-addressed blob store at the DRC.
//!
//! ```text
//! store/FORMAT                 "pulih-store 3" (the layout version)
//! store/packs/ab/<name>        pack files: many blobs each (crate::pack)
//! store/chunks/ab/<id>         a loose blob (layout 2): one zstd frame,
//!                              plaintext hashes to <id>
//! store/trees/ab/<id>          a loose tree blob (layout 2)
//! store/snapshots/<id>         canonical snapshot record (uncompressed)
//! store/tmp/                   writes in progress; emptied at startup
//! ```
//!
//! Durability: upload sessions append blobs to a pack ([`Store::create_pack`]),
//! seal it, and only *record the blobs in the catalog* after [`Store::sync`]
//! (syncfs of the whole store filesystem) returned success. The catalog, not
//! the file system, says what is durable and where: a pack the catalog does
//! not list as sealed may be a torn leftover of a crash (F1, F2) and is
//! removed by the server at startup. One syncfs per batch instead of one
//! fsync per blob keeps small files cheap without ever acknowledging what
//! is not durable. A failed sync is fatal (F4): the caller stops instead of
//! retrying.
//!
//! Reading asks the store's [`Locate`] (the catalog's `blobs` rows) where a
//! blob is: a range of a pack, or a loose file of layout 2 (stores written
//! before packs keep their files; nothing rewrites them). Loose files are
//! written only by [`Store::put_unsynced`] (tests and tools that build a
//! store by hand).
//!
//! Snapshot records are few and are written with fsync of file and directory.
//!
//! Layout 2 fans blobs out over one level of 256 directories (the first two
//! hex digits of the id), all created with the store. Layout 1 had two
//! levels (`chunks/ab/cd/<id>`, 65,536 possible directories created on
//! demand): a fresh 1 GiB backup created ~22,000 directories, one per
//! chunk in practice, each a `mkdir` after a failed `rename` and a 4 KiB
//! block. ext4's hashed directories keep lookups fast with hundreds of
//! thousands of names per directory, so one level is enough. [`migrate`]
//! converts a layout-1 or layout-2 store (layout 3 adds `packs/`; loose
//! blobs stay where they are); every other opener refuses one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pulih_core::{ChunkId, SnapshotId, TreeId};

use crate::pack::{PackId, PackWriter, PackedAt};

/// Kinds of blobs, stored in separate namespaces so a tree can never be
/// read as a chunk (F21).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Chunk = 1,
    Tree = 2,
}

impl BlobKind {
    fn dir(self) -> &'static str {
        match self {
            BlobKind::Chunk => "chunks",
            BlobKind::Tree => "trees",
        }
    }
    /// Catalog code.
    pub fn code(self) -> i64 {
        self as i64
    }
    /// From a catalog code.
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            1 => Some(BlobKind::Chunk),
            2 => Some(BlobKind::Tree),
            _ => None,
        }
    }
    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Chunk => "chunk",
            BlobKind::Tree => "tree",
        }
    }
}

/// A blob address: kind and raw 32-byte id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobRef {
    pub kind: BlobKind,
    pub id: [u8; 32],
}

impl BlobRef {
    pub fn chunk(id: &ChunkId) -> Self {
        Self { kind: BlobKind::Chunk, id: *id.as_bytes() }
    }
    pub fn tree(id: &TreeId) -> Self {
        Self { kind: BlobKind::Tree, id: *id.as_bytes() }
    }
    pub fn hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// Store failures. `Sync` is fatal for the process (F4).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("syncing the store at {path} failed: {source}; data written since the last sync may be lost, so the controller stops instead of retrying (F4)")]
    Sync { path: PathBuf, source: io::Error },
    #[error("{path} is not a Pulih store (missing or unknown FORMAT file)")]
    NotAStore { path: PathBuf },
    #[error("the store at {path} uses layout {layout} (an older Pulih); `pulih-controller serve` converts it to layout 3 when it starts (stop any running controller first), then this command works again")]
    OldLayout { path: PathBuf, layout: u32 },
    #[error("{kind} {id} is missing from the store")]
    Missing { kind: &'static str, id: String },
    #[error("cannot look up where {kind} {id} is stored: {message}")]
    Locate { kind: &'static str, id: String, message: String },
    #[error(transparent)]
    Pack(#[from] crate::pack::PackError),
}

impl StoreError {
    /// Whether the disk is full (reported distinctly to operators).
    pub fn is_disk_full(&self) -> bool {
        let full = |e: &io::Error| e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error());
        match self {
            StoreError::Io { source, .. } | StoreError::Pack(crate::pack::PackError::Io { source, .. }) => full(source),
            _ => false,
        }
    }
}

const FORMAT: &str = "pulih-store 3\n";
const FORMAT_V2: &str = "pulih-store 2\n";
const FORMAT_V1: &str = "pulih-store 1\n";

/// The store layout written and read by this version.
pub const LAYOUT: u32 = 3;

/// Where a blob's stored bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// A file of its own under `chunks/` or `trees/` (layout 2).
    Loose,
    /// A range of a pack.
    Packed(PackedAt),
}

/// Answers where a blob is stored: the catalog's `blobs` row
/// (crate::catalog::Locator). `Ok(None)`: no row; the store then looks for
/// a loose file.
pub trait Locate: Send + Sync + std::fmt::Debug {
    fn locate(&self, blob: &BlobRef) -> Result<Option<Location>, String>;
}

/// The 256 fan-out directory names ("00" to "ff").
fn fanout() -> impl Iterator<Item = String> {
    (0..=255u8).map(|b| format!("{b:02x}"))
}

/// The blob store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    tmp_seq: AtomicU64,
    locator: Option<Arc<dyn Locate>>,
}

/// Directory of pack files.
const PACKS: &str = "packs";

fn missing(blob: &BlobRef) -> StoreError {
    StoreError::Missing { kind: blob.kind.name(), id: blob.hex() }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

impl Store {
    /// Creates an empty store at `root` (which must not exist or be empty).
    pub fn create(root: &Path) -> Result<Self, StoreError> {
        for d in ["snapshots", "tmp"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        for top in [BlobKind::Chunk.dir(), BlobKind::Tree.dir(), PACKS] {
            for sub in fanout() {
                fs::create_dir_all(root.join(top).join(sub)).map_err(io_err(root))?;
            }
        }
        let fmt = root.join("FORMAT");
        write_durable(&fmt, FORMAT.as_bytes())?;
        Self::open(root)
    }

    /// Opens an existing store.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        match fs::read_to_string(root.join("FORMAT")) {
            Ok(s) if s == FORMAT => {}
            Ok(s) if s == FORMAT_V1 => return Err(StoreError::OldLayout { path: root.to_owned(), layout: 1 }),
            Ok(s) if s == FORMAT_V2 => return Err(StoreError::OldLayout { path: root.to_owned(), layout: 2 }),
            _ => return Err(StoreError::NotAStore { path: root.to_owned() }),
        }
        Ok(Self { root: root.to_owned(), tmp_seq: AtomicU64::new(0), locator: None })
    }

    /// Opens an existing store that finds blobs through the catalog at
    /// `catalog` (how every command of the controller opens it).
    pub fn open_with_catalog(root: &Path, catalog: &Path) -> Result<Self, StoreError> {
        Ok(Self::open(root)?.with_locator(Arc::new(crate::catalog::Locator::new(catalog))))
    }

    /// The store, reading blob locations from `locator` (the catalog).
    /// Without one, only loose files are found.
    pub fn with_locator(mut self, locator: Arc<dyn Locate>) -> Self {
        self.locator = Some(locator);
        self
    }

    /// Where a blob is, as the store's locator says (loose when it has
    /// none or the catalog has no row).
    pub fn location(&self, blob: &BlobRef) -> Result<Location, StoreError> {
        let Some(l) = &self.locator else { return Ok(Location::Loose) };
        match l.locate(blob) {
            Ok(loc) => Ok(loc.unwrap_or(Location::Loose)),
            Err(message) => Err(StoreError::Locate { kind: blob.kind.name(), id: blob.hex(), message }),
        }
    }

    /// Removes leftovers of writes interrupted by a crash. Only the server
    /// calls this, at startup and holding the data directory's lock: an
    /// admin command running beside it must not delete uploads in flight.
    pub fn remove_leftovers(&self) -> Result<usize, StoreError> {
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut n = 0;
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let e = e.map_err(io_err(&tmp))?;
            if fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Final path of a blob.
    pub fn blob_path(&self, blob: &BlobRef) -> PathBuf {
        let h = blob.hex();
        self.root.join(blob.kind.dir()).join(&h[0..2]).join(h)
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    /// Writes a blob under its final name without syncing; the caller
    /// records it in the catalog only after [`Store::sync`]. Replaces any
    /// file already there (the catalog said it is not durable).
    pub fn put_unsynced(&self, blob: &BlobRef, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            drop(f);
            let dest = self.blob_path(blob);
            match fs::rename(&tmp, &dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(dest.parent().expect("blob path has a parent"))?;
                    fs::rename(&tmp, &dest)
                }
                other => other,
            }
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map_err(io_err(&self.root))
    }

    /// Makes everything written so far durable (syncfs). An error is fatal.
    pub fn sync(&self) -> Result<(), StoreError> {
        let dir = File::open(&self.root).map_err(io_err(&self.root))?;
        rustix::fs::syncfs(&dir).map_err(|e| StoreError::Sync { path: self.root.clone(), source: e.into() })
    }

    /// Path of a pack file.
    pub fn pack_path(&self, id: &PackId) -> PathBuf {
        let h = id.hex();
        self.root.join(PACKS).join(&h[0..2]).join(h)
    }

    /// Creates a new pack file. The caller recorded the pack as being
    /// written in the catalog first (crate::pack).
    pub fn create_pack(&self, id: PackId) -> Result<PackWriter, StoreError> {
        Ok(PackWriter::create(id, self.pack_path(&id))?)
    }

    /// Removes a pack file; an absent one is not an error.
    pub fn remove_pack(&self, id: &PackId) -> Result<(), StoreError> {
        let p = self.pack_path(id);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { path: p, source: e }),
            _ => Ok(()),
        }
    }

    /// Every pack file's name (one listing of the 256 fan-out directories).
    pub fn list_packs(&self) -> Result<Vec<PackId>, StoreError> {
        let mut out = Vec::new();
        for sub in fanout() {
            let dir = self.root.join(PACKS).join(sub);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io { path: dir, source: e }),
            };
            for e in entries {
                let e = e.map_err(io_err(&dir))?;
                if let Some(id) = e.file_name().to_str().and_then(PackId::parse) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Reads a blob's stored bytes. A missing or empty file, or a pack
    /// shorter than the blob's range, is `Missing` (a torn write, F1).
    pub fn read(&self, blob: &BlobRef) -> Result<Vec<u8>, StoreError> {
        match self.location(blob)? {
            Location::Loose => self.read_loose(blob),
            Location::Packed(at) => match self.read_packed(blob, &at) {
                // Garbage collection may have moved it to another pack
                // (repacking) after it was located: look once more.
                Err(StoreError::Missing { .. }) => match self.location(blob)? {
                    Location::Packed(again) if again != at => self.read_packed(blob, &again),
                    Location::Loose => self.read_loose(blob),
                    _ => Err(missing(blob)),
                },
                other => other,
            },
        }
    }

    /// Reads a blob's bytes at a known location.
    pub fn read_at(&self, blob: &BlobRef, loc: &Location) -> Result<Vec<u8>, StoreError> {
        match loc {
            Location::Loose => self.read_loose(blob),
            Location::Packed(at) => self.read_packed(blob, at),
        }
    }

    fn read_packed(&self, blob: &BlobRef, at: &PackedAt) -> Result<Vec<u8>, StoreError> {
        let path = self.pack_path(&at.pack);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing(blob)),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let mut buf = vec![0u8; at.len as usize];
        match f.read_exact_at(&mut buf, at.offset) {
            Ok(()) if !buf.is_empty() => Ok(buf),
            Ok(()) => Err(missing(blob)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(missing(blob)),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    fn read_loose(&self, blob: &BlobRef) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(blob);
        match fs::read(&path) {
            Ok(b) if !b.is_empty() => Ok(b),
            Ok(_) => Err(missing(blob)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing(blob)),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Whether a blob's bytes exist: a loose file with content (a 0-byte
    /// file is a torn write and counts as absent, F1), or a pack long
    /// enough to hold its range.
    pub fn present(&self, blob: &BlobRef) -> Result<bool, StoreError> {
        let loc = self.location(blob)?;
        if self.present_at(blob, &loc)? {
            return Ok(true);
        }
        // Moved by a pack compaction after it was located: look once more.
        match self.location(blob)? {
            again @ Location::Packed(_) if again != loc => self.present_at(blob, &again),
            _ => Ok(false),
        }
    }

    fn present_at(&self, blob: &BlobRef, loc: &Location) -> Result<bool, StoreError> {
        let (path, need) = match loc {
            Location::Loose => (self.blob_path(blob), 1),
            Location::Packed(at) => (self.pack_path(&at.pack), at.offset + at.len.max(1)),
        };
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len() >= need),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// The file and byte range holding a blob (for messages and for tests
    /// that damage a stored blob on purpose).
    pub fn blob_bytes(&self, blob: &BlobRef) -> Result<(PathBuf, u64, u64), StoreError> {
        Ok(match self.location(blob)? {
            Location::Loose => {
                let p = self.blob_path(blob);
                let len = fs::metadata(&p).map_err(io_err(&p))?.len();
                (p, 0, len)
            }
            Location::Packed(at) => (self.pack_path(&at.pack), at.offset, at.len),
        })
    }

    /// Writes a snapshot record durably (file and directory fsynced).
    pub fn put_snapshot(&self, id: &SnapshotId, record: &[u8]) -> Result<(), StoreError> {
        write_durable(&self.root.join("snapshots").join(id.to_hex()), record)
    }

    /// Reads a snapshot record file.
    pub fn read_snapshot(&self, id: &SnapshotId) -> Result<Vec<u8>, StoreError> {
        let p = self.root.join("snapshots").join(id.to_hex());
        fs::read(&p).map_err(io_err(&p))
    }
}

/// Converts an older store at `root` to layout 3. From layout 1, every
/// blob file `KIND/ab/cd/<id>` is renamed to `KIND/ab/<id>`, the emptied
/// `cd` directories are removed, the file system is synced, and only then
/// does `FORMAT` say layout 2. From layout 2, the `packs/` directories are
/// created, synced, and `FORMAT` says layout 3. Interrupted at any point,
/// the store still says the older layout and a new run finishes the job (a
/// rename is atomic: each blob is in one place or the other). Returns the
/// number of blobs moved, or `None` when the store already has layout 3.
///
/// The caller holds the data directory's serve and GC locks, so nothing
/// else reads or writes the store meanwhile.
pub fn migrate(root: &Path) -> Result<Option<u64>, StoreError> {
    let moved = match fs::read_to_string(root.join("FORMAT")) {
        Ok(s) if s == FORMAT => return Ok(None),
        Ok(s) if s == FORMAT_V2 => 0,
        Ok(s) if s == FORMAT_V1 => {
            let moved = flatten_layout1(root)?;
            // Every rename durable before FORMAT says layout 2.
            let dir = File::open(root).map_err(io_err(root))?;
            rustix::fs::syncfs(&dir).map_err(|e| StoreError::Sync { path: root.to_owned(), source: e.into() })?;
            write_durable(&root.join("FORMAT"), FORMAT_V2.as_bytes())?;
            moved
        }
        _ => return Err(StoreError::NotAStore { path: root.to_owned() }),
    };
    // Layout 2 -> 3: the pack directories; loose blobs stay readable.
    for sub in fanout() {
        let d = root.join(PACKS).join(sub);
        fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let dir = File::open(root).map_err(io_err(root))?;
    rustix::fs::syncfs(&dir).map_err(|e| StoreError::Sync { path: root.to_owned(), source: e.into() })?;
    write_durable(&root.join("FORMAT"), FORMAT.as_bytes())?;
    Ok(Some(moved))
}

/// Layout 1 -> 2: moves every blob up one directory level.
fn flatten_layout1(root: &Path) -> Result<u64, StoreError> {
    let mut moved = 0u64;
    for kind in [BlobKind::Chunk, BlobKind::Tree] {
        let top = root.join(kind.dir());
        for sub in fanout() {
            let dir = top.join(&sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let e = e.map_err(io_err(&dir))?;
                let name = e.file_name();
                let is_level2 = name.len() == 2 && e.file_type().map_err(io_err(&dir))?.is_dir();
                if !is_level2 {
                    continue; // already moved, or not a blob
                }
                let inner = e.path();
                for f in fs::read_dir(&inner).map_err(io_err(&inner))? {
                    let f = f.map_err(io_err(&inner))?;
                    fs::rename(f.path(), dir.join(f.file_name())).map_err(io_err(&inner))?;
                    moved += 1;
                }
                fs::remove_dir(&inner).map_err(io_err(&inner))?;
            }
        }
    }
    Ok(moved)
}

/// temp file → write → fsync → rename → fsync directory. The temporary
/// name carries the process id, so two processes writing the same file
/// (the catalog witness) do not write into each other's temp file.
pub(crate) fn write_durable(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("durable path has a parent");
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_f2_torn_or_unrecorded_blobs_count_as_missing_and_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s")).unwrap();
        let b = BlobRef::chunk(&ChunkId::of(b"x"));
        assert!(matches!(store.read(&b), Err(StoreError::Missing { .. })));
        store.put_unsynced(&b, b"frame").unwrap();
        store.sync().unwrap();
        assert_eq!(store.read(&b).unwrap(), b"frame");
        // F1: a 0-byte file left by a crash is absent, and the next put replaces it.
        fs::write(store.blob_path(&b), b"").unwrap();
        assert!(matches!(store.read(&b), Err(StoreError::Missing { .. })));
        store.put_unsynced(&b, b"frame2").unwrap();
        assert_eq!(store.read(&b).unwrap(), b"frame2");
    }

    /// F3: leftovers of interrupted writes never sit under a final name and
    /// are cleared when the store opens.
    #[test]
    fn f3_interrupted_writes_are_cleaned_only_by_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        Store::create(&root).unwrap();
        fs::write(root.join("tmp").join("123-0"), b"partial").unwrap();
        let store = Store::open(&root).unwrap();
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 1, "opening alone must not delete");
        assert_eq!(store.remove_leftovers().unwrap(), 1);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert!(matches!(Store::open(dir.path()), Err(StoreError::NotAStore { .. })));
    }

    /// Writes a layout-1 store by hand (as Pulih before layout 2 did).
    fn layout1_store(root: &Path, blobs: &[(BlobKind, &[u8])]) {
        for d in ["chunks", "trees", "snapshots", "tmp"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("FORMAT"), FORMAT_V1).unwrap();
        for (kind, data) in blobs {
            let h = blake3::hash(data).to_hex().to_string();
            let d = root.join(kind.dir()).join(&h[0..2]).join(&h[2..4]);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(&h), data).unwrap();
        }
    }

    /// A layout-1 store is refused with a message naming the command that
    /// converts it; the conversion moves every blob, removes the old
    /// directories, survives being interrupted and re-run, and is a no-op
    /// on a layout-2 store.
    /// Answers with a stale location first (a pack compaction removed since),
    /// then with the blob's new place.
    #[derive(Debug)]
    struct MovedMeanwhile {
        calls: std::sync::Mutex<u32>,
        old: PackedAt,
        new: PackedAt,
    }

    impl Locate for MovedMeanwhile {
        fn locate(&self, _: &BlobRef) -> Result<Option<Location>, String> {
            let mut n = self.calls.lock().unwrap();
            *n += 1;
            Ok(Some(Location::Packed(if *n % 2 == 1 { self.old } else { self.new })))
        }
    }

    /// A reader that located a blob just before compaction moved it and
    /// removed the old pack finds it at its new place (read and present).
    #[test]
    fn a_blob_moved_by_compaction_after_it_was_located_is_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let b = BlobRef { kind: BlobKind::Tree, id: [4; 32] };
        let bare = Store::create(&root).unwrap();
        let mut w = bare.create_pack(PackId([2; 16])).unwrap();
        let new = w.append(b, b"moved frame").unwrap();
        w.seal().unwrap();
        let old = PackedAt { pack: PackId([3; 16]), offset: 8, len: 11 };
        let locator = Arc::new(MovedMeanwhile { calls: std::sync::Mutex::new(0), old, new });
        let store = Store::open(&root).unwrap().with_locator(locator.clone());
        assert_eq!(store.read(&b).unwrap(), b"moved frame");
        assert!(store.present(&b).unwrap());
        assert_eq!(*locator.calls.lock().unwrap(), 4);
    }

    /// A layout-2 store (one file per blob) is refused until `serve`
    /// converts it; its loose blobs stay where they are and readable, with
    /// or without a catalog row, and new blobs can go to packs.
    #[test]
    fn layout2_store_is_refused_then_gets_packs_and_keeps_its_loose_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::create(&root).unwrap();
        let b = BlobRef { kind: BlobKind::Chunk, id: [9; 32] };
        store.put_unsynced(&b, b"loose frame").unwrap();
        fs::remove_dir_all(root.join(PACKS)).unwrap();
        write_durable(&root.join("FORMAT"), FORMAT_V2.as_bytes()).unwrap();
        let err = Store::open(&root).unwrap_err();
        assert!(matches!(err, StoreError::OldLayout { layout: 2, .. }), "{err}");
        assert!(err.to_string().contains("layout 3"), "{err}");

        assert_eq!(migrate(&root).unwrap(), Some(0));
        assert_eq!(fs::read_to_string(root.join("FORMAT")).unwrap(), FORMAT);
        assert_eq!(fs::read_dir(root.join(PACKS)).unwrap().count(), 256);
        let store = Store::open(&root).unwrap();
        assert_eq!(store.read(&b).unwrap(), b"loose frame");
        assert_eq!(store.location(&b).unwrap(), Location::Loose);
        let id = PackId([1; 16]);
        let mut w = store.create_pack(id).unwrap();
        let at = w.append(b, b"packed frame").unwrap();
        w.seal().unwrap();
        assert_eq!(store.read_at(&b, &Location::Packed(at)).unwrap(), b"packed frame");
        assert_eq!(store.list_packs().unwrap(), vec![id]);
        assert_eq!(migrate(&root).unwrap(), None);
    }

    #[test]
    fn layout1_store_is_refused_then_migrated_even_after_an_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let contents: Vec<Vec<u8>> = (0..300u32).map(|i| format!("blob {i}").into_bytes()).collect();
        let blobs: Vec<(BlobKind, &[u8])> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| (if i % 7 == 0 { BlobKind::Tree } else { BlobKind::Chunk }, c.as_slice()))
            .collect();
        layout1_store(&root, &blobs);
        let err = Store::open(&root).unwrap_err();
        assert!(matches!(err, StoreError::OldLayout { .. }), "{err}");
        assert!(err.to_string().contains("pulih-controller serve"), "{err}");

        // An earlier run was interrupted after moving one blob up.
        let (k0, d0) = blobs[1];
        let h0 = blake3::hash(d0).to_hex().to_string();
        let from = root.join(k0.dir()).join(&h0[0..2]).join(&h0[2..4]).join(&h0);
        fs::rename(&from, root.join(k0.dir()).join(&h0[0..2]).join(&h0)).unwrap();
        fs::remove_dir(from.parent().unwrap()).ok();

        assert_eq!(migrate(&root).unwrap(), Some(blobs.len() as u64 - 1));
        let store = Store::open(&root).unwrap();
        for (kind, data) in &blobs {
            let b = BlobRef { kind: *kind, id: *blake3::hash(data).as_bytes() };
            assert_eq!(store.read(&b).unwrap(), *data);
            assert_eq!(store.blob_path(&b).parent().unwrap().parent().unwrap(), root.join(kind.dir()));
        }
        for kind in [BlobKind::Chunk, BlobKind::Tree] {
            for sub in fs::read_dir(root.join(kind.dir())).unwrap() {
                for e in fs::read_dir(sub.unwrap().path()).unwrap() {
                    assert!(e.unwrap().file_type().unwrap().is_file(), "a layout-1 directory is left");
                }
            }
            assert_eq!(fs::read_dir(root.join(kind.dir())).unwrap().count(), 256);
        }
        assert_eq!(migrate(&root).unwrap(), None);
        assert_eq!(fs::read_to_string(root.join("FORMAT")).unwrap(), FORMAT);
    }

    /// A new store has its 256 fan-out directories per kind, and writing a
    /// blob creates no directory.
    #[test]
    fn new_store_has_one_level_of_256_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::create(&root).unwrap();
        assert_eq!(fs::read_dir(root.join("chunks")).unwrap().count(), 256);
        assert_eq!(fs::read_dir(root.join("trees")).unwrap().count(), 256);
        let b = BlobRef::chunk(&ChunkId::of(b"y"));
        store.put_unsynced(&b, b"frame").unwrap();
        let h = b.hex();
        assert_eq!(store.blob_path(&b), root.join("chunks").join(&h[0..2]).join(&h));
        assert_eq!(fs::read_dir(root.join("chunks")).unwrap().count(), 256);
    }
}
