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

    /// [`Catalog::blob_state`] of many blobs, in one read transaction: the
    /// locks are taken once for the batch (an agent asks about up to 512
    /// chunks at a time) instead of once per blob.
    pub fn blob_states(&self, agent_id: i64, blobs: &[BlobRef]) -> Result<Vec<BlobState>, CatalogError> {
        if blobs.len() < 2 {
            return blobs.iter().map(|b| self.blob_state(agent_id, b)).collect();
        }
        let tx = self.conn.unchecked_transaction()?;
        let states = blobs.iter().map(|b| self.blob_state(agent_id, b)).collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use pulih_core::tls::{CertInfo, Fingerprint};
    use pulih_core::{AgentName, ChunkId};

    fn cert() -> CertInfo {
        CertInfo { common_name: "a".into(), serial: "01".into(), not_before: 0, not_after: i64::MAX / 2 }
    }

    fn agent(cat: &mut Catalog, name: &str) -> i64 {
        let n = AgentName::new(name).unwrap();
        cat.add_token(name, &n, 3600).unwrap();
        cat.complete_enrollment(name, &n, &Fingerprint::of(name.as_bytes()), &cert()).unwrap();
        cat.agents().unwrap().into_iter().find(|a| a.name == name).unwrap().id
    }

    fn record(cat: &mut Catalog, agent_id: i64, blob: BlobRef) {
        let tx = cat.transaction().unwrap();
        Catalog::record_blobs(
            &tx,
            agent_id,
            &[crate::catalog::StagedBlob { blob, raw_len: 1, stored_len: 10, at: None }],
        )
        .unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn states_of_a_batch_are_those_of_single_queries() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let (a, b) = (agent(&mut cat, "a"), agent(&mut cat, "b"));
        let blobs: Vec<BlobRef> = (0..5u8).map(|i| BlobRef::chunk(&ChunkId::of(&[i]))).collect();
        // 0: owned by `a`; 1: stored for `b` only; the rest unknown.
        record(&mut cat, a, blobs[0]);
        record(&mut cat, b, blobs[1]);
        let batch = cat.blob_states(a, &blobs).unwrap();
        let single: Vec<BlobState> = blobs.iter().map(|x| cat.blob_state(a, x).unwrap()).collect();
        assert_eq!(batch, single);
        assert_eq!(batch[0], BlobState { durable: true, owned: true, damaged: false });
        assert_eq!(batch[1], BlobState { durable: true, owned: false, damaged: false });
        assert_eq!(batch[4], BlobState::default());
        assert!(cat.blob_states(a, &[]).unwrap().is_empty());
        // The read transaction has ended: a write goes through.
        record(&mut cat, a, blobs[2]);
        assert!(cat.blob_state(a, &blobs[2]).unwrap().owned);
    }
}
