//! Pack compaction: the part of garbage collection that gives disk space
//! back once blob rows are gone (store layout 3, crate::pack).
//!
//! GC removes a packed blob by deleting its row; its bytes stay in the pack.
//! After the sweep:
//!
//! * **Dropping a pack** takes three steps: a write transaction marks it
//!   `dropped` (only if no blob row names it), the file is removed, the row
//!   is deleted. A crash between them leaves a `dropped` row, finished by
//!   the next run.
//! * **Unknown files.** A pack file the catalog has no row for at all is
//!   never removed: it may hold the only copy of snapshots an older
//!   `catalog.db` put back does not know (F18), which `rebuild-catalog` can
//!   recover. It is reported (`packs_unknown`) and logged. The store is
//!   listed *before* the rows are read, and a session commits a pack's row
//!   before it creates the file, so a pack being written is never counted.
//! * **Empty packs.** A sealed pack no blob row names is dropped. Rows never
//!   move *into* an existing pack (new copies always go to a new pack), so
//!   an empty pack stays empty.
//! * **Sparse packs.** A sealed pack whose rows use less than half of it is
//!   rewritten: its live blobs are read and verified (decompressed and
//!   rehashed), appended to a new pack recorded as `writing`, the new pack
//!   is sealed and the store synced; then one write transaction points the
//!   rows that still name the old pack at their copies, seals the new pack
//!   and marks the old one `dropped`; only after the commit is the old file
//!   removed. A crash before the commit leaves a `writing` pack the server
//!   removes at start; after it, a `dropped` pack the next run removes. A pack with a
//!   blob recorded as damaged is left alone (scrub's evidence, and repair
//!   replaces it). Readers that located a blob in the old pack just before
//!   the commit look it up again when the file is gone (`Store::read`).

use std::collections::HashSet;

use tracing::{info, warn};

use crate::catalog::{Catalog, CatalogError, PackUsage};
use crate::gc::GcError;
use crate::pack::{PackId, PackWriter, PackedAt};
use crate::reader::{self, ReadError};
use crate::store::{BlobKind, Location, Store, StoreError};
use pulih_core::{ChunkId, TreeId};

/// A pack is rewritten when its live rows use less than this share of it.
const SPARSE_PERCENT: u64 = 50;

/// What compaction did (or, dry, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompactReport {
    /// Pack files removed: empty, orphaned, or rewritten.
    pub packs_removed: u64,
    /// Sparse packs whose live blobs were copied into a new pack.
    pub packs_rewritten: u64,
    /// Live blobs copied.
    pub blobs_moved: u64,
    /// Bytes of pack files given back.
    pub bytes_freed: u64,
    /// Sparse packs left alone because a blob in them is damaged.
    pub packs_skipped_damaged: u64,
    /// Pack files the catalog does not know, left in place (see the module doc).
    #[serde(default)]
    pub packs_unknown: u64,
}

fn store_err(e: StoreError) -> GcError {
    GcError::Read(ReadError::Store(e))
}

/// Whether a pack should be rewritten.
fn sparse(u: &PackUsage) -> bool {
    u.live_blobs > 0 && u.live_bytes * 100 < u.size * SPARSE_PERCENT
}

