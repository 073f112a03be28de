//! Rebuilding a lost `catalog.db` from what the data directory still holds
//! (F7).
//!
//! * **Snapshots** come from `store/snapshots/<id>`: each record is decoded
//!   and re-encoded, and kept only if its id is the hash of the file (a
//!   renamed or edited record is skipped and reported, F31).
//! * **Blobs** come from the index of every sealed pack in `store/packs`
//!   (a pack without a valid index was never sealed, so nothing in it was
//!   ever durable: skipped and reported) and from the loose files of
//!   layout 2 in `store/chunks` and `store/trees`. Every blob is
//!   decompressed (bounded) and rehashed; a 0-byte file is a torn write and
//!   skipped (F1); a blob whose content does not match its id is recorded
//!   and marked damaged, so scrub and self-healing treat it like any damage.
//!   Rows get `touched_at` = now: nothing is garbage collected for one grace
//!   period, so uploads that were in progress can resume.
//! * **Ownership** (`agent_blobs`): every blob a snapshot of an agent
//!   reaches is that agent's. Blobs no snapshot reaches (checkpoints of an
//!   upload that never committed) have no owner: agents send them again.
//! * **Agents and certificates** come from `pki/issued/<fingerprint>.pem`
//!   (written at enrollment before the catalog row) and the revocation
//!   markers `pki/revoked/<fingerprint>`. Honest limits: certificates issued
//!   by a controller older than this feature have no file and are NOT
//!   restored (those agents must enroll again: they are refused, never let
//!   in by guess); revocations made before markers existed are lost, so the
//!   report lists every certificate restored as active for the operator to
//!   review. Enrollment tokens, `bytes_new` of snapshots, the datasets'
//!   reported RPO/schedule (agents report them again), the damage history
//!   and GC/scrub history are not recoverable.
//!
//! An existing catalog is never overwritten: with `--force` it is moved
//! aside (`catalog.db.replaced-<unix time>`). Rebuild refuses to run while
//! `serve` holds the data directory.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pulih_core::codec;
use pulih_core::formats::{MAX_CHUNK_LEN, MAX_TREE_LEN};
use pulih_core::snapshot::SnapshotRecord;
use pulih_core::tls::{self, Fingerprint};
use pulih_core::{AgentName, ChunkId, TreeId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tracing::warn;

use crate::catalog::{now_secs, Catalog};
use crate::datadir::DataDir;
use crate::pki;
use crate::reader;
use crate::store::{BlobKind, BlobRef, Store};

/// What a rebuild restored.
#[derive(Debug, Default, serde::Serialize)]
pub struct RebuildReport {
    /// Where the previous catalog was moved.
    pub moved_aside: Option<PathBuf>,
    pub agents: u64,
    pub certificates_active: Vec<String>,
    pub certificates_revoked: u64,
    pub snapshots: u64,
    pub trees: u64,
    pub chunks: u64,
    /// Blob files whose content does not match their name (recorded damaged).
    pub damaged: Vec<String>,
    /// Snapshot records or certificate files skipped, with why.
    pub skipped: Vec<String>,
    /// Blobs no snapshot reaches (no owner).
    pub unowned: u64,
}

fn hex_name(p: &Path) -> Option<[u8; 32]> {
    let n = p.file_name()?.to_str()?;
    hex::decode(n).ok()?.try_into().ok()
}

/// Rebuilds the catalog of `dd`.
pub fn rebuild(dd: &DataDir, force: bool) -> Result<RebuildReport> {
    let cfg = dd.config()?;
    let _serve = dd.lock_for_serving().context("stop `pulih-controller serve` before rebuilding its catalog")?;
    let _gc = dd.lock_for_gc()?;
    let mut report = RebuildReport::default();
    let path = dd.catalog_path();
    if path.exists() {
        if !force {
            bail!("{} exists; refusing to overwrite it (use --force to move it aside and rebuild)", path.display());
        }
        let aside = dd.root.join(format!("catalog.db.replaced-{}", now_secs()));
        fs::rename(&path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
        for ext in ["-wal", "-shm"] {
            let side = dd.root.join(format!("catalog.db{ext}"));
            if side.exists() {
                fs::rename(&side, dd.root.join(format!("{}{ext}", aside.display())))?;
            }
        }
        report.moved_aside = Some(aside);
    }
    let store = dd.store()?;
    let mut cat = Catalog::create(&path, &cfg.controller.name).context("creating the new catalog")?;
    cat.set_meta("rebuilt_at", &now_secs().to_string())?;

    restore_certificates(dd, &cat, &mut report)?;
    let snaps = restore_snapshots(&store, &mut cat, &mut report)?;
    restore_blobs(&store, &mut cat, &mut report)?;
    restore_owners(&store, &mut cat, &snaps, &mut report)?;
    cat.restore_agent_states()?;
    report.agents = cat.agents()?.len() as u64;
    // The rebuilt catalog is the data directory's catalog from now on;
    // written while `serve` is still locked out (F18).
    crate::witness::record_catalog(&cat, &dd.store_path())?;
    Ok(report)
}

fn restore_certificates(dd: &DataDir, cat: &Catalog, report: &mut RebuildReport) -> Result<()> {
    let paths = dd.pki();
    let dir = pki::issued_dir(&paths);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files {
        let Some(name) = f.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pem")) else {
            continue;
        };
        let der = match CertificateDer::from_pem_file(&f) {
            Ok(d) => d,
            Err(e) => {
                report.skipped.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let fp = Fingerprint::of(&der).to_string();
        if fp != name {
            report.skipped.push(format!("{}: content has fingerprint {fp}, not its name", f.display()));
            continue;
        }
        let info = match tls::cert_info(&der) {
            Ok(i) => i,
            Err(e) => {
                report.skipped.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        if AgentName::new(&info.common_name).is_err() {
            report.skipped.push(format!("{}: {:?} is not an agent name", f.display(), info.common_name));
            continue;
        }
        let issued_at = fs::metadata(&f)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        let revoked = pki::revoked_dir(&paths).join(&fp).exists().then(now_secs);
        let agent = cat.restore_agent(&info.common_name)?;
        cat.restore_certificate(&fp, agent, &info, issued_at, revoked)?;
        if revoked.is_some() {
            report.certificates_revoked += 1;
        } else {
            report.certificates_active.push(format!("{} {fp}", info.common_name));
        }
    }
    Ok(())
}

fn restore_snapshots(store: &Store, cat: &mut Catalog, report: &mut RebuildReport) -> Result<Vec<(i64, TreeId)>> {
    let dir = store.root().join("snapshots");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Some(id) = hex_name(&f) else { continue };
        let bytes = fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let record = match SnapshotRecord::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                report.skipped.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let (sid, enc) = record.encode();
        if sid.as_bytes() != &id || enc != bytes {
            report.skipped.push(format!("{}: the record does not hash to its name", f.display()));
            continue;
        }
        let agent = cat.restore_agent(record.agent.as_str())?;
        let tx = cat.transaction()?;
        Catalog::insert_snapshot(&tx, agent, &sid, &record, &enc, 0)?;
        tx.commit()?;
        report.snapshots += 1;
        out.push((agent, record.root));
    }
    Ok(out)
}

/// Verifies a stored frame against its id: (good, plaintext length).
fn check_frame(blob: &BlobRef, frame: &[u8]) -> (bool, u64) {
    let limit = if blob.kind == BlobKind::Tree { MAX_TREE_LEN } else { MAX_CHUNK_LEN };
    let plain = codec::decompress_bounded(frame, limit).ok();
    let good = plain.as_ref().is_some_and(|pl| match blob.kind {
        BlobKind::Tree => TreeId::of(pl).as_bytes() == &blob.id,
        BlobKind::Chunk => ChunkId::of(pl).as_bytes() == &blob.id,
    });
    let raw = plain.as_ref().map_or_else(|| codec::frame_content_size(frame).unwrap_or(0), |p| p.len() as u64);
    (good, raw)
}

fn mtime_secs(p: &Path, default: i64) -> i64 {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(default, |d| d.as_secs() as i64)
}

fn restore_blobs(store: &Store, cat: &mut Catalog, report: &mut RebuildReport) -> Result<()> {
    let now = now_secs();
    let mut damaged: Vec<BlobRef> = Vec::new();
    let count = |report: &mut RebuildReport, kind| match kind {
        BlobKind::Tree => report.trees += 1,
        BlobKind::Chunk => report.chunks += 1,
    };
    // Packs (layout 3): a sealed pack's index says what it holds; a pack
    // without a valid index was never sealed, so nothing in it was ever
    // recorded durable (F1, F2).
    for id in store.list_packs()? {
        let path = store.pack_path(&id);
        let entries = match crate::pack::read_index(&path) {
            Ok(e) => e,
            Err(e) => {
                report.skipped.push(format!("pack {id}: {e}"));
                continue;
            }
        };
        let size = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
        let created = mtime_secs(&path, now);
        let tx = cat.transaction()?;
        Catalog::restore_pack(&tx, &id, size, created)?;
        for e in entries {
            let at = crate::pack::PackedAt { pack: id, offset: e.offset, len: e.len.into() };
            let frame = store.read_at(&e.blob, &crate::store::Location::Packed(at))?;
            let (good, raw) = check_frame(&e.blob, &frame);
            if Catalog::restore_blob(&tx, &e.blob, raw, frame.len() as u64, created, now, Some(&at))? {
                if !good {
                    damaged.push(e.blob);
                }
                count(report, e.blob.kind);
            }
        }
        tx.commit()?;
    }
    // Loose blobs of layout 2.
    for kind in [BlobKind::Tree, BlobKind::Chunk] {
        let top = store.root().join(if kind == BlobKind::Tree { "trees" } else { "chunks" });
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else { continue };
            let mut batch = Vec::new();
            for e in entries {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else if let Some(id) = hex_name(&p) {
                    batch.push((id, p));
                }
            }
            let tx = cat.transaction()?;
            for (id, p) in batch {
                let blob = BlobRef { kind, id };
                let frame = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                if frame.is_empty() {
                    continue; // torn write (F1): absent
                }
                let (good, raw) = check_frame(&blob, &frame);
                if Catalog::restore_blob(&tx, &blob, raw, frame.len() as u64, mtime_secs(&p, now), now, None)? {
                    if !good {
                        damaged.push(blob);
                    }
                    count(report, kind);
                }
            }
            tx.commit()?;
        }
    }
    for blob in damaged {
        report.damaged.push(format!("{} {}", blob.kind.name(), blob.hex()));
        cat.record_damage(&blob, "content does not match its name (found by rebuild-catalog)")?;
    }
    Ok(())
}

fn restore_owners(store: &Store, cat: &mut Catalog, snaps: &[(i64, TreeId)], report: &mut RebuildReport) -> Result<()> {
    let mut owned: HashSet<BlobRef> = HashSet::new();
    let mut done: HashSet<(i64, TreeId)> = HashSet::new();
    for (agent, root) in snaps {
        let tx = cat.transaction()?;
        let mut stack = vec![*root];
        while let Some(t) = stack.pop() {
            if !done.insert((*agent, t)) {
                continue;
            }
            let tb = BlobRef::tree(&t);
            if Catalog::restore_owner(&tx, *agent, &tb)? {
                owned.insert(tb);
            }
            match reader::load_tree(store, &t) {
                Ok(tree) => {
                    let (chunks, trees) = tree.references();
                    for c in chunks {
                        let cb = BlobRef::chunk(&c);
                        if Catalog::restore_owner(&tx, *agent, &cb)? {
                            owned.insert(cb);
                        }
                    }
                    stack.extend(trees);
                }
                Err(e) => {
                    warn!(tree = %t.to_hex(), error = %e, "tree unreadable during rebuild; its snapshots will show as damaged")
                }
            }
        }
        tx.commit()?;
    }
    report.unowned = (report.trees + report.chunks).saturating_sub(owned.len() as u64);
    Ok(())
}
