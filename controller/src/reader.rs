//! Reading verified objects back from the store: every tree and chunk is
//! decompressed with a bound and rehashed before anyone uses it.

use pulih_core::codec::{self, CodecError};
use pulih_core::formats::{MAX_CHUNK_LEN, MAX_TREE_LEN};
use pulih_core::tree::{Tree, TreeError};
use pulih_core::{ChunkId, TreeId};

use crate::store::{BlobRef, Store, StoreError};

/// Why a stored object could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{kind} {id} is damaged: {source}")]
    Damaged { kind: &'static str, id: String, source: CodecError },
    #[error("tree {id} is damaged: {source}")]
    BadTree { id: String, source: TreeError },
}

impl ReadError {
    /// Whether the object is missing or damaged (as opposed to an I/O error
    /// of the store as a whole).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            ReadError::Damaged { .. } | ReadError::BadTree { .. } | ReadError::Store(StoreError::Missing { .. })
        )
    }
}

/// Loads and verifies a tree.
pub fn load_tree(store: &Store, id: &TreeId) -> Result<Tree, ReadError> {
    open_tree(id, &store.read(&BlobRef::tree(id))?)
}

/// Loads and verifies a chunk of known plaintext length.
pub fn load_chunk(store: &Store, id: &ChunkId, len: u32) -> Result<Vec<u8>, ReadError> {
    open_chunk(id, &store.read(&BlobRef::chunk(id))?, len)
}

/// Verifies a tree's stored bytes (decompressed with a bound, rehashed,
/// decoded).
pub fn open_tree(id: &TreeId, frame: &[u8]) -> Result<Tree, ReadError> {
    let plain = codec::decompress_bounded(frame, MAX_TREE_LEN).map_err(|source| ReadError::Damaged {
        kind: "tree",
        id: id.to_hex(),
        source,
    })?;
    let actual = TreeId::of(&plain);
    if actual != *id {
        return Err(ReadError::Damaged {
            kind: "tree",
            id: id.to_hex(),
            source: CodecError::HashMismatch { expected: id.to_hex(), actual: actual.to_hex() },
        });
    }
    Tree::decode(&plain).map_err(|source| ReadError::BadTree { id: id.to_hex(), source })
}

/// Verifies a chunk's stored bytes against its id and plaintext length.
pub fn open_chunk(id: &ChunkId, frame: &[u8], len: u32) -> Result<Vec<u8>, ReadError> {
    if len > MAX_CHUNK_LEN {
        return Err(ReadError::Damaged {
            kind: "chunk",
            id: id.to_hex(),
            source: CodecError::BadLength { declared: len.into(), limit: MAX_CHUNK_LEN.into() },
        });
    }
    codec::open_chunk(id, frame, len.into()).map_err(|source| ReadError::Damaged {
        kind: "chunk",
        id: id.to_hex(),
        source,
    })
}
