//! One agent's upload session: verify on receipt, stage, checkpoint, commit.
//!
//! Everything here is synchronous and is called from `spawn_blocking`; the
//! async server only moves frames. A blob is first checked by a
//! [`Verifier`] (bounded decompression, rehash, tree decoding), which alone
//! makes the [`VerifiedChunk`] and [`VerifiedTree`] that a session stages,
//! so nothing unverified can reach the store. The session holds the blobs verified
//! since its last checkpoint (`received`) and those written but not yet
//! durable (`pending`); a checkpoint syncs the store and records both in the
//! catalog in one transaction, after which the catalog answers for them. So
//! a killed upload loses at most the work since its last checkpoint, and the
//! next attempt resends only that (F11).
//!
//! A checkpoint reached while blobs keep arriving runs on a thread of its
//! own (`syncfs`, then one catalog transaction for the batch), so verifying
//! and writing the next batch goes on meanwhile; at most one checkpoint is
//! in flight, and its blobs stay in `received` until it has recorded them.
//! A commit waits for every earlier checkpoint and makes the rest durable
//! itself before it answers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use pulih_core::codec::{CodecError, Decompressor};
use pulih_core::formats::{CHUNKER_VERSIONS_ACCEPTED, MAX_TREE_LEN};
use pulih_core::protocol::{DatasetReport, ErrorCode};
use pulih_core::snapshot::SnapshotRecord;
use pulih_core::tree::Tree;
use pulih_core::{ChunkId, SnapshotId, TreeId};
use tracing::{debug, error, info, warn};

use crate::catalog::{now_secs, BlobState, Catalog, CatalogError, StagedBlob};
use crate::pack::{PackId, PackWriter, PackedAt};
use crate::store::{BlobRef, Store, StoreError};

/// Default: checkpoint after this many bytes written since the last one.
pub const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Checkpoint after this many blobs verified since the last one.
pub const CHECKPOINT_BLOBS: usize = 20_000;

/// A refusal or failure, with the code sent to the agent.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SessionError {
    pub code: ErrorCode,
    pub message: String,
    /// The store could not sync: the controller must stop (F4).
    pub fatal: bool,
}

impl SessionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), fatal: false }
    }
}

impl From<CatalogError> for SessionError {
    fn from(e: CatalogError) -> Self {
        Self::new(ErrorCode::Storage, format!("catalog error: {e}"))
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        let fatal = matches!(e, StoreError::Sync { .. });
        let message = if e.is_disk_full() { format!("controller disk is full: {e}") } else { e.to_string() };
        Self { code: ErrorCode::Storage, message, fatal }
    }
}

/// What the session needs from the controller.
#[derive(Debug)]
pub struct Backend {
    pub store: Store,
    pub catalog: Mutex<Catalog>,
    /// Checkpoint after this many bytes written since the last one.
    pub checkpoint_bytes: u64,
    /// Snapshot commits and audit row last written to the catalog witness;
    /// sessions committing at once never move it backwards (crate::witness).
    pub witnessed: Mutex<(u64, i64)>,
}

impl Backend {
    /// Writes `head` as the catalog witness unless a newer one was written
    /// (F18). A failure is logged: the snapshot is committed either way,
    /// and the witness then only lags.
    pub fn witness(&self, head: &crate::catalog::CatalogHead) {
        let mut last = self.witnessed.lock().unwrap_or_else(|e| e.into_inner());
        let this = (head.snapshot_commits, head.audit_seq);
        if this < *last {
            return;
        }
        match crate::witness::record(self.store.root(), head) {
            Ok(()) => *last = this,
            Err(e) => warn!(error = %e, "cannot update the catalog witness (rollback detection lags)"),
        }
    }
}

/// Blobs staged since the last checkpoint, and what a checkpoint records.
#[derive(Debug, Default)]
struct Batch {
    pending: Vec<StagedBlob>,
    pending_bytes: u64,
    /// The pack this batch's new blobs are written to (crate::pack); sealed
    /// at its checkpoint, before the sync.
    pack: Option<PackWriter>,
    /// Stored blobs this session relied on since its last checkpoint; their
    /// `touched_at` is written at the checkpoint (see crate::gc).
    touched: HashSet<BlobRef>,
    /// Staged blobs that were already stored, so not written again.
    unwritten: HashSet<BlobRef>,
    /// Damaged blobs replaced by a verified copy since the last checkpoint.
    repairs: Vec<BlobRef>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.touched.is_empty()
    }
}

/// A checkpoint running on its own thread.
#[derive(Debug)]
struct Inflight {
    handle: std::thread::JoinHandle<Result<(), SessionError>>,
    /// Its blobs, dropped from `received` once it recorded them.
    blobs: Vec<BlobRef>,
}

/// A chunk whose content matched its id; only [`Verifier`] makes one.
#[derive(Debug)]
pub struct VerifiedChunk {
    id: ChunkId,
    raw_len: u32,
    data: Vec<u8>,
}

