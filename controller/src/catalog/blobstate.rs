//! What an upload session asks the catalog about one blob, in one query.

use rusqlite::params;

use super::{Catalog, CatalogError};
use crate::store::BlobRef;

/// A blob as an upload session sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobState {
    /// Recorded in `blobs` (written and synced).
    pub durable: bool,
    /// Owned by the asking agent (`agent_blobs`).
    pub owned: bool,
    /// Damaged or lost now (`blob_damage`, not repaired).
    pub damaged: bool,
}

impl Catalog {
    /// [`Catalog::blob_durable`], [`Catalog::agent_has`] and
    /// [`Catalog::blob_damaged`] in one statement: a session asks for every
    /// blob it receives or is asked about, and each autocommit statement
    /// takes and releases SQLite's locks (three per blob were ~6 `fcntl`
    /// calls and a third of the session's catalog time).
    pub fn blob_state(&self, agent_id: i64, blob: &BlobRef) -> Result<BlobState, CatalogError> {
        let mut st = self.conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM blobs WHERE kind = ?2 AND id = ?3),
                    EXISTS (SELECT 1 FROM agent_blobs WHERE agent_id = ?1 AND kind = ?2 AND id = ?3),
                    EXISTS (SELECT 1 FROM blob_damage WHERE kind = ?2 AND id = ?3 AND state != 'repaired')",
        )?;
        Ok(st.query_row(params![agent_id, blob.kind.code(), &blob.id[..]], |r| {
            Ok(BlobState { durable: r.get(0)?, owned: r.get(1)?, damaged: r.get(2)? })
        })?)
    }
}
