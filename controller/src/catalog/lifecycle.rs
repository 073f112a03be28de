//! Catalog side of the storage lifecycle: blob touches (the grace period of
//! garbage collection), damage found by scrub and its repair, snapshot
//! state, forgetting snapshots, and the history of GC and scrub runs.
//!
//! The protocol these rows serve is described in [`crate::gc`] (touches,
//! `gc_runs`) and [`crate::scrub`] (`blob_damage`, `snapshots.state`).

use std::collections::HashSet;

use pulih_core::ChunkId;
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

use super::{now_secs, Catalog, CatalogError};
use crate::store::{BlobKind, BlobRef};

/// A damaged (or once damaged) blob.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DamageRow {
    /// `chunk` or `tree`.
    pub kind: String,
    pub id: String,
    pub found_at: i64,
    /// `damaged` (an agent may resend it), `repaired`, or `lost` (no agent can).
    pub state: String,
    pub repaired_at: Option<i64>,
    pub detail: String,
}

/// One garbage collection run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GcRunRow {
    pub id: i64,
    pub started_at: i64,
    pub cutoff: i64,
    pub finished_at: Option<i64>,
    pub outcome: String,
    pub trees_removed: u64,
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    pub detail: Option<String>,
}

/// One scrub run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScrubRunRow {
    pub id: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: String,
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub damaged_found: u64,
    pub detail: Option<String>,
}

/// Most damaged chunks asked of one agent at a time.
pub const REPAIR_WANTED_CAP: usize = 8192;

fn blob_of(kind: i64, id: Vec<u8>) -> Option<BlobRef> {
    Some(BlobRef { kind: BlobKind::from_code(kind)?, id: id.try_into().ok()? })
}

impl Catalog {
    /// Starts a write transaction that takes SQLite's write lock at once,
    /// so what it reads cannot change under it (GC and commit use this to
    /// exclude each other while they decide what to delete or trust).
    pub fn immediate(&mut self) -> Result<Transaction<'_>, CatalogError> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    // --- touches and garbage collection -------------------------------------

