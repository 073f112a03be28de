//! Pack files: many verified blobs in one file of the store (layout 3).
//!
//! ```text
//! "PULIHPK1"                                 magic, pack format version 1
//! frame frame frame ...                      stored blobs (zstd frames), back to back
//! index: count × [kind u8 | id 32 | offset u64 LE | len u32 LE]
//! trailer: count u32 LE | blake3(index) 32 | "PULIHIX1"
//! ```
//!
//! One inode per blob cost the controller about a third of its CPU time on
//! a fresh backup of many small files (create, write, rename, and the
//! writeback of each at `syncfs`); an upload session now appends the blobs
//! of a checkpoint to one pack and seals it before the checkpoint's
//! `syncfs`. The catalog, not the pack, says where a blob is
//! (`blobs.pack`, `blobs.pack_offset`, `blobs.stored_len`): readers never
//! scan a pack. The index at the end makes a pack self-describing, so
//! `rebuild-catalog` can recover locations from the store alone, and the
//! trailer's hash tells a complete pack from a torn one.
//!
//! A pack is named by 16 random bytes (hex), never reused. Its catalog row
//! (`packs`, state `writing`) is committed before the file is created, so
//! the leftovers of a crash are found from the catalog without listing the
//! store.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::store::{BlobKind, BlobRef};

/// First bytes of every pack (format version 1).
pub const MAGIC: &[u8; 8] = b"PULIHPK1";
/// Last bytes of a sealed pack.
const INDEX_MAGIC: &[u8; 8] = b"PULIHIX1";
const ENTRY_LEN: usize = 1 + 32 + 8 + 4;
const TRAILER_LEN: usize = 4 + 32 + 8;
/// Buffered writes: small blobs cost one `write` per this many bytes.
const WRITE_BUFFER: usize = 1 << 20;

/// A pack's name: 16 random bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// A fresh random name.
    pub fn random() -> io::Result<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("no randomness for a pack name: {e}")))?;
        Ok(Self(b))
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
    /// From a catalog value or a file name's bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }
    /// From a file name (32 hex digits).
    pub fn parse(name: &str) -> Option<Self> {
        if name.len() != 32 {
            return None;
        }
        Self::from_slice(&hex::decode(name).ok()?)
    }
}

impl std::fmt::Display for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// Where a blob's stored bytes are inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedAt {
    pub pack: PackId,
    pub offset: u64,
    pub len: u64,
}

/// One index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub blob: BlobRef,
    pub offset: u64,
    pub len: u32,
}

/// Why a pack's index cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("pack {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pack {path} is not sealed or damaged: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Appends blobs to a new pack. Nothing is durable until the store is
/// synced after [`PackWriter::seal`].
#[derive(Debug)]
pub struct PackWriter {
    id: PackId,
    path: PathBuf,
    file: BufWriter<File>,
    offset: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    /// Creates the pack file (it must not exist).
    pub fn create(id: PackId, path: PathBuf) -> Result<Self, PackError> {
        let io = |source| PackError::Io { path: path.clone(), source };
        let f = OpenOptions::new().write(true).create_new(true).open(&path).map_err(io)?;
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, f);
        file.write_all(MAGIC).map_err(io)?;
        Ok(Self { id, path, file, offset: MAGIC.len() as u64, entries: Vec::new() })
    }

    pub fn id(&self) -> PackId {
        self.id
    }

    /// Appends a blob's stored bytes; returns where they are.
    pub fn append(&mut self, blob: BlobRef, data: &[u8]) -> Result<PackedAt, PackError> {
        let len = u32::try_from(data.len()).map_err(|_| PackError::Invalid {
            path: self.path.clone(),
            reason: format!("a blob of {} bytes does not fit a pack entry", data.len()),
        })?;
        self.file.write_all(data).map_err(|source| PackError::Io { path: self.path.clone(), source })?;
        let at = PackedAt { pack: self.id, offset: self.offset, len: len.into() };
        self.entries.push(PackEntry { blob, offset: self.offset, len });
        self.offset += u64::from(len);
        Ok(at)
    }

    /// Writes the index and trailer and closes the file; returns the pack's
    /// size. The caller syncs the store before recording the pack.
    pub fn seal(mut self) -> Result<u64, PackError> {
        let index = encode_index(&self.entries);
        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        trailer.extend_from_slice(blake3::hash(&index).as_bytes());
        trailer.extend_from_slice(INDEX_MAGIC);
        let io = |source| PackError::Io { path: self.path.clone(), source };
        self.file.write_all(&index).map_err(io)?;
        self.file.write_all(&trailer).map_err(io)?;
        self.file.flush().map_err(io)?;
        Ok(self.offset + index.len() as u64 + trailer.len() as u64)
    }
}

fn encode_index(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.push(e.blob.kind.code() as u8);
        out.extend_from_slice(&e.blob.id);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    out
}

