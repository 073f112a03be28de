//! Pack files in the catalog (store layout 3, crate::pack): which packs
//! exist, in which state, and where each blob is.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use super::{now_secs, Catalog, CatalogError};
use crate::pack::{PackId, PackedAt};
use crate::store::{BlobKind, BlobRef, Locate, Location};

/// A sealed pack and how much of it is still referenced by blob rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackUsage {
    pub id: PackId,
    pub size: u64,
    pub live_blobs: u64,
    pub live_bytes: u64,
}

/// A blob row of a pack: where it is, and whether scrub found it damaged.
#[derive(Clone, Copy, Debug)]
pub struct PackedBlob {
    pub blob: BlobRef,
    pub raw_len: u64,
    pub at: PackedAt,
    pub damaged: bool,
}

fn location(pack: Option<Vec<u8>>, offset: Option<i64>, len: i64) -> Result<Location, String> {
    match pack {
        None => Ok(Location::Loose),
        Some(p) => {
            let pack = PackId::from_slice(&p).ok_or("a blob row names a pack id of the wrong length")?;
            let offset = offset.ok_or("a packed blob row has no offset")?;
            Ok(Location::Packed(PackedAt { pack, offset: offset as u64, len: len as u64 }))
        }
    }
}

impl Catalog {
    /// Records a pack about to be written (before its file exists).
    pub fn pack_begin(&self, id: &PackId) -> Result<(), CatalogError> {
        self.conn.execute(
            "INSERT INTO packs (id, state, size, created_at) VALUES (?1, 'writing', 0, ?2)",
            params![&id.0[..], now_secs()],
        )?;
        Ok(())
    }

    /// Marks a pack sealed (its file is complete and synced), in the
    /// transaction that records its blobs.
    pub fn pack_sealed(tx: &Transaction<'_>, id: &PackId, size: u64) -> Result<(), CatalogError> {
        tx.prepare_cached("UPDATE packs SET state = 'sealed', size = ?2 WHERE id = ?1")?
            .execute(params![&id.0[..], size as i64])?;
        Ok(())
    }

    /// Packs still being written: at server start, leftovers of a crash.
    pub fn packs_writing(&self) -> Result<Vec<PackId>, CatalogError> {
        self.packs_in("writing")
    }