    /// Marks blobs as relied on at `now`; returns those that have no row any
    /// more (garbage collection removed them since they were checked).
    pub fn touch_blobs<'b>(
        tx: &Transaction<'_>,
        blobs: impl IntoIterator<Item = &'b BlobRef>,
        now: i64,
    ) -> Result<Vec<BlobRef>, CatalogError> {
        let mut st =
            tx.prepare_cached("UPDATE blobs SET touched_at = max(touched_at, ?3) WHERE kind = ?1 AND id = ?2")?;
        let mut gone = Vec::new();
        for b in blobs {
            if st.execute(params![b.kind.code(), &b.id[..], now])? == 0 {
                gone.push(*b);
            }
        }
        Ok(gone)
    }

    /// Whether a garbage collection that may have removed blobs relied on
    /// since `since` ran (or is running): its cutoff is later than `since`
    /// and it had not finished before `since`.
    pub fn gc_may_have_swept(tx: &Transaction<'_>, since: i64) -> Result<bool, CatalogError> {
        Ok(tx
            .prepare_cached(
                "SELECT 1 FROM gc_runs WHERE cutoff > ?1 AND (finished_at IS NULL OR finished_at >= ?1) LIMIT 1",
            )?
            .exists([since])?)
    }

    /// Records the start of a GC run.
    pub fn gc_begin(&self, started_at: i64, cutoff: i64) -> Result<i64, CatalogError> {
        self.conn.execute(
            "INSERT INTO gc_runs (started_at, cutoff, outcome) VALUES (?1, ?2, 'running')",
            params![started_at, cutoff],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a GC run.
    pub fn gc_end(
        &self,
        run: i64,
        ok: bool,
        trees: u64,
        chunks: u64,
        bytes: u64,
        detail: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE gc_runs SET finished_at = ?2, outcome = ?3, trees_removed = ?4, chunks_removed = ?5,
                bytes_removed = ?6, detail = ?7 WHERE id = ?1",
            params![
                run,
                now_secs(),
                if ok { "ok" } else { "failed" },
                trees as i64,
                chunks as i64,
                bytes as i64,
                detail
            ],
        )?;
        Ok(())
    }

    /// The latest GC runs, newest first.
    pub fn gc_runs(&self, limit: usize) -> Result<Vec<GcRunRow>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT id, started_at, cutoff, finished_at, outcome, trees_removed, chunks_removed, bytes_removed, detail
             FROM gc_runs ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(GcRunRow {
                id: r.get(0)?,
                started_at: r.get(1)?,
                cutoff: r.get(2)?,
                finished_at: r.get(3)?,
                outcome: r.get(4)?,
                trees_removed: r.get::<_, i64>(5)? as u64,
                chunks_removed: r.get::<_, i64>(6)? as u64,
                bytes_removed: r.get::<_, i64>(7)? as u64,
                detail: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Calls `f(blob, touched_at, stored_len, raw_len)` for every durable blob.
    pub fn each_blob(&self, mut f: impl FnMut(BlobRef, i64, u64, u64)) -> Result<(), CatalogError> {
        let mut st = self.conn.prepare("SELECT kind, id, touched_at, stored_len, raw_len FROM blobs")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            if let Some(b) = blob_of(r.get(0)?, r.get(1)?) {
                f(b, r.get(2)?, r.get::<_, i64>(3)? as u64, r.get::<_, i64>(4)? as u64);
            }
        }
        Ok(())
    }

    /// `(snapshot id, root tree hex)` of every snapshot.
    pub fn snapshot_roots(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let mut st = self.conn.prepare("SELECT id, root_tree FROM snapshots")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Trees relied on at or after `since` (their closures are kept).
    pub fn trees_touched_since(&self, since: i64) -> Result<Vec<[u8; 32]>, CatalogError> {
        Self::trees_touched_since_in(&self.conn, since)
    }

    /// [`Catalog::trees_touched_since`] in the caller's transaction.
    pub fn trees_touched_since_in(conn: &rusqlite::Connection, since: i64) -> Result<Vec<[u8; 32]>, CatalogError> {
        let mut st = conn.prepare_cached("SELECT id FROM blobs WHERE kind = 2 AND touched_at >= ?1")?;
        let rows = st.query_map([since], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(id) = <[u8; 32]>::try_from(r?) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Whether a blob has a row, read in the caller's transaction.
    pub fn blob_row(tx: &Transaction<'_>, blob: &BlobRef) -> Result<bool, CatalogError> {
        Ok(tx
            .prepare_cached("SELECT 1 FROM blobs WHERE kind = ?1 AND id = ?2")?
            .exists(params![blob.kind.code(), &blob.id[..]])?)
    }

    /// Forgets blobs (their files are gone) in the caller's transaction.
    pub fn forget_blobs(tx: &Transaction<'_>, blobs: &[BlobRef]) -> Result<(), CatalogError> {
        for b in blobs {
            tx.prepare_cached("DELETE FROM agent_blobs WHERE kind = ?1 AND id = ?2")?
                .execute(params![b.kind.code(), &b.id[..]])?;
            tx.prepare_cached("DELETE FROM blobs WHERE kind = ?1 AND id = ?2")?
                .execute(params![b.kind.code(), &b.id[..]])?;
        }
        Ok(())
    }

    /// Removes a blob's rows if it was not relied on since `cutoff`, in the
    /// caller's transaction. Returns whether it was removed.
    pub fn sweep_blob(tx: &Transaction<'_>, blob: &BlobRef, cutoff: i64) -> Result<bool, CatalogError> {
        let n = tx
            .prepare_cached("DELETE FROM blobs WHERE kind = ?1 AND id = ?2 AND touched_at < ?3")?
            .execute(params![blob.kind.code(), &blob.id[..], cutoff])?;
        if n == 1 {
            tx.prepare_cached("DELETE FROM agent_blobs WHERE kind = ?1 AND id = ?2")?
                .execute(params![blob.kind.code(), &blob.id[..]])?;
            tx.prepare_cached("DELETE FROM blob_damage WHERE kind = ?1 AND id = ?2")?
                .execute(params![blob.kind.code(), &blob.id[..]])?;
        }
        Ok(n == 1)
    }

    /// Fingerprints of an agent's certificates.
    pub fn agent_certificates(&self, name: &str) -> Result<Vec<String>, CatalogError> {
        let mut st = self
            .conn
            .prepare("SELECT c.fingerprint FROM certificates c JOIN agents a ON a.id = c.agent_id WHERE a.name = ?1")?;
        let rows = st.query_map([name], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // --- snapshots ------------------------------------------------------------

    /// Removes snapshot rows (the blobs they reached stay until GC) and
    /// keeps their ids (see [`Catalog::note_unknown_parent`]).
    pub fn forget_snapshots(&mut self, ids: &[String]) -> Result<usize, CatalogError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for id in ids {
            tx.execute(
                "INSERT OR IGNORE INTO forgotten_snapshots (id, forgotten_at) SELECT id, ?2 FROM snapshots WHERE id = ?1",
                params![id, now_secs()],
            )?;
            n += tx.execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Sets the state of every snapshot: `damaged` for those in `damaged`,
    /// `ok` for the others listed in `checked` (snapshots committed after
    /// the caller looked are left alone).
    pub fn set_snapshot_states(&mut self, checked: &[String], damaged: &HashSet<String>) -> Result<(), CatalogError> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("UPDATE snapshots SET state = ?2 WHERE id = ?1")?;
            for id in checked {
                st.execute(params![id, if damaged.contains(id) { "damaged" } else { "ok" }])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// `(id, root tree hex)` of the snapshots marked damaged.
    pub fn damaged_snapshots(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let mut st = self.conn.prepare("SELECT id, root_tree FROM snapshots WHERE state = 'damaged'")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // --- damage -----------------------------------------------------------------

    /// Records that a blob is damaged (chunks: `damaged`, an agent may resend
    /// it; trees: `lost`, agents cannot be asked for trees). Returns whether
    /// this is news (it was not recorded as damaged already).
    pub fn record_damage(&self, blob: &BlobRef, detail: &str) -> Result<bool, CatalogError> {
        let state = match blob.kind {
            BlobKind::Chunk => "damaged",
            BlobKind::Tree => "lost",
        };
        let before: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM blob_damage WHERE kind = ?1 AND id = ?2",
                params![blob.kind.code(), &blob.id[..]],
                |r| r.get(0),
            )
            .optional()?;
        self.conn.execute(
            "INSERT INTO blob_damage (kind, id, found_at, state, detail) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (kind, id) DO UPDATE SET found_at = excluded.found_at, state = excluded.state,
                repaired_at = NULL, detail = excluded.detail",
            params![blob.kind.code(), &blob.id[..], now_secs(), state, detail],
        )?;
        Ok(!matches!(before.as_deref(), Some("damaged" | "lost")))
    }

    /// Whether a blob is recorded as damaged or lost (not repaired).
    pub fn blob_damaged(&self, blob: &BlobRef) -> Result<bool, CatalogError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM blob_damage WHERE kind = ?1 AND id = ?2 AND state != 'repaired'")?
            .exists(params![blob.kind.code(), &blob.id[..]])?)
    }

    /// Whether an agent owns a blob that is damaged or lost now.
    pub fn agent_owns_damage(&self, agent_id: i64) -> Result<bool, CatalogError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM blob_damage d JOIN agent_blobs a ON a.kind = d.kind AND a.id = d.id
                 WHERE a.agent_id = ?1 AND d.state != 'repaired' LIMIT 1",
            )?
            .exists([agent_id])?)
    }

    /// Every blob currently damaged or lost.
    pub fn damaged_blobs(&self) -> Result<HashSet<BlobRef>, CatalogError> {
        let mut st = self.conn.prepare("SELECT kind, id FROM blob_damage WHERE state != 'repaired'")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = HashSet::new();
        for r in rows {
            let (k, id) = r?;
            out.extend(blob_of(k, id));
        }
        Ok(out)
    }

    /// The damage table, newest first.
    pub fn damage(&self) -> Result<Vec<DamageRow>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT kind, id, found_at, state, repaired_at, detail FROM blob_damage ORDER BY found_at DESC, id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(DamageRow {
                kind: BlobKind::from_code(r.get(0)?).map_or("?", BlobKind::name).to_owned(),
                id: hex::encode(r.get::<_, Vec<u8>>(1)?),
                found_at: r.get(2)?,
                state: r.get(3)?,
                repaired_at: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a blob repaired (its file was replaced by a verified copy).
    pub fn mark_repaired(tx: &Transaction<'_>, blob: &BlobRef) -> Result<(), CatalogError> {
        tx.prepare_cached(
            "UPDATE blob_damage SET state = 'repaired', repaired_at = ?3 WHERE kind = ?1 AND id = ?2 AND state != 'repaired'",
        )?
        .execute(params![blob.kind.code(), &blob.id[..], now_secs()])?;
        Ok(())
    }

    /// Damaged chunks that `agent_id` uploaded once and so may still have:
    /// the agent is asked to resend them on its next contact (self-healing).
    /// At most [`REPAIR_WANTED_CAP`].
    pub fn repair_wanted(&self, agent_id: i64) -> Result<Vec<ChunkId>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT d.id FROM blob_damage d JOIN agent_blobs a ON a.kind = d.kind AND a.id = d.id
             WHERE d.kind = 1 AND d.state = 'damaged' AND a.agent_id = ?1 ORDER BY d.found_at LIMIT ?2",
        )?;
        let rows = st.query_map(params![agent_id, REPAIR_WANTED_CAP as i64], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(id) = <[u8; 32]>::try_from(r?) {
                out.push(ChunkId::from_bytes(id));
            }
        }
        Ok(out)
    }

    // --- scrub runs ------------------------------------------------------------------

    /// Records the start of a scrub run.
    pub fn scrub_begin(&self) -> Result<i64, CatalogError> {
        self.conn.execute("INSERT INTO scrub_runs (started_at, outcome) VALUES (?1, 'running')", [now_secs()])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a scrub run; `outcome` is `ok`, `damage` or `failed`.
    pub fn scrub_end(
        &self,
        run: i64,
        outcome: &str,
        blobs: u64,
        bytes: u64,
        damaged: u64,
        detail: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE scrub_runs SET finished_at = ?2, outcome = ?3, blobs_checked = ?4, bytes_checked = ?5,
                damaged_found = ?6, detail = ?7 WHERE id = ?1",
            params![run, now_secs(), outcome, blobs as i64, bytes as i64, damaged as i64, detail],
        )?;
        Ok(())
    }

    /// The latest scrub runs, newest first.
    pub fn scrub_runs(&self, limit: usize) -> Result<Vec<ScrubRunRow>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT id, started_at, finished_at, outcome, blobs_checked, bytes_checked, damaged_found, detail
             FROM scrub_runs ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(ScrubRunRow {
                id: r.get(0)?,
                started_at: r.get(1)?,
                finished_at: r.get(2)?,
                outcome: r.get(3)?,
                blobs_checked: r.get::<_, i64>(4)? as u64,
                bytes_checked: r.get::<_, i64>(5)? as u64,
                damaged_found: r.get::<_, i64>(6)? as u64,
                detail: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether a blob is really gone: it still has a catalog row but
    /// `present()` says its file is missing, both checked inside a write
    /// transaction. A GC batch holds the write lock while it moves files
    /// away, so under the lock a batch has either committed (row gone) or
    /// not started (file there): scrub never calls a blob GC is removing
    /// "missing".
    pub fn blob_missing_confirmed(
        &mut self,
        blob: &BlobRef,
        present: impl FnOnce() -> bool,
    ) -> Result<bool, CatalogError> {
        let tx = self.immediate()?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM blobs WHERE kind = ?1 AND id = ?2")?
            .exists(params![blob.kind.code(), &blob.id[..]])?;
        let missing = exists && !present();
        tx.commit()?;
        Ok(missing)
    }

    // --- rebuilding a lost catalog (crate::rebuild) ------------------------------

    /// Adds an agent if it is not there; returns its id.
    pub fn restore_agent(&self, name: &str) -> Result<i64, CatalogError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO agents (name, status, created_at) VALUES (?1, 'active', ?2)",
            params![name, now_secs()],
        )?;
        Ok(self.conn.query_row("SELECT id FROM agents WHERE name = ?1", [name], |r| r.get(0))?)
    }

    /// Restores an issued certificate, revoked or not.
    pub fn restore_certificate(
        &self,
        fingerprint: &str,
        agent_id: i64,
        info: &pulih_core::tls::CertInfo,
        issued_at: i64,
        revoked_at: Option<i64>,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO certificates (fingerprint, agent_id, serial, not_before, not_after, issued_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![fingerprint, agent_id, info.serial, info.not_before, info.not_after, issued_at, revoked_at],
        )?;
        Ok(())
    }

    /// Marks revoked every agent whose certificates are all revoked.
    pub fn restore_agent_states(&self) -> Result<usize, CatalogError> {
        Ok(self.conn.execute(
            "UPDATE agents SET status = 'revoked', revoked_at = ?1
             WHERE EXISTS (SELECT 1 FROM certificates c WHERE c.agent_id = agents.id)
               AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.agent_id = agents.id AND c.revoked_at IS NULL)",
            [now_secs()],
        )?)
    }

    /// Restores a blob row found in the store.
    pub fn restore_blob(
        tx: &Transaction<'_>,
        blob: &BlobRef,
        raw_len: u64,
        stored_len: u64,
        stored_at: i64,
        touched_at: i64,
        at: Option<&crate::pack::PackedAt>,
    ) -> Result<bool, CatalogError> {
        let (pack, offset) = at.map_or((None, None), |a| (Some(a.pack.0.to_vec()), Some(a.offset as i64)));
        Ok(tx
            .prepare_cached(
                "INSERT OR IGNORE INTO blobs (kind, id, raw_len, stored_len, stored_at, touched_at, pack, pack_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                blob.kind.code(),
                &blob.id[..],
                raw_len as i64,
                stored_len as i64,
                stored_at,
                touched_at,
                pack,
                offset
            ])?
            > 0)
    }

    /// Restores a sealed pack's row.
    pub fn restore_pack(
        tx: &Transaction<'_>,
        id: &crate::pack::PackId,
        size: u64,
        created_at: i64,
    ) -> Result<(), CatalogError> {
        tx.prepare_cached("INSERT OR IGNORE INTO packs (id, state, size, created_at) VALUES (?1, 'sealed', ?2, ?3)")?
            .execute(params![&id.0[..], size as i64, created_at])?;
        Ok(())
    }

    /// Restores an agent's ownership of a blob that has a row.
    pub fn restore_owner(tx: &Transaction<'_>, agent_id: i64, blob: &BlobRef) -> Result<bool, CatalogError> {
        if !Self::blob_row(tx, blob)? {
            return Ok(false);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO agent_blobs (agent_id, kind, id) VALUES (?1, ?2, ?3)")?
            .execute(params![agent_id, blob.kind.code(), &blob.id[..]])?;
        Ok(true)
    }

    /// A `meta` value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, CatalogError> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// Sets a `meta` value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}