/// A tree whose content matched its id and decoded; only [`Verifier`]
/// makes one.
#[derive(Debug)]
pub struct VerifiedTree {
    id: TreeId,
    raw_len: u32,
    data: Vec<u8>,
    tree: Tree,
}

/// Verification on receipt (F23, F25, F26): every blob is decompressed
/// within its declared and maximum size and rehashed before a session
/// stages it. Kept apart from [`UploadSession`] so the server can run it on
/// a thread of its own, ahead of staging: for small blobs, staging (a
/// catalog query and a file each) and verifying took one core together.
#[derive(Debug, Default)]
pub struct Verifier {
    /// One zstd context for every blob of the session.
    dec: Decompressor,
}

impl Verifier {
    /// Checks a chunk against its id.
    pub fn chunk(&mut self, id: ChunkId, raw_len: u32, data: Vec<u8>) -> Result<VerifiedChunk, SessionError> {
        self.dec.open_chunk(&id, &data, raw_len.into()).map_err(|e| integrity("chunk", &id.to_hex(), e))?;
        Ok(VerifiedChunk { id, raw_len, data })
    }

    /// Checks a tree against its id and decodes it.
    pub fn tree(&mut self, id: TreeId, raw_len: u32, data: Vec<u8>) -> Result<VerifiedTree, SessionError> {
        let plain = self
            .dec
            .decompress_exact(&data, raw_len.into(), MAX_TREE_LEN)
            .map_err(|e| integrity("tree", &id.to_hex(), e))?;
        let actual = TreeId::of(&plain);
        if actual != id {
            return Err(integrity(
                "tree",
                &id.to_hex(),
                CodecError::HashMismatch { expected: id.to_hex(), actual: actual.to_hex() },
            ));
        }
        let tree = Tree::decode(&plain)
            .map_err(|e| SessionError::new(ErrorCode::Integrity, format!("tree {}: {e}", id.to_hex())))?;
        Ok(VerifiedTree { id, raw_len, data, tree })
    }
}

/// Per-connection upload state.
#[derive(Debug)]
pub struct UploadSession {
    backend: Arc<Backend>,
    pub agent_id: i64,
    pub agent: String,
    /// Blobs verified and staged but not yet recorded by a finished
    /// checkpoint (the current batch and the one in flight).
    received: HashSet<BlobRef>,
    batch: Batch,
    inflight: Option<Inflight>,
    /// Bytes physically added to the store (for the catalog).
    stored_new: u64,
    /// Blobs and bytes new to *this agent* (reported to it). Counting what
    /// is new to the store instead would tell an agent whether another
    /// agency already stores a given content (F16).
    bytes_new: u64,
    blobs_new: u64,
    /// When the session first relied on a stored blob since its last
    /// commit (Unix seconds).
    first_touch: Option<i64>,
}

impl UploadSession {
    pub fn new(backend: Arc<Backend>, agent_id: i64, agent: String) -> Self {
        Self {
            backend,
            agent_id,
            agent,
            received: HashSet::new(),
            batch: Batch::default(),
            inflight: None,
            stored_new: 0,
            bytes_new: 0,
            blobs_new: 0,
            first_touch: None,
        }
    }

    /// Notes that the session relies on a stored blob.
    fn rely(&mut self, blob: BlobRef) {
        self.first_touch.get_or_insert_with(now_secs);
        self.batch.touched.insert(blob);
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        // A poisoned lock means another session panicked mid-call; the
        // catalog itself is transactional, so continuing is safe.
        self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self, cat: &Catalog, blob: &BlobRef) -> Result<bool, CatalogError> {
        Ok(self.received.contains(blob) || cat.agent_has(self.agent_id, blob)?)
    }

    /// Durable, owned by this agent, damaged: one catalog query.
    fn state(&self, cat: &Catalog, blob: &BlobRef) -> Result<BlobState, CatalogError> {
        cat.blob_state(self.agent_id, blob)
    }

