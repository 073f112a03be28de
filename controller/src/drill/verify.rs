//! Verification of a drill's restore at the DRC: the restored copy is
//! re-read and compared with the snapshot by [`pulih_core::restored`], with
//! the trees read from the store.

use std::path::Path;

use pulih_core::TreeId;

pub use pulih_core::restored::Checked;

use crate::restore::StoreSource;
use crate::store::Store;

/// Compares what was restored into `dest` from the tree `root` (or the
/// entry at `subpath` of it) with the snapshot.
pub fn restored(store: &Store, root: &TreeId, subpath: &[Vec<u8>], dest: &Path) -> Checked {
    pulih_core::restored::check(&mut StoreSource(store), root, subpath, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlobRef;
    use pulih_core::tree::{Entry, EntryName, Node, Segment, Tree};
    use pulih_core::ChunkId;

    #[test]
    fn a_changed_file_restored_from_the_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("store")).unwrap();
        let put = |data: &[u8]| {
            let id = ChunkId::of(data);
            store.put_unsynced(&BlobRef::chunk(&id), &pulih_core::codec::compress(data, 1)).unwrap();
            Segment::Data { id, len: data.len() as u32 }
        };
        let e = Entry {
            name: EntryName::new("a").unwrap(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            node: Node::File { size: 5, link_group: None, flags: 0, segments: vec![put(b"alpha")] },
        };
        let (root, bytes) = Tree::new(vec![e]).unwrap().encode();
        store.put_unsynced(&BlobRef::tree(&root), &pulih_core::codec::compress(&bytes, 1)).unwrap();
        let dest = dir.path().join("dest");
        crate::restore::restore(&store, &root, &[], &dest, Default::default()).unwrap();
        assert_eq!(restored(&store, &root, &[], &dest).problem_count, 0);
        std::fs::write(dest.join("a"), b"alphA").unwrap();
        let bad = restored(&store, &root, &[], &dest);
        assert_eq!(bad.problem_count, 1, "{:?}", bad.problems);
    }
}