/// Compacts the store's packs. The caller holds the GC lock.
pub fn compact_packs(store: &Store, cat: &mut Catalog, dry_run: bool) -> Result<CompactReport, GcError> {
    let mut report = CompactReport::default();
    // Listed before the rows are read (see the module doc).
    let files = store.list_packs().map_err(store_err)?;
    let known = cat.pack_ids()?;
    for id in files.iter().filter(|id| !known.contains(id)) {
        report.packs_unknown += 1;
        warn!(
            pack = %id,
            path = %store.pack_path(id).display(),
            "a pack file the catalog does not know is kept: if catalog.db was put back from an older copy, `pulih-controller rebuild-catalog --force` recovers what it holds; otherwise it can be removed by hand"
        );
    }
    let on_disk: HashSet<PackId> = files.into_iter().collect();
    for id in cat.packs_dropped()? {
        // A removal a crash interrupted.
        report.packs_removed += 1;
        if !dry_run {
            report.bytes_freed += std::fs::metadata(store.pack_path(&id)).map_or(0, |m| m.len());
            store.remove_pack(&id).map_err(store_err)?;
            cat.pack_removed(&id)?;
        }
    }
    for u in cat.pack_usage()? {
        if u.live_blobs == 0 {
            report.packs_removed += 1;
            report.bytes_freed += u.size;
            if !dry_run {
                drop_empty(store, cat, &u.id)?;
            }
        } else if sparse(&u) && on_disk.contains(&u.id) {
            if dry_run {
                report.packs_rewritten += 1;
                report.packs_removed += 1;
                report.blobs_moved += u.live_blobs;
                report.bytes_freed += u.size - u.live_bytes;
                continue;
            }
            rewrite(store, cat, &u, &mut report)?;
        }
    }
    if report != CompactReport::default() {
        info!(
            packs_removed = report.packs_removed,
            packs_rewritten = report.packs_rewritten,
            blobs_moved = report.blobs_moved,
            bytes_freed = report.bytes_freed,
            dry_run,
            "packs compacted"
        );
    }
    Ok(report)
}

fn drop_empty(store: &Store, cat: &mut Catalog, id: &PackId) -> Result<(), GcError> {
    let tx = cat.immediate()?;
    let dropped = Catalog::drop_pack_if_unused(&tx, id)?;
    tx.commit().map_err(CatalogError::from)?;
    if dropped {
        store.remove_pack(id).map_err(store_err)?;
        cat.pack_removed(id)?;
    }
    Ok(())
}

fn rewrite(store: &Store, cat: &mut Catalog, u: &PackUsage, report: &mut CompactReport) -> Result<(), GcError> {
    let live = cat.pack_blobs(&u.id)?;
    if live.iter().any(|b| b.damaged) {
        report.packs_skipped_damaged += 1;
        return Ok(());
    }
    // Read and verify everything first: a blob that does not verify stops
    // the rewrite of this pack before anything is written.
    let mut frames = Vec::with_capacity(live.len());
    for b in &live {
        let frame = store.read_at(&b.blob, &Location::Packed(b.at)).map_err(store_err)?;
        let ok = match b.blob.kind {
            BlobKind::Chunk => u32::try_from(b.raw_len)
                .is_ok_and(|len| reader::open_chunk(&ChunkId::from_bytes(b.blob.id), &frame, len).is_ok()),
            BlobKind::Tree => reader::open_tree(&TreeId::from_bytes(b.blob.id), &frame).is_ok(),
        };
        if !ok {
            warn!(pack = %u.id, blob = %b.blob.hex(), kind = b.blob.kind.name(), "pack not compacted: a blob in it does not verify (run scrub)");
            report.packs_skipped_damaged += 1;
            return Ok(());
        }
        frames.push(frame);
    }
    let new = PackId::random().map_err(|source| GcError::Io { path: store.root().to_owned(), source })?;
    cat.pack_begin(&new)?;
    let mut w: PackWriter = store.create_pack(new).map_err(store_err)?;
    let mut moved: Vec<PackedAt> = Vec::with_capacity(live.len());
    for (b, frame) in live.iter().zip(&frames) {
        moved.push(w.append(b.blob, frame).map_err(|e| store_err(e.into()))?);
    }
    let size = w.seal().map_err(|e| store_err(e.into()))?;
    store.sync().map_err(store_err)?;
    let tx = cat.immediate()?;
    let mut n = 0;
    for (b, to) in live.iter().zip(&moved) {
        if Catalog::move_blob(&tx, &b.blob, &u.id, to)? {
            n += 1;
        }
    }
    Catalog::pack_sealed(&tx, &new, size)?;
    let dropped = Catalog::drop_pack_if_unused(&tx, &u.id)?;
    tx.commit().map_err(CatalogError::from)?;
    if dropped {
        store.remove_pack(&u.id).map_err(store_err)?;
        cat.pack_removed(&u.id)?;
        report.packs_removed += 1;
        report.bytes_freed += u.size.saturating_sub(size);
    }
    report.packs_rewritten += 1;
    report.blobs_moved += n;
    Ok(())
}

