//! The change cache: what the agent knew of each directory at its last
//! committed snapshot, so an unchanged file is never read again.
//!
//! One *directory record* per directory, content-addressed (its key is the
//! blake3 of its encoding) and linked to its subdirectories' records like the
//! trees themselves. All records of one snapshot live in one *pack* file per
//! dataset (`cache/<dataset>.pack`):
//!
//! ```text
//! "PULIHPCK" version u16 | record frames (zstd) ...
//! | count u32 | (key [32], offset u64, len u32) * count, sorted by key
//! | footer_offset u64 | root key [32] | snapshot id [32] | "PULIHEND"
//! ```
//!
//! Readers load only the sorted key table (44 bytes per directory) and read
//! records on demand, so memory does not grow with the number of files. A new
//! pack is written beside the old one and renamed over it only after the
//! controller committed the snapshot, so a crash leaves the previous,
//! still-valid cache. The cache is a hint: everything it names is verified
//! by the controller at commit, and a refusal makes the agent retry without
//! it (F15, F36).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pulih_core::codec;
use pulih_core::enc::{DecodeError, Reader, Writer};
use pulih_core::formats::{MAX_NAME_LEN, MAX_TREE_LEN};
use pulih_core::tree::{self, Segment};
use pulih_core::{SnapshotId, TreeId};

const PACK_MAGIC: &[u8; 8] = b"PULIHPCK";
const PACK_END: &[u8; 8] = b"PULIHEND";
/// Version 2 added subtree totals to directory records; a version 1 pack is
/// ignored (one snapshot reads everything again).
const PACK_VERSION: u16 = 2;
const RECORD_MAGIC: &[u8; 8] = b"PULIHDIR";
const TRAILER_LEN: u64 = 8 + 32 + 32 + 8;

/// Cache errors. A damaged cache is never fatal: the agent snapshots without it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("change cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("change cache {path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

/// What the cache remembers of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub name: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i64,
    pub mtime_ns: i64,
    pub size: u64,
    pub kind: CacheKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheKind {
    File { flags: u8, segments: Vec<Segment> },
    Dir { record: [u8; 32] },
}

/// Counts of a directory's subtree, itself included in `dirs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub others: u64,
    pub bytes: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.others += o.others;
        self.bytes += o.bytes;
    }
}

/// One directory as last snapshotted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirRecord {
    pub tree: Option<TreeId>,
    /// What the whole subtree held, so a subtree reused without being
    /// walked (continuous mode) still counts in the snapshot's statistics.
    pub totals: Totals,
    /// Sorted by name.
    pub entries: Vec<CacheEntry>,
}