    /// Every pack the catalog knows, in any state.
    pub fn pack_ids(&self) -> Result<std::collections::HashSet<PackId>, CatalogError> {
        let mut st = self.conn.prepare("SELECT id FROM packs")?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            out.extend(PackId::from_slice(&r?));
        }
        Ok(out)
    }

    /// Marks a sealed pack that no blob row names `dropped` (in the
    /// caller's transaction): its file may be removed once this commits,
    /// then [`Catalog::pack_removed`] forgets it. Returns whether it was
    /// marked.
    pub fn drop_pack_if_unused(tx: &Transaction<'_>, id: &PackId) -> Result<bool, CatalogError> {
        let used = tx.prepare_cached("SELECT 1 FROM blobs WHERE pack = ?1")?.exists([&id.0[..]])?;
        if used {
            return Ok(false);
        }
        Ok(tx
            .prepare_cached("UPDATE packs SET state = 'dropped' WHERE id = ?1 AND state = 'sealed'")?
            .execute([&id.0[..]])?
            > 0)
    }

    /// Forgets a dropped pack whose file is gone.
    pub fn pack_removed(&self, id: &PackId) -> Result<(), CatalogError> {
        self.conn.execute("DELETE FROM packs WHERE id = ?1 AND state = 'dropped'", [&id.0[..]])?;
        Ok(())
    }

    /// Packs marked `dropped` whose removal a crash may have interrupted.
    pub fn packs_dropped(&self) -> Result<Vec<PackId>, CatalogError> {
        self.packs_in("dropped")
    }

    fn packs_in(&self, state: &str) -> Result<Vec<PackId>, CatalogError> {
        let mut st = self.conn.prepare("SELECT id FROM packs WHERE state = ?1")?;
        let rows = st.query_map([state], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.extend(PackId::from_slice(&r?));
        }
        Ok(out)
    }

    /// Forgets a pack whose file is gone or was never sealed: its row and
    /// the rows of blobs located in it.
    pub fn forget_pack(&mut self, id: &PackId) -> Result<u64, CatalogError> {
        let tx = self.immediate()?;
        let n = tx.execute(
            "DELETE FROM agent_blobs WHERE (kind, id) IN (SELECT kind, id FROM blobs WHERE pack = ?1)",
            [&id.0[..]],
        )?;
        tx.execute("DELETE FROM blobs WHERE pack = ?1", [&id.0[..]])?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [&id.0[..]])?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// Sealed packs with the bytes their blob rows still use.
    pub fn pack_usage(&self) -> Result<Vec<PackUsage>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT p.id, p.size, count(b.id), coalesce(sum(b.stored_len), 0)
             FROM packs p LEFT JOIN blobs b ON b.pack = p.id
             WHERE p.state = 'sealed' GROUP BY p.id ORDER BY p.id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (id, size, n, bytes) = r?;
            if let Some(id) = PackId::from_slice(&id) {
                out.push(PackUsage { id, size: size as u64, live_blobs: n as u64, live_bytes: bytes as u64 });
            }
        }
        Ok(out)
    }

    /// The blob rows located in a pack, in pack order.
    pub fn pack_blobs(&self, id: &PackId) -> Result<Vec<PackedBlob>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT b.kind, b.id, b.raw_len, b.pack_offset, b.stored_len,
                    EXISTS (SELECT 1 FROM blob_damage d WHERE d.kind = b.kind AND d.id = b.id AND d.state != 'repaired')
             FROM blobs b WHERE b.pack = ?1 ORDER BY b.pack_offset",
        )?;
        let rows = st.query_map([&id.0[..]], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (kind, blob_id, raw, offset, len, damaged) = r?;
            let (Some(kind), Ok(blob_id)) = (BlobKind::from_code(kind), <[u8; 32]>::try_from(blob_id)) else {
                continue;
            };
            out.push(PackedBlob {
                blob: BlobRef { kind, id: blob_id },
                raw_len: raw as u64,
                at: PackedAt { pack: *id, offset: offset as u64, len: len as u64 },
                damaged,
            });
        }
        Ok(out)
    }

    /// Points a blob's row at its copy in another pack, if the row still
    /// names `from` (in the caller's transaction). Returns whether it moved.
    pub fn move_blob(tx: &Transaction<'_>, blob: &BlobRef, from: &PackId, to: &PackedAt) -> Result<bool, CatalogError> {
        Ok(tx
            .prepare_cached(
                "UPDATE blobs SET pack = ?4, pack_offset = ?5, stored_len = ?6 WHERE kind = ?1 AND id = ?2 AND pack = ?3",
            )?
            .execute(params![blob.kind.code(), &blob.id[..], &from.0[..], &to.pack.0[..], to.offset as i64, to.len as i64])?
            > 0)
    }

    /// Where a durable blob is stored (`None`: no row), in the caller's
    /// transaction.
    pub fn blob_location_in(conn: &Connection, blob: &BlobRef) -> Result<Option<Location>, CatalogError> {
        locate_in(conn, blob).map_err(CatalogError::Invalid)
    }
}

fn locate_in(conn: &Connection, blob: &BlobRef) -> Result<Option<Location>, String> {
    let mut st = conn
        .prepare_cached("SELECT pack, pack_offset, stored_len FROM blobs WHERE kind = ?1 AND id = ?2")
        .map_err(|e| e.to_string())?;
    let row = st
        .query_row(params![blob.kind.code(), &blob.id[..]], |r| {
            Ok((r.get::<_, Option<Vec<u8>>>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, i64>(2)?))
        })
        .optional()
        .map_err(|e| e.to_string())?;
    row.map(|(p, o, l)| location(p, o, l)).transpose()
}

/// Finds blobs for the store ([`Locate`]) with read-only connections to
/// the catalog file, one per thread asking at the same time (restore
/// writer threads read chunks in parallel). Reads see committed rows only:
/// exactly the durable blobs.
#[derive(Debug)]
pub struct Locator {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Locator {
    pub fn new(catalog: &Path) -> Self {
        Self { path: catalog.to_owned(), idle: Mutex::new(Vec::new()) }
    }

    fn connection(&self) -> Result<Connection, String> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let open = || -> rusqlite::Result<Connection> {
            let c = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(std::time::Duration::from_secs(30))?;
            Ok(c)
        };
        open().map_err(|e| format!("opening the catalog {}: {e}", self.path.display()))
    }
}

impl Locate for Locator {
    fn locate(&self, blob: &BlobRef) -> Result<Option<Location>, String> {
        let conn = self.connection()?;
        let res = locate_in(&conn, blob);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        res
    }
}