/// Parses a whole sealed pack's bytes' tail: `tail` is the file's last
/// bytes (at least the index and trailer), `file_len` the file's size.
/// Every entry must lie between the magic and the index.
pub fn parse_index(tail: &[u8], file_len: u64) -> Result<Vec<PackEntry>, String> {
    if tail.len() < TRAILER_LEN || file_len < (MAGIC.len() + TRAILER_LEN) as u64 {
        return Err("too short for a trailer".into());
    }
    let trailer = &tail[tail.len() - TRAILER_LEN..];
    if &trailer[36..] != INDEX_MAGIC {
        return Err("no index trailer (the pack was never sealed)".into());
    }
    let count = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as u64;
    let index_len = count * ENTRY_LEN as u64;
    let body = file_len - (MAGIC.len() + TRAILER_LEN) as u64;
    if index_len > body {
        return Err(format!("the trailer counts {count} entries, more than the pack holds"));
    }
    if (tail.len() - TRAILER_LEN) < index_len as usize {
        return Err("the index is not in the bytes read".into());
    }
    let index = &tail[tail.len() - TRAILER_LEN - index_len as usize..tail.len() - TRAILER_LEN];
    if blake3::hash(index).as_bytes() != &trailer[4..36] {
        return Err("the index does not match its hash".into());
    }
    let data_end = file_len - TRAILER_LEN as u64 - index_len;
    let mut out = Vec::with_capacity(count as usize);
    for e in index.chunks_exact(ENTRY_LEN) {
        let kind = BlobKind::from_code(e[0].into()).ok_or_else(|| format!("unknown blob kind {}", e[0]))?;
        let id: [u8; 32] = e[1..33].try_into().expect("32 bytes");
        let offset = u64::from_le_bytes(e[33..41].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(e[41..45].try_into().expect("4 bytes"));
        if offset < MAGIC.len() as u64 || offset.checked_add(len.into()).is_none_or(|end| end > data_end) {
            return Err(format!("entry {} at {offset}+{len} lies outside the pack's data", hex::encode(id)));
        }
        out.push(PackEntry { blob: BlobRef { kind, id }, offset, len });
    }
    Ok(out)
}

/// Reads a sealed pack's index from its file.
pub fn read_index(path: &Path) -> Result<Vec<PackEntry>, PackError> {
    let io = |source| PackError::Io { path: path.to_owned(), source };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let invalid = |reason: String| PackError::Invalid { path: path.to_owned(), reason };
    if file_len < (MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(invalid("too short for a sealed pack".into()));
    }
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(invalid("unknown pack format (bad magic)".into()));
    }
    // The count is bounded by the file's size before anything is
    // allocated; parse_index checks the rest (magic, hash, ranges).
    let mut trailer = [0u8; TRAILER_LEN];
    f.seek(SeekFrom::Start(file_len - TRAILER_LEN as u64)).map_err(io)?;
    f.read_exact(&mut trailer).map_err(io)?;
    let count = u64::from(u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")));
    let tail_len = count * ENTRY_LEN as u64 + TRAILER_LEN as u64;
    if tail_len > file_len - MAGIC.len() as u64 {
        return Err(invalid(format!("the trailer counts {count} entries, more than the pack holds")));
    }
    let mut tail = vec![0u8; tail_len as usize];
    f.seek(SeekFrom::Start(file_len - tail_len)).map_err(io)?;
    f.read_exact(&mut tail).map_err(io)?;
    parse_index(&tail, file_len).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(kind: BlobKind, n: u8) -> BlobRef {
        BlobRef { kind, id: [n; 32] }
    }

    #[test]
    fn a_sealed_pack_lists_its_blobs_and_a_torn_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut w = PackWriter::create(PackId([7; 16]), path.clone()).unwrap();
        let a = w.append(blob(BlobKind::Chunk, 1), b"first").unwrap();
        let b = w.append(blob(BlobKind::Tree, 2), b"second!").unwrap();
        assert_eq!((a.offset, a.len, b.offset, b.len), (8, 5, 13, 7));
        let size = w.seal().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(&bytes[13..20], b"second!");
        let idx = read_index(&path).unwrap();
        assert_eq!(
            idx.iter().map(|e| (e.blob, e.offset, e.len)).collect::<Vec<_>>(),
            vec![(blob(BlobKind::Chunk, 1), 8, 5), (blob(BlobKind::Tree, 2), 13, 7)]
        );
        // Cut anywhere: never taken for a sealed pack.
        for cut in [0, 8, 20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(matches!(read_index(&path), Err(PackError::Invalid { .. })), "cut at {cut}");
        }
        // A flipped index byte fails the index hash.
        let mut bad = bytes.clone();
        bad[21] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(read_index(&path).unwrap_err().to_string().contains("hash"));
    }

    #[test]
    fn an_existing_pack_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, b"keep").unwrap();
        assert!(PackWriter::create(PackId([1; 16]), path.clone()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }

    proptest! {
        #[test]
        fn index_round_trips(blobs in proptest::collection::vec((any::<bool>(), any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 1..300)), 0..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p");
            let mut w = PackWriter::create(PackId([3; 16]), path.clone()).unwrap();
            let mut want = Vec::new();
            for (tree, id, data) in &blobs {
                let b = BlobRef { kind: if *tree { BlobKind::Tree } else { BlobKind::Chunk }, id: *id };
                let at = w.append(b, data).unwrap();
                want.push((b, at.offset, data.clone()));
            }
            w.seal().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let idx = read_index(&path).unwrap();
            prop_assert_eq!(idx.len(), want.len());
            for (e, (b, off, data)) in idx.iter().zip(&want) {
                prop_assert_eq!(e.blob, *b);
                prop_assert_eq!(e.offset, *off);
                prop_assert_eq!(&bytes[e.offset as usize..(e.offset + u64::from(e.len)) as usize], &data[..]);
            }
        }

        #[test]
        fn parse_index_never_panics_and_keeps_entries_inside(tail in proptest::collection::vec(any::<u8>(), 0..400), extra in 0u64..1000) {
            let file_len = tail.len() as u64 + extra;
            if let Ok(entries) = parse_index(&tail, file_len) {
                for e in entries {
                    prop_assert!(e.offset >= 8 && e.offset + u64::from(e.len) <= file_len);
                }
            }
        }
    }
}