impl DirRecord {
    /// The entry named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&CacheEntry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| &self.entries[i])
    }

    /// Encoding and key.
    pub fn encode(&self) -> ([u8; 32], Vec<u8>) {
        let mut w = Writer::new();
        w.raw(RECORD_MAGIC);
        w.raw(self.tree.map_or([0; 32], |t| *t.as_bytes()).as_slice());
        let t = &self.totals;
        for v in [t.files, t.dirs, t.symlinks, t.others, t.bytes] {
            w.u64(v);
        }
        w.count(self.entries.len());
        for e in &self.entries {
            w.bytes(&e.name);
            w.u64(e.dev);
            w.u64(e.ino);
            w.i64(e.ctime_ns);
            w.i64(e.mtime_ns);
            w.u64(e.size);
            match &e.kind {
                CacheKind::File { flags, segments } => {
                    w.u8(1);
                    w.u8(*flags);
                    tree::encode_segments(&mut w, segments);
                }
                CacheKind::Dir { record } => {
                    w.u8(2);
                    w.raw(record);
                }
            }
        }
        let bytes = w.into_bytes();
        (*blake3::hash(&bytes).as_bytes(), bytes)
    }

    /// Decodes and checks a record (entries sorted, nothing left over).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.take("record magic", 8)? != RECORD_MAGIC {
            return Err(r.invalid("record magic", "not a directory record"));
        }
        let tree: [u8; 32] = r.array("tree id")?;
        let tree = (tree != [0; 32]).then(|| TreeId::from_bytes(tree));
        let totals = Totals {
            files: r.u64("files")?,
            dirs: r.u64("dirs")?,
            symlinks: r.u64("symlinks")?,
            others: r.u64("others")?,
            bytes: r.u64("bytes")?,
        };
        let n = r.count("entries", u32::MAX, 46)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.bytes("name", MAX_NAME_LEN)?.to_vec();
            let dev = r.u64("dev")?;
            let ino = r.u64("ino")?;
            let ctime_ns = r.i64("ctime")?;
            let mtime_ns = r.i64("mtime")?;
            let size = r.u64("size")?;
            let kind = match r.u8("kind")? {
                1 => {
                    let flags = r.u8("flags")?;
                    let segments = tree::decode_segments(&mut r)?;
                    CacheKind::File { flags, segments }
                }
                2 => CacheKind::Dir { record: r.array("record")? },
                _ => return Err(r.invalid("kind", "unknown kind")),
            };
            entries.push(CacheEntry { name, dev, ino, ctime_ns, mtime_ns, size, kind });
        }
        r.finish("record")?;
        if entries.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(DecodeError {
                what: "record",
                at: 0,
                problem: pulih_core::enc::Problem::Invalid("unsorted".into()),
            });
        }
        Ok(Self { tree, totals, entries })
    }
}

/// A pack being read.
#[derive(Debug)]
pub struct PackReader {
    path: PathBuf,
    file: File,
    table: Vec<([u8; 32], u64, u32)>,
    pub root: [u8; 32],
    pub snapshot: SnapshotId,
}

impl PackReader {
    /// Opens a pack; `Ok(None)` if there is none.
    pub fn open(path: &Path) -> Result<Option<Arc<Self>>, CacheError> {
        let io_err = |source| CacheError::Io { path: path.to_owned(), source };
        let damaged = |why: &str| CacheError::Damaged { path: path.to_owned(), why: why.to_owned() };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        if len < 10 + TRAILER_LEN {
            return Err(damaged("too short"));
        }
        let mut head = [0u8; 10];
        file.read_exact_at(&mut head, 0).map_err(io_err)?;
        if &head[..8] != PACK_MAGIC || u16::from_le_bytes([head[8], head[9]]) != PACK_VERSION {
            return Err(damaged("unknown format"));
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut trailer, len - TRAILER_LEN).map_err(io_err)?;
        if &trailer[72..] != PACK_END {
            return Err(damaged("incomplete (no end marker)"));
        }
        let footer_off = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        let root: [u8; 32] = trailer[8..40].try_into().expect("32 bytes");
        let snapshot = SnapshotId::from_bytes(trailer[40..72].try_into().expect("32 bytes"));
        // Checked: the offset comes from the file and may be anything.
        if footer_off < 10 || footer_off.checked_add(4).is_none_or(|end| end > len - TRAILER_LEN) {
            return Err(damaged("bad footer offset"));
        }
        let mut footer = vec![0u8; (len - TRAILER_LEN - footer_off) as usize];
        file.read_exact_at(&mut footer, footer_off).map_err(io_err)?;
        let mut r = Reader::new(&footer);
        let n = r.count("table", u32::MAX, 44).map_err(|e| damaged(&e.to_string()))?;
        let mut table = Vec::with_capacity(n);
        for _ in 0..n {
            let parse = |r: &mut Reader| -> Result<_, DecodeError> {
                Ok((r.array::<32>("key")?, r.u64("off")?, r.u32("len")?))
            };
            let (k, off, l) = parse(&mut r).map_err(|e| damaged(&e.to_string()))?;
            if off.checked_add(u64::from(l)).is_none_or(|end| end > footer_off) {
                return Err(damaged("record outside the pack"));
            }
            table.push((k, off, l));
        }
        if table.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(damaged("unsorted table"));
        }
        Ok(Some(Arc::new(Self { path: path.to_owned(), file, table, root, snapshot })))
    }

    /// Reads the record with `key`.
    pub fn get(&self, key: &[u8; 32]) -> Result<Option<DirRecord>, CacheError> {
        let Ok(i) = self.table.binary_search_by(|e| e.0.cmp(key)) else { return Ok(None) };
        let (_, off, len) = self.table[i];
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, off).map_err(|source| CacheError::Io { path: self.path.clone(), source })?;
        let damaged = |why: String| CacheError::Damaged { path: self.path.clone(), why };
        let plain = codec::decompress_bounded(&buf, MAX_TREE_LEN).map_err(|e| damaged(e.to_string()))?;
        if blake3::hash(&plain).as_bytes() != key {
            return Err(damaged("record does not match its key".into()));
        }
        DirRecord::decode(&plain).map(Some).map_err(|e| damaged(e.to_string()))
    }
}