/// Removes packs a crash left in state `writing`: nothing in them was ever
/// recorded. Only the server calls this, at start, before any session runs.
pub fn remove_unsealed_packs(store: &Store, cat: &mut Catalog) -> Result<usize, GcError> {
    let ids = cat.packs_writing()?;
    for id in &ids {
        store.remove_pack(id).map_err(store_err)?;
        cat.forget_pack(id)?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Locator, StagedBlob};
    use crate::store::BlobRef;
    use std::sync::Arc;

    struct Fx {
        _dir: tempfile::TempDir,
        store: Store,
        cat: Catalog,
    }

    fn fx() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let cat_path = dir.path().join("c.db");
        let cat = Catalog::create(&cat_path, "drc").unwrap();
        let store = Store::create(&dir.path().join("s")).unwrap().with_locator(Arc::new(Locator::new(&cat_path)));
        Fx { _dir: dir, store, cat }
    }

    /// Writes chunks of `data` into one new pack as a session does; returns their refs.
    fn pack_of(f: &mut Fx, data: &[Vec<u8>]) -> (PackId, Vec<BlobRef>) {
        let id = PackId::random().unwrap();
        f.cat.pack_begin(&id).unwrap();
        let mut w = f.store.create_pack(id).unwrap();
        let mut staged = Vec::new();
        for d in data {
            let blob = BlobRef::chunk(&ChunkId::of(d));
            let frame = pulih_core::codec::compress(d, 1);
            let at = w.append(blob, &frame).unwrap();
            staged.push(StagedBlob { blob, raw_len: d.len() as u64, stored_len: frame.len() as u64, at: Some(at) });
        }
        let size = w.seal().unwrap();
        f.store.sync().unwrap();
        let tx = f.cat.transaction().unwrap();
        Catalog::pack_sealed(&tx, &id, size).unwrap();
        Catalog::record_blobs(&tx, 1, &staged).unwrap();
        tx.commit().unwrap();
        (id, staged.iter().map(|s| s.blob).collect())
    }

    fn forget(f: &mut Fx, blobs: &[BlobRef]) {
        let tx = f.cat.transaction().unwrap();
        Catalog::forget_blobs(&tx, blobs).unwrap();
        tx.commit().unwrap();
    }

    fn data(n: u64, len: usize) -> Vec<u8> {
        crate::gc::tests_support::bytes(n, len)
    }

    #[test]
    fn empty_packs_go_sparse_ones_are_rewritten_and_every_live_blob_still_reads() {
        let mut f = fx();
        let a: Vec<Vec<u8>> = (0..4).map(|i| data(i, 20_000)).collect();
        let b: Vec<Vec<u8>> = (10..14).map(|i| data(i, 20_000)).collect();
        let c: Vec<Vec<u8>> = (20..24).map(|i| data(i, 20_000)).collect();
        let (pa, ra) = pack_of(&mut f, &a);
        let (pb, rb) = pack_of(&mut f, &b);
        let (pc, rc) = pack_of(&mut f, &c);
        forget(&mut f, &ra); // pack a: empty
        forget(&mut f, &rb[..3]); // pack b: 1 of 4 live -> sparse
        forget(&mut f, &rc[..1]); // pack c: 3 of 4 live -> kept as is
        let dry = compact_packs(&f.store, &mut f.cat, true).unwrap();
        assert_eq!((dry.packs_removed, dry.packs_rewritten, dry.blobs_moved), (2, 1, 1));
        assert!(f.store.pack_path(&pa).exists(), "a dry run removes nothing");

        let r = compact_packs(&f.store, &mut f.cat, false).unwrap();
        assert_eq!((r.packs_removed, r.packs_rewritten, r.blobs_moved, r.packs_skipped_damaged), (2, 1, 1, 0));
        assert!(r.bytes_freed > 100_000, "{r:?}");
        assert!(!f.store.pack_path(&pa).exists() && !f.store.pack_path(&pb).exists());
        assert!(f.store.pack_path(&pc).exists());
        let ids = f.cat.pack_ids().unwrap();
        assert!(!ids.contains(&pa) && !ids.contains(&pb) && ids.contains(&pc) && ids.len() == 2);
        for (blob, d) in rb[3..].iter().zip(&b[3..]).chain(rc[1..].iter().zip(&c[1..])) {
            let got = crate::reader::load_chunk(&f.store, &ChunkId::from_bytes(blob.id), d.len() as u32).unwrap();
            assert_eq!(&got, d);
        }
        assert!(f.cat.packs_writing().unwrap().is_empty());
        // Nothing left to do.
        assert_eq!(compact_packs(&f.store, &mut f.cat, false).unwrap(), CompactReport::default());
    }

    #[test]
    fn a_pack_with_a_damaged_blob_is_not_rewritten() {
        let mut f = fx();
        let a: Vec<Vec<u8>> = (0..4).map(|i| data(i, 20_000)).collect();
        let (pa, ra) = pack_of(&mut f, &a);
        forget(&mut f, &ra[..3]);
        // The live blob's bytes rot.
        let (path, offset, len) = f.store.blob_bytes(&ra[3]).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(offset + len / 2) as usize] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let r = compact_packs(&f.store, &mut f.cat, false).unwrap();
        assert_eq!((r.packs_rewritten, r.packs_skipped_damaged), (0, 1));
        assert!(f.store.pack_path(&pa).exists());
        assert!(f.cat.packs_writing().unwrap().is_empty(), "no new pack was started");
    }

    /// F1, F2, F3 for packs: a pack still `writing` (crash mid-upload) is
    /// removed at server start with its row, never by GC (it may be a live
    /// upload's); a `dropped` pack whose removal a crash interrupted is
    /// finished by the next GC; a pack file the catalog does not know at
    /// all is kept and reported (an older catalog put back, F18).
    #[test]
    fn f3_unsealed_and_orphaned_packs_are_removed_and_live_ones_kept() {
        let mut f = fx();
        let (sealed, _) = pack_of(&mut f, &[data(1, 1000)]);
        let torn = PackId::random().unwrap();
        f.cat.pack_begin(&torn).unwrap();
        let mut w = f.store.create_pack(torn).unwrap();
        w.append(BlobRef::chunk(&ChunkId::of(b"x")), b"half").unwrap();
        drop(w);
        let unknown = PackId::random().unwrap();
        std::fs::write(f.store.pack_path(&unknown), b"PULIHPK1 not in this catalog").unwrap();
        // Compaction dropped this one; a crash came before the file went.
        let (dropped, blobs) = pack_of(&mut f, &[data(2, 1000)]);
        forget(&mut f, &blobs);
        let tx = f.cat.transaction().unwrap();
        assert!(Catalog::drop_pack_if_unused(&tx, &dropped).unwrap());
        tx.commit().unwrap();

        let r = compact_packs(&f.store, &mut f.cat, false).unwrap();
        assert_eq!((r.packs_removed, r.packs_unknown), (1, 1), "{r:?}");
        assert!(!f.store.pack_path(&dropped).exists() && !f.cat.pack_ids().unwrap().contains(&dropped));
        assert!(f.store.pack_path(&unknown).exists(), "an unknown pack is never removed");
        assert!(f.store.pack_path(&torn).exists() && f.store.pack_path(&sealed).exists());
        // Server start: the `writing` one goes too.
        assert_eq!(remove_unsealed_packs(&f.store, &mut f.cat).unwrap(), 1);
        assert!(!f.store.pack_path(&torn).exists());
        assert!(f.cat.packs_writing().unwrap().is_empty());
        let mut left = f.store.list_packs().unwrap();
        left.sort();
        let mut want = vec![sealed, unknown];
        want.sort();
        assert_eq!(left, want);
    }
}