    /// The chunks of `ids` this agent has not stored (answer to has-chunks).
    /// A chunk recorded as damaged counts as missing, so the agent resends
    /// it and the stored copy is repaired (F15, F22).
    pub fn missing(&mut self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, SessionError> {
        // Chunks received in this session are had; the catalog is asked
        // about the others in one read.
        let (ids, asked): (Vec<ChunkId>, Vec<BlobRef>) =
            ids.iter().map(|id| (*id, BlobRef::chunk(id))).filter(|(_, b)| !self.received.contains(b)).unzip();
        let mut out = Vec::new();
        let mut relied = Vec::new();
        {
            let cat = self.catalog();
            let states = cat.blob_states(self.agent_id, &asked)?;
            for ((id, blob), st) in ids.into_iter().zip(asked).zip(states) {
                let have = st.owned && !st.damaged && {
                    // Never let an agent deduplicate against a file that is
                    // gone (F7, F15): forget it and ask for it again.
                    let present = self.backend.store.present(&blob)?;
                    if !present {
                        warn!(blob = %blob.hex(), "recorded chunk is missing from the store; asking for it again");
                        cat.forget_blob(&blob)?;
                    } else {
                        relied.push(blob);
                    }
                    present
                };
                if !have {
                    out.push(id);
                }
            }
        }
        for b in relied {
            self.rely(b);
        }
        Ok(out)
    }

    /// Records the agent's report; answers with the chunks it should resend
    /// because the DRC copy was found damaged.
    pub fn report(&mut self, datasets: &[DatasetReport]) -> Result<Vec<ChunkId>, SessionError> {
        let mut cat = self.catalog();
        cat.record_report(self.agent_id, datasets)
            .map_err(|e| SessionError::new(ErrorCode::Protocol, e.to_string()))?;
        Ok(cat.repair_wanted(self.agent_id)?)
    }

    /// Stages a chunk that passed verification on receipt.
    pub fn put_chunk(&mut self, chunk: VerifiedChunk) -> Result<(), SessionError> {
        let VerifiedChunk { id, raw_len, data } = chunk;
        self.stage(BlobRef::chunk(&id), raw_len.into(), &data)
    }

    /// Stages a verified tree whose references are all known.
    pub fn put_tree(&mut self, tree: VerifiedTree) -> Result<(), SessionError> {
        let VerifiedTree { id, raw_len, data, tree } = tree;
        let (chunks, trees) = tree.references();
        let mut relied = Vec::new();
        {
            let cat = self.catalog();
            let refs = chunks.iter().map(BlobRef::chunk).chain(trees.iter().map(BlobRef::tree));
            // Check every reference (not only the first): a retry then
            // re-uploads all that is gone in one go.
            let mut missing: Vec<BlobRef> = Vec::new();
            for r in refs {
                if self.received.contains(&r) {
                    continue;
                }
                let st = self.state(&cat, &r)?;
                let absent = if st.damaged {
                    // Asking for it again repairs it (or, for a tree the
                    // agent cannot rebuild, keeps it out of new snapshots).
                    true
                } else if st.owned {
                    // Deduplicated against an earlier upload: make sure it
                    // is still there before trusting it (F15).
                    if self.backend.store.present(&r)? {
                        relied.push(r);
                        false
                    } else {
                        warn!(blob = %r.hex(), kind = r.kind.name(), "recorded blob is missing from the store; forgetting it so it is uploaded again");
                        cat.forget_blob(&r)?;
                        true
                    }
                } else {
                    true
                };
                if absent {
                    missing.push(r);
                }
            }
            if let Some(first) = missing.first() {
                return Err(SessionError::new(
                    ErrorCode::MissingReference,
                    format!(
                        "tree {} references {} blob(s) not stored for this agent, first {} {}",
                        id.short(),
                        missing.len(),
                        first.kind.name(),
                        first.hex()
                    ),
                ));
            }
        }
        for r in relied {
            self.rely(r);
        }
        self.stage(BlobRef::tree(&id), raw_len.into(), &data)
    }

    fn stage(&mut self, blob: BlobRef, raw_len: u64, data: &[u8]) -> Result<(), SessionError> {
        if self.received.contains(&blob) {
            return Ok(());
        }
        let BlobState { durable, owned, damaged } = self.state(&self.catalog(), &blob)?;
        let mut at = None;
        if !durable {
            at = Some(self.write(blob, data)?);
            self.stored_new += data.len() as u64;
        } else if damaged {
            // Self-healing: a verified copy replaces the damaged one (its
            // row points at the new copy from the checkpoint that marks it
            // repaired; the old bytes become garbage of their pack).
            at = Some(self.write(blob, data)?);
            self.batch.repairs.push(blob);
            info!(agent = %self.agent, blob = %blob.hex(), kind = blob.kind.name(), "damaged blob replaced by a verified copy");
        } else {
            self.first_touch.get_or_insert_with(now_secs);
            self.batch.unwritten.insert(blob);
        }
        if !owned {
            self.bytes_new += data.len() as u64;
            self.blobs_new += 1;
        }
        self.batch.pending.push(StagedBlob { blob, raw_len, stored_len: data.len() as u64, at });
        self.received.insert(blob);
        if self.batch.pending_bytes >= self.backend.checkpoint_bytes || self.batch.pending.len() >= CHECKPOINT_BLOBS {
            self.checkpoint_in_background()?;
        }
        Ok(())
    }

    /// Appends a blob to the batch's pack, starting one (recorded as being
    /// written before its file exists) if needed.
    fn write(&mut self, blob: BlobRef, data: &[u8]) -> Result<PackedAt, SessionError> {
        if self.batch.pack.is_none() {
            let id = PackId::random()
                .map_err(|e| SessionError::new(ErrorCode::Storage, format!("cannot name a new pack: {e}")))?;
            self.catalog().pack_begin(&id)?;
            self.batch.pack = Some(self.backend.store.create_pack(id)?);
        }
        let pack = self.batch.pack.as_mut().expect("pack started above");
        let at = pack.append(blob, data).map_err(StoreError::from)?;
        self.batch.pending_bytes += data.len() as u64;
        Ok(at)
    }

    /// Waits for the checkpoint in flight, if any; its blobs are then
    /// answered for by the catalog. Its error (a failed sync, blobs removed
    /// by GC meanwhile) is the session's.
    fn join_inflight(&mut self) -> Result<(), SessionError> {
        let Some(Inflight { handle, blobs }) = self.inflight.take() else { return Ok(()) };
        let res = handle.join().unwrap_or_else(|_| {
            Err(SessionError::new(ErrorCode::Storage, "internal error: checkpoint thread panicked"))
        });
        for b in &blobs {
            self.received.remove(b);
        }
        res
    }

    /// Starts a checkpoint of the current batch on its own thread, after
    /// the previous one finished: receiving and verifying go on during the
    /// `syncfs`. The batch's blobs stay in `received` until it is recorded.
    fn checkpoint_in_background(&mut self) -> Result<(), SessionError> {
        self.join_inflight()?;
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        let blobs: Vec<BlobRef> = batch.pending.iter().map(|p| p.blob).collect();
        let (backend, agent_id, agent) = (self.backend.clone(), self.agent_id, self.agent.clone());
        let handle = std::thread::Builder::new()
            .name("pulih-checkpoint".into())
            .spawn(move || record_batch(&backend, agent_id, &agent, batch))
            .map_err(|e| SessionError::new(ErrorCode::Storage, format!("cannot start a checkpoint thread: {e}")))?;
        self.inflight = Some(Inflight { handle, blobs });
        Ok(())
    }

    /// Syncs the store and records everything staged so far (F1, F2),
    /// with the touches of the blobs relied on (see crate::gc), after any
    /// checkpoint in flight. Fails with a retryable error if garbage
    /// collection removed one of those since it was checked.
    pub fn checkpoint(&mut self) -> Result<(), SessionError> {
        self.join_inflight()?;
        let batch = std::mem::take(&mut self.batch);
        self.received.clear();
        if batch.is_empty() {
            return Ok(());
        }
        record_batch(&self.backend, self.agent_id, &self.agent, batch)
    }

    /// Commits a snapshot whose root tree is stored (atomic: F6).
    pub fn commit(&mut self, record_bytes: &[u8]) -> Result<(SnapshotId, u64, u64), SessionError> {
        let record = SnapshotRecord::decode(record_bytes)
            .map_err(|e| SessionError::new(ErrorCode::Protocol, format!("invalid snapshot record: {e}")))?;
        if record.agent.as_str() != self.agent {
            return Err(SessionError::new(
                ErrorCode::Forbidden,
                format!("agent {} may not commit a snapshot for agent {}", self.agent, record.agent),
            ));
        }
        if !CHUNKER_VERSIONS_ACCEPTED.contains(&record.chunker_version) {
            return Err(SessionError::new(
                ErrorCode::Version,
                format!(
                    "chunker version {} is not supported (this controller accepts {CHUNKER_VERSIONS_ACCEPTED:?}): upgrade the controller",
                    record.chunker_version
                ),
            ));
        }
        let root = BlobRef::tree(&record.root);
        // Revocation also ends sessions opened before it.
        if self.catalog().agent_active(self.agent_id)?.is_none() {
            return Err(SessionError::new(ErrorCode::Forbidden, format!("agent {} has been revoked", self.agent)));
        }
        if !self.known(&self.catalog(), &root)? {
            return Err(SessionError::new(
                ErrorCode::MissingReference,
                format!("root tree {} of the snapshot is not stored for this agent", record.root.short()),
            ));
        }
        if !self.received.contains(&root) {
            self.rely(root);
        }
        self.checkpoint()?;
        let (id, encoded) = record.encode();
        self.backend.store.put_snapshot(&id, &encoded)?;
        let (bytes_new, blobs_new) = (self.bytes_new, self.blobs_new);
        {
            let backend = self.backend.clone();
            let mut cat = backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
            // Never commit a snapshot that reaches a blob scrub found
            // damaged (the agent reused it from its change cache): refuse,
            // so the agent retries without its cache, sends the content
            // again and so repairs it (F15, F22).
            // Only the agent's own blobs can be in its closure (it may
            // reference only what it owns), so without damage among them
            // the walk is skipped.
            let bad = if cat.agent_owns_damage(self.agent_id)? { cat.damaged_blobs()? } else { HashSet::new() };
            if !bad.is_empty() {
                let hit = crate::scrub::damaged_reached(&self.backend.store, &bad, &record.root);
                if let Some(first) = hit.first() {
                    self.first_touch = None;
                    return Err(SessionError::new(
                        ErrorCode::MissingReference,
                        format!(
                            "the snapshot reaches {} blob(s) found damaged at the controller, first {first}; send them again",
                            hit.len()
                        ),
                    ));
                }
            }
            let tx = cat.immediate()?;
            // A GC run whose cutoff is later than what this session first
            // relied on may have removed part of the closure (a writer
            // stalled longer than the grace period, F14): re-check it all
            // under the write lock, and refuse rather than commit a hole.
            if let Some(first) = self.first_touch {
                if Catalog::gc_may_have_swept(&tx, first)? {
                    let missing = crate::gc::verify_closure(&tx, &self.backend.store, &record.root, now_secs())
                        .map_err(|e| SessionError::new(ErrorCode::Storage, e.to_string()))?;
                    if let Some(m) = missing.first() {
                        Catalog::forget_blobs(&tx, &missing)?;
                        tx.commit().map_err(CatalogError::from)?;
                        self.first_touch = None;
                        warn!(agent = %self.agent, missing = missing.len(), "commit refused: garbage collection removed blobs while the upload stalled");
                        return Err(SessionError::new(
                            ErrorCode::MissingReference,
                            format!(
                                "garbage collection removed {} blob(s) this snapshot needs while the upload was stalled, first {} {}; retry",
                                missing.len(),
                                m.kind.name(),
                                m.hex()
                            ),
                        ));
                    }
                }
            }
            // Not refused: the agent's data is safer stored than not.
            let unknown_parent = Catalog::note_unknown_parent(&tx, self.agent_id, &id, &record)?;
            Catalog::insert_snapshot(&tx, self.agent_id, &id, &record, &encoded, self.stored_new)?;
            tx.commit().map_err(CatalogError::from)?;
            if let Some(newest) = unknown_parent {
                error!(
                    agent = %self.agent,
                    dataset = %record.dataset,
                    parent = %record.parent.map(|p| p.to_hex()).unwrap_or_default(),
                    newest_known = %newest,
                    "the last snapshot this agent committed for the dataset is unknown here, while older ones are known: the DRC's data directory looks restored from an older copy (F18), or the agent was pointed at another controller meanwhile; snapshots after the copy are not at this DRC (audited as rollback-detected)"
                );
            }
            let head = cat.head();
            drop(cat);
            match head {
                Ok(head) => self.backend.witness(&head),
                Err(e) => warn!(error = %e, "cannot read the catalog head for its witness"),
            }
        }
        self.first_touch = None;
        info!(agent = %self.agent, dataset = %record.dataset, snapshot = %id.short(), files = record.stats.files, stored_new = self.stored_new, "snapshot committed");
        self.stored_new = 0;
        self.bytes_new = 0;
        self.blobs_new = 0;
        Ok((id, bytes_new, blobs_new))
    }
}

impl Drop for UploadSession {
    /// A checkpoint in flight finishes before the session is gone (its
    /// thread uses the catalog; a server shutting down waits for it).
    fn drop(&mut self) {
        if let Err(e) = self.join_inflight() {
            debug!(agent = %self.agent, error = %e, "checkpoint of an ended session failed");
        }
        // Blobs written since the last checkpoint were never recorded:
        // their pack goes (a crash instead leaves it to the next start).
        if let Some(pack) = self.batch.pack.take() {
            let id = pack.id();
            drop(pack);
            let gone = self
                .backend
                .store
                .remove_pack(&id)
                .map_err(SessionError::from)
                .and_then(|()| self.catalog().forget_pack(&id).map_err(SessionError::from));
            if let Err(e) = gone {
                debug!(agent = %self.agent, pack = %id, error = %e, "unrecorded pack of an ended session not removed");
            }
        }
    }
}

/// Makes a batch durable and records it: `syncfs` if anything was written,
/// then one catalog transaction with the blobs, their ownership and the
/// touches of what the batch relied on.
fn record_batch(backend: &Backend, agent_id: i64, agent: &str, mut batch: Batch) -> Result<(), SessionError> {
    let sealed = match batch.pack.take() {
        Some(pack) => {
            let id = pack.id();
            Some((id, pack.seal().map_err(StoreError::from)?))
        }
        None => None,
    };
    if batch.pending_bytes > 0 {
        backend.store.sync()?;
    }
    let gone = {
        let mut cat = backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let tx = cat.immediate()?;
        // Blobs staged without being written must still exist before
        // their ownership is recorded: touch them first.
        let now = now_secs();
        let gone = Catalog::touch_blobs(&tx, batch.unwritten.iter().chain(&batch.touched), now)?;
        let gone_set: HashSet<BlobRef> = gone.iter().copied().collect();
        let keep: Vec<StagedBlob> = batch.pending.iter().filter(|p| !gone_set.contains(&p.blob)).copied().collect();
        if let Some((id, size)) = sealed {
            Catalog::pack_sealed(&tx, &id, size)?;
        }
        Catalog::record_blobs(&tx, agent_id, &keep)?;
        for r in &batch.repairs {
            Catalog::mark_repaired(&tx, r)?;
        }
        tx.commit().map_err(CatalogError::from)?;
        if !batch.repairs.is_empty() {
            let ok = crate::scrub::refresh_damaged_snapshots(&backend.store, &mut cat)?;
            info!(%agent, repaired = batch.repairs.len(), snapshots_ok_again = ok, "damaged blobs repaired");
        }
        gone
    };
    debug!(%agent, blobs = batch.pending.len(), bytes = batch.pending_bytes, "checkpoint");
    if let Some(first) = gone.first() {
        return Err(SessionError::new(
            ErrorCode::MissingReference,
            format!(
                "{} stored blob(s) this upload relies on were removed by garbage collection meanwhile, first {} {}; retry to send them again",
                gone.len(),
                first.kind.name(),
                first.hex()
            ),
        ));
    }
    Ok(())
}

fn integrity(kind: &str, id: &str, e: CodecError) -> SessionError {
    SessionError::new(ErrorCode::Integrity, format!("{kind} {id} refused: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F4: a failed sync is fatal for the controller (PostgreSQL's lesson:
    /// retrying fsync until it "succeeds" loses data); other store errors,
    /// such as a full disk (F5), fail the upload only.
    #[test]
    fn f4_sync_failure_is_fatal_and_disk_full_is_not() {
        let sync = SessionError::from(StoreError::Sync { path: "/s".into(), source: std::io::Error::other("EIO") });
        assert!(sync.fatal);
        assert_eq!(sync.code, ErrorCode::Storage);
        let full = SessionError::from(StoreError::Io {
            path: "/s".into(),
            source: std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
        });
        assert!(!full.fatal);
        assert!(full.message.contains("disk is full"), "{}", full.message);
        let pack = SessionError::from(StoreError::Pack(crate::pack::PackError::Io {
            path: "/s/packs/ab/ab01".into(),
            source: std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
        }));
        assert!(!pack.fatal);
        assert!(pack.message.contains("disk is full") && pack.message.contains("ab01"), "{}", pack.message);
    }
}

/// Library-level tests of the storage lifecycle through a real session:
/// self-healing (F22) and GC races (F14).
#[cfg(test)]
mod lifecycle_tests {
    use super::*;
    use crate::store::BlobKind;
    use pulih_core::snapshot::SnapshotStats;
    use pulih_core::tls::{CertInfo, Fingerprint};
    use pulih_core::tree::{Entry, EntryName, Node, Segment, Tree};
    use pulih_core::{AgentName, DatasetName};

    struct Fixture {
        _dir: tempfile::TempDir,
        backend: Arc<Backend>,
        cat_path: std::path::PathBuf,
        agent_id: i64,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cat_path = dir.path().join("catalog.db");
        let mut cat = Catalog::create(&cat_path, "drc").unwrap();
        let store = Store::create(&dir.path().join("store"))
            .unwrap()
            .with_locator(Arc::new(crate::catalog::Locator::new(&cat_path)));
        let name = AgentName::new("web").unwrap();
        cat.add_token("h", &name, 3600).unwrap();
        let cert = CertInfo { common_name: "web".into(), serial: "01".into(), not_before: 0, not_after: i64::MAX / 2 };
        cat.complete_enrollment("h", &name, &Fingerprint::of(b"c"), &cert).unwrap();
        let agent_id = cat.agents().unwrap()[0].id;
        let backend = crate::server::open_backend(store, cat, 1 << 20);
        Fixture { _dir: dir, backend, cat_path, agent_id }
    }

    fn session(f: &Fixture) -> UploadSession {
        UploadSession::new(f.backend.clone(), f.agent_id, "web".into())
    }

    fn file(name: &str, chunk: ChunkId, len: u32) -> Entry {
        Entry {
            name: EntryName::new(name).unwrap(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            node: Node::File {
                size: len.into(),
                link_group: None,
                flags: 0,
                segments: vec![Segment::Data { id: chunk, len }],
            },
        }
    }

    fn dir(name: &str, tree: TreeId) -> Entry {
        Entry {
            name: EntryName::new(name).unwrap(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            node: Node::Dir { tree },
        }
    }

    fn put_tree(s: &mut UploadSession, entries: Vec<Entry>) -> TreeId {
        let (id, plain) = Tree::new(entries).unwrap().encode();
        let tree = Verifier::default().tree(id, plain.len() as u32, pulih_core::codec::compress(&plain, 3)).unwrap();
        s.put_tree(tree).unwrap();
        id
    }

    fn put_chunk(s: &mut UploadSession, data: &[u8]) -> ChunkId {
        let id = ChunkId::of(data);
        let chunk = Verifier::default().chunk(id, data.len() as u32, pulih_core::codec::compress(data, 3)).unwrap();
        s.put_chunk(chunk).unwrap();
        id
    }

    fn record(root: TreeId, t: i64) -> Vec<u8> {
        record_with(root, t, pulih_core::formats::CHUNKER_VERSION)
    }

    fn record_with(root: TreeId, t: i64, chunker_version: u16) -> Vec<u8> {
        record_of("www", root, t, chunker_version, None).1
    }

    fn record_of(
        dataset: &str,
        root: TreeId,
        t: i64,
        chunker_version: u16,
        parent: Option<SnapshotId>,
    ) -> (SnapshotId, Vec<u8>) {
        SnapshotRecord {
            agent: AgentName::new("web").unwrap(),
            dataset: DatasetName::new(dataset).unwrap(),
            host: "h".into(),
            paths: vec![],
            started_ns: t,
            finished_ns: t,
            root,
            parent,
            chunker_version,
            stats: SnapshotStats::default(),
            errors_total: 0,
            errors: vec![],
        }
        .encode()
    }

    fn flip(store: &Store, b: &BlobRef) {
        let (p, offset, len) = store.blob_bytes(b).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[(offset + len / 2) as usize] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
    }

    fn state(cat: &Catalog, id: &str) -> String {
        cat.snapshots(None, None).unwrap().into_iter().find(|s| s.id == id).unwrap().state
    }

    /// F22: a flipped byte in a stored chunk is found by scrub, the
    /// snapshot is marked damaged, the owning agent is asked for it, and a
    /// verified copy received by a session repairs it: damaged -> repaired,
    /// snapshot ok again. A damaged tree is lost and its snapshot stays damaged.
    #[test]
    fn f22_scrub_finds_a_flipped_byte_and_a_resent_chunk_repairs_it() {
        let f = fixture();
        let data = crate::gc::tests_support::bytes(7, 100_000);
        let mut s = session(&f);
        let c = put_chunk(&mut s, &data);
        let root = put_tree(&mut s, vec![file("a", c, data.len() as u32)]);
        let (sid, _, _) = s.commit(&record(root, 1)).unwrap();
        let sid = sid.to_hex();
        flip(&f.backend.store, &BlobRef::chunk(&c));

        let mut cat = Catalog::open(&f.cat_path).unwrap();
        let r = crate::scrub::scrub(&f.backend.store, &mut cat, None, &|| false).unwrap();
        assert_eq!(r.damage.len(), 1, "{r:?}");
        assert_eq!((r.damage[0].id.as_str(), r.damage[0].state), (c.to_hex().as_str(), "damaged"));
        assert_eq!(r.damage[0].snapshots, vec![sid.clone()]);
        assert_eq!(state(&cat, &sid), "damaged");
        assert_eq!(cat.repair_wanted(f.agent_id).unwrap(), vec![c]);

        // The agent's next contact: the chunk counts as missing; resending repairs it.
        let mut s = session(&f);
        assert_eq!(s.missing(&[c]).unwrap(), vec![c]);
        put_chunk(&mut s, &data);
        s.checkpoint().unwrap();
        assert!(crate::reader::load_chunk(&f.backend.store, &c, data.len() as u32).is_ok());
        let d = cat.damage().unwrap();
        assert_eq!((d[0].state.as_str(), d[0].repaired_at.is_some()), ("repaired", true));
        assert_eq!(state(&cat, &sid), "ok");
        assert!(cat.repair_wanted(f.agent_id).unwrap().is_empty());
        let r = crate::scrub::scrub(&f.backend.store, &mut cat, None, &|| false).unwrap();
        assert!(r.damage.is_empty(), "{r:?}");

        // A damaged tree cannot be asked for: lost, snapshot stays damaged.
        flip(&f.backend.store, &BlobRef::tree(&root));
        let r = crate::scrub::scrub(&f.backend.store, &mut cat, None, &|| false).unwrap();
        assert_eq!((r.damage[0].kind, r.damage[0].state), ("tree", "lost"));
        assert_eq!(r.damaged_snapshots, vec![sid.clone()]);
        assert!(cat.repair_wanted(f.agent_id).unwrap().is_empty());
        assert_eq!(crate::scrub::refresh_damaged_snapshots(&f.backend.store, &mut cat).unwrap(), 0);
        assert_eq!(state(&cat, &sid), "damaged");
    }

    /// F14: a writer that stalled longer than the grace period while GC
    /// removed part of its snapshot's closure cannot commit; the blobs are
    /// forgotten so the retry sends them again.
    #[test]
    fn f14_stalled_writer_cannot_commit_after_gc_removed_its_blobs() {
        let f = fixture();
        let mut s = session(&f);
        let c = put_chunk(&mut s, b"deep chunk content");
        let sub = put_tree(&mut s, vec![file("x", c, 18)]);
        s.checkpoint().unwrap();
        let root = put_tree(&mut s, vec![dir("sub", sub)]);
        s.checkpoint().unwrap();
        // The writer stalls for a long time; a GC run (cutoff later than
        // what the writer relied on) removes the deep chunk meanwhile.
        let long_ago = now_secs() - 10 * 86_400;
        s.first_touch = Some(long_ago);
        {
            let cat = Catalog::open(&f.cat_path).unwrap();
            let run = cat.gc_begin(now_secs(), now_secs() - 3600).unwrap();
            let mut cat = cat;
            let tx = cat.transaction().unwrap();
            Catalog::forget_blobs(&tx, &[BlobRef::chunk(&c)]).unwrap();
            tx.commit().unwrap();
            // Its bytes stay in the pack until compaction; without a row
            // it is gone for every reader.
            cat.gc_end(run, true, 0, 1, 0, None).unwrap();
        }
        let err = s.commit(&record(root, 2)).unwrap_err();
        assert_eq!(err.code, ErrorCode::MissingReference, "{err}");
        assert!(err.message.contains("garbage collection"), "{err}");
        let cat = Catalog::open(&f.cat_path).unwrap();
        assert!(cat.snapshots(None, None).unwrap().is_empty());

        // Without an overlapping GC the same shape commits.
        let mut s = session(&f);
        let c = put_chunk(&mut s, b"deep chunk content");
        assert_eq!(c.to_hex(), ChunkId::of(b"deep chunk content").to_hex());
        put_tree(&mut s, vec![file("x", c, 18)]);
        let root = put_tree(&mut s, vec![dir("sub", sub)]);
        s.commit(&record(root, 3)).unwrap();
        assert_eq!(cat.snapshots(None, None).unwrap().len(), 1);
        let _ = BlobKind::Chunk;
    }

    /// A snapshot record from an agent with an unknown chunker version is
    /// refused with a message naming what is accepted, and the blobs already
    /// sent stay; older agents' version 1 and this version commit.
    #[test]
    fn unknown_chunker_versions_are_refused_and_known_ones_commit() {
        let f = fixture();
        let mut s = session(&f);
        let c = put_chunk(&mut s, b"chunk of a future agent");
        let root = put_tree(&mut s, vec![file("x", c, 23)]);
        let err = s.commit(&record_with(root, 1, 99)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Version, "{err}");
        assert!(err.message.contains("chunker version 99") && err.message.contains("[1, 2]"), "{err}");
        let cat = Catalog::open(&f.cat_path).unwrap();
        assert!(cat.snapshots(None, None).unwrap().is_empty());
        // Still staged in the session: the next commit needs nothing again.
        assert!(s.received.contains(&BlobRef::chunk(&c)));
        for (t, v) in [(2, 1), (3, pulih_core::formats::CHUNKER_VERSION)] {
            s.commit(&record_with(root, t, v)).unwrap();
        }
        assert_eq!(cat.snapshots(None, None).unwrap().len(), 2);
    }

    /// F18 (whole data directory put back): a parent the catalog does not
    /// know is audited only when the catalog knows older snapshots of the
    /// dataset; the first snapshot at a controller (an agent moved from
    /// another one) and a parent that was forgotten are no sign.
    #[test]
    fn f18_unknown_parent_is_audited_only_beside_older_snapshots_of_the_dataset() {
        let f = fixture();
        let mut s = session(&f);
        let c = put_chunk(&mut s, b"parent check");
        let root = put_tree(&mut s, vec![file("x", c, 12)]);
        let v = pulih_core::formats::CHUNKER_VERSION;
        let elsewhere = record_of("www", root, 1000, v, None).0;
        let rows = |cat: &Catalog| {
            cat.audit_rows(0, 1000).unwrap().into_iter().filter(|r| r.action == "rollback-detected").count()
        };
        let (a, bytes) = record_of("www", root, 1, v, Some(elsewhere));
        assert_eq!(s.commit(&bytes).unwrap().0, a);
        let cat = Catalog::open(&f.cat_path).unwrap();
        assert_eq!(rows(&cat), 0, "first snapshot of the dataset here");
        let (b, bytes) = record_of("www", root, 2, v, Some(a));
        s.commit(&bytes).unwrap();
        assert_eq!(rows(&cat), 0, "known parent");
        let (_, bytes) = record_of("www", root, 3, v, Some(elsewhere));
        s.commit(&bytes).unwrap();
        assert_eq!(rows(&cat), 1, "unknown parent beside older snapshots");
        let row = cat.audit_rows(0, 1000).unwrap().into_iter().find(|r| r.action == "rollback-detected").unwrap();
        assert!(row.detail.contains(&elsewhere.to_hex()) && row.detail.contains(&b.to_hex()), "{row:?}");
        assert_eq!(row.target, "web/www");
        // The same commit again (its answer was lost): no second row.
        let (_, bytes) = record_of("www", root, 5, v, Some(elsewhere));
        s.commit(&bytes).unwrap();
        assert_eq!(rows(&cat), 1, "one row per unknown parent");
        // Another dataset of the same agent without snapshots here: no sign,
        // although the agent has snapshots of `www`.
        let (_, bytes) = record_of("db", root, 6, v, Some(elsewhere));
        s.commit(&bytes).unwrap();
        assert_eq!(rows(&cat), 1, "first snapshot of another dataset");
        Catalog::open(&f.cat_path).unwrap().forget_snapshots(&[b.to_hex()]).unwrap();
        let (_, bytes) = record_of("www", root, 4, v, Some(b));
        s.commit(&bytes).unwrap();
        assert_eq!(rows(&cat), 1, "a forgotten parent is no sign");
        assert!(cat.audit_verify().unwrap().ok);
    }
}