/// A pack being written.
pub struct PackWriter {
    tmp: PathBuf,
    out: BufWriter<File>,
    pos: u64,
    table: Vec<([u8; 32], u64, u32)>,
    written: HashSet<[u8; 32]>,
}

impl PackWriter {
    /// Starts `<path>.new`.
    pub fn create(path: &Path) -> Result<Self, CacheError> {
        let tmp = path.with_extension("pack.new");
        let io_err = |source| CacheError::Io { path: tmp.clone(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut out = BufWriter::new(File::create(&tmp).map_err(io_err)?);
        out.write_all(PACK_MAGIC).map_err(io_err)?;
        out.write_all(&PACK_VERSION.to_le_bytes()).map_err(io_err)?;
        Ok(Self { tmp, out, pos: 10, table: Vec::new(), written: HashSet::new() })
    }

    /// Adds a record; returns its key.
    pub fn add(&mut self, rec: &DirRecord) -> Result<[u8; 32], CacheError> {
        let (key, bytes) = rec.encode();
        if self.written.insert(key) {
            let frame = codec::compress(&bytes, 1);
            self.out.write_all(&frame).map_err(|source| CacheError::Io { path: self.tmp.clone(), source })?;
            self.table.push((key, self.pos, frame.len() as u32));
            self.pos += frame.len() as u64;
        }
        Ok(key)
    }

    /// Copies the record `key` of `from` and every record below it, for a
    /// subtree reused unchanged. Returns false when `from` lacks one of them
    /// (the caller then walks the subtree instead).
    pub fn copy_subtree(&mut self, from: &PackReader, key: [u8; 32]) -> Result<bool, CacheError> {
        let mut stack = vec![key];
        while let Some(k) = stack.pop() {
            if self.written.contains(&k) {
                continue;
            }
            let Some(rec) = from.get(&k)? else { return Ok(false) };
            for e in &rec.entries {
                if let CacheKind::Dir { record } = e.kind {
                    stack.push(record);
                }
            }
            self.add(&rec)?;
        }
        Ok(true)
    }

    /// Writes the footer and syncs; the pack becomes current only with
    /// [`PendingPack::install`] after the snapshot is committed.
    pub fn finish(mut self, root: [u8; 32]) -> Result<PendingPack, CacheError> {
        let io_err = |source| CacheError::Io { path: self.tmp.clone(), source };
        self.table.sort_unstable_by_key(|a| a.0);
        let mut w = Writer::new();
        w.count(self.table.len());
        for (k, off, len) in &self.table {
            w.raw(k);
            w.u64(*off);
            w.u32(*len);
        }
        self.out.write_all(&w.into_bytes()).map_err(io_err)?;
        self.out.write_all(&self.pos.to_le_bytes()).map_err(io_err)?;
        self.out.write_all(&root).map_err(io_err)?;
        let at = self.out.stream_position().map_err(io_err)?;
        Ok(PendingPack { tmp: self.tmp.clone(), out: self.out, trailer_at: at })
    }
}

/// A finished pack waiting for its snapshot id.
pub struct PendingPack {
    tmp: PathBuf,
    out: BufWriter<File>,
    trailer_at: u64,
}

impl PendingPack {
    /// Records the committed snapshot id and replaces the current pack.
    pub fn install(mut self, snapshot: &SnapshotId, dest: &Path) -> Result<(), CacheError> {
        let io_err = |source| CacheError::Io { path: self.tmp.clone(), source };
        debug_assert_eq!(self.out.stream_position().ok(), Some(self.trailer_at));
        self.out.write_all(snapshot.as_bytes()).map_err(io_err)?;
        self.out.write_all(PACK_END).map_err(io_err)?;
        let f = self.out.into_inner().map_err(|e| io_err(e.into_error()))?;
        f.sync_all().map_err(io_err)?;
        fs::rename(&self.tmp, dest).map_err(io_err)?;
        if let Some(dir) = dest.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        }
        Ok(())
    }

    /// Drops the unfinished pack.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulih_core::ChunkId;

    fn rec(n: u8) -> DirRecord {
        DirRecord {
            tree: Some(TreeId::of(&[n])),
            totals: Totals { files: 1, dirs: 1, symlinks: 0, others: 0, bytes: 5 + u64::from(n) },
            entries: vec![CacheEntry {
                name: vec![b'a', n],
                dev: 1,
                ino: 2,
                ctime_ns: 3,
                mtime_ns: 4,
                size: 5,
                kind: CacheKind::File { flags: 0, segments: vec![Segment::Data { id: ChunkId::of(b"x"), len: 5 }] },
            }],
        }
    }

    #[test]
    fn pack_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pack");
        assert!(PackReader::open(&path).unwrap().is_none());
        let mut w = PackWriter::create(&path).unwrap();
        let keys: Vec<_> = (0..50).map(|i| w.add(&rec(i)).unwrap()).collect();
        assert_eq!(w.add(&rec(0)).unwrap(), keys[0], "duplicates are stored once");
        let pending = w.finish(keys[7]).unwrap();
        // Not installed yet: no pack visible.
        assert!(PackReader::open(&path).unwrap().is_none());
        pending.install(&SnapshotId::of(b"s"), &path).unwrap();
        let r = PackReader::open(&path).unwrap().unwrap();
        assert_eq!(r.root, keys[7]);
        assert_eq!(r.snapshot, SnapshotId::of(b"s"));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(r.get(k).unwrap().unwrap(), rec(i as u8));
        }
        assert!(r.get(&[9; 32]).unwrap().is_none());
        // Truncation is noticed.
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(PackReader::open(&path), Err(CacheError::Damaged { .. })));
    }

    /// Found by the `cache_pack` fuzz target (fuzz/regressions/cache_pack/):
    /// a footer offset or a record offset near `u64::MAX` overflowed the
    /// bounds check and panicked; a damaged pack must be an error.
    #[test]
    fn offsets_near_u64_max_are_damage_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pack");
        let mut w = PackWriter::create(&path).unwrap();
        let key = w.add(&rec(1)).unwrap();
        w.finish(key).unwrap().install(&SnapshotId::of(b"s"), &path).unwrap();
        let good = fs::read(&path).unwrap();
        let trailer = good.len() - TRAILER_LEN as usize;
        let footer_off = u64::from_le_bytes(good[trailer..trailer + 8].try_into().unwrap()) as usize;

        let mut bad = good.clone();
        bad[trailer..trailer + 8].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        fs::write(&path, &bad).unwrap();
        assert!(matches!(PackReader::open(&path), Err(CacheError::Damaged { .. })));

        // The one table entry: count u32, key [32], offset u64, len u32.
        let mut bad = good.clone();
        bad[footer_off + 4 + 32..footer_off + 4 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        fs::write(&path, &bad).unwrap();
        assert!(matches!(PackReader::open(&path), Err(CacheError::Damaged { .. })));

        fs::write(&path, &good).unwrap();
        assert_eq!(PackReader::open(&path).unwrap().unwrap().get(&key).unwrap().unwrap(), rec(1));
    }
}
