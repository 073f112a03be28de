//! Restore from the controller's store: the store as a
//! [`BlobSource`] for the shared writer in [`pulih_core::restore`] (which
//! holds the safety rules, F28-F31, and rehashes every blob).

use std::path::Path;

use pulih_core::restore::{BlobSource, SourceError};
pub use pulih_core::restore::{Options, RestoreError, RestoreStats};
use pulih_core::{ChunkId, TreeId};

use pulih_core::codec;
use pulih_core::formats::MAX_TREE_LEN;

use crate::store::{BlobRef, Store};

/// The local store as a blob source. It only decompresses (bounded); the
/// writer verifies the hashes.
pub struct StoreSource<'a>(pub &'a Store);

impl BlobSource for StoreSource<'_> {
    fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
        let frame = self.0.read(&BlobRef::tree(id))?;
        codec::decompress_bounded(&frame, MAX_TREE_LEN)
            .map_err(|e| format!("tree {} is damaged: {e}", id.to_hex()).into())
    }
    fn chunk(&mut self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError> {
        let frame = self.0.read(&BlobRef::chunk(id))?;
        codec::decompress_exact(&frame, len.into(), len)
            .map_err(|e| format!("chunk {} is damaged: {e}", id.to_hex()).into())
    }
}

/// Restores the tree `root` (or the entry at `subpath` within it) from the
/// store into `dest`.
pub fn restore(
    store: &Store,
    root: &TreeId,
    subpath: &[Vec<u8>],
    dest: &Path,
    opts: Options,
) -> Result<RestoreStats, RestoreError> {
    pulih_core::restore::restore(&mut StoreSource(store), root, subpath, dest, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulih_core::tree::{Entry, EntryName, Node, Segment, Tree};

    /// F26 through the store: a chunk whose stored content no longer
    /// matches is never written.
    #[test]
    fn damaged_chunk_in_store_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("store")).unwrap();
        let id = ChunkId::of(b"good content");
        store.put_unsynced(&BlobRef::chunk(&id), &codec::compress(b"evil content", 1)).unwrap();
        let e = Entry {
            name: EntryName::new("f").unwrap(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            node: Node::File { size: 12, link_group: None, flags: 0, segments: vec![Segment::Data { id, len: 12 }] },
        };
        let (root, bytes) = Tree::new(vec![e]).unwrap().encode();
        store.put_unsynced(&BlobRef::tree(&root), &codec::compress(&bytes, 1)).unwrap();
        let dest = dir.path().join("dest");
        let err = restore(&store, &root, &[], &dest, Options::default()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!std::fs::read(dest.join("f")).unwrap_or_default().starts_with(b"evil"));
    }
}
