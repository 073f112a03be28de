//! The controller's side of the standby role: hands queued jobs to the agent
//! of an authenticated session and serves the blobs of a restore job.
//!
//! Security: a standby agent may read only what its current job needs. When
//! a restore job is handed out, the snapshot's root tree becomes readable;
//! each tree served makes its own subtrees and chunks readable (a verify
//! job re-reads the copy on the agent's disk: its trees only, no chunk). So the
//! readable set is exactly the part of the job's snapshot the agent reached
//! by walking it (never more than the snapshot), and anything else (another
//! agency's chunk, a tree of another snapshot, any blob without a job) is
//! refused with `Forbidden`, logged and audited, and the connection closed.
//! Jobs are queued by the failover engine ([`crate::failover`]) in the
//! catalog, so a local command and `serve` share the queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pulih_core::codec;
use pulih_core::formats::MAX_TREE_LEN;
use pulih_core::protocol::{ErrorCode, JobSpec, Message};
use pulih_core::tree::{Node, Segment, Tree};
use pulih_core::{ChunkId, TreeId};
use tracing::{info, warn};

use crate::catalog::NewAudit;
use crate::session::{Backend, SessionError};
use crate::store::BlobRef;

/// Most chunks one `FetchChunks` may ask for (answers are sent in parts).
pub const MAX_FETCH_CHUNKS: usize = 64;

/// The job a session is running and what it may read.
struct Current {
    id: i64,
    trees: HashSet<TreeId>,
    chunks: HashMap<ChunkId, u32>,
    /// A restore job reads chunks; a verify job only trees.
    reads_chunks: bool,
}

/// Standby state of one agent connection.
pub struct JobSession {
    backend: Arc<Backend>,
    agent: String,
    current: Option<Current>,
}

impl JobSession {
    pub fn new(backend: Arc<Backend>, agent: String) -> Self {
        Self { backend, agent, current: None }
    }

    fn refuse(&self, what: String) -> SessionError {
        warn!(agent = %self.agent, %what, "standby fetch refused: not part of this agent's current job");
        let entry = NewAudit::new(
            &format!("agent:{}", self.agent),
            "standby-fetch-refused",
            &self.agent,
            serde_json::json!({ "blob": what, "job": self.current.as_ref().map(|c| c.id) }),
        );
        let outcome: Result<(), String> = Err("refused".into());
        if let Err(e) = self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner()).audit(&entry, &outcome) {
            warn!(error = %e, "cannot audit a refused standby fetch");
        }
        SessionError::new(
            ErrorCode::Forbidden,
            format!("{what} is not part of a job of agent {}; refused and logged", self.agent),
        )
    }

    /// `JobPoll`: the oldest queued job of this agent, or `JobNone`.
    pub fn poll(&mut self) -> Result<Message, SessionError> {
        if let Some(c) = &self.current {
            return Err(SessionError::new(ErrorCode::Protocol, format!("job {} is still running", c.id)));
        }
        let cat = self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let Some(job) = cat.take_job(&self.agent)? else { return Ok(Message::JobNone) };
        let spec = match job.spec.to_spec() {
            Ok(s) => s,
            Err(e) => {
                cat.abandon_job(job.id, &e.to_string())?;
                return Ok(Message::JobNone);
            }
        };
        let reads_chunks = matches!(spec, JobSpec::Restore { .. });
        let mut cur = Current { id: job.id, trees: HashSet::new(), chunks: HashMap::new(), reads_chunks };
        if let JobSpec::Restore { root, .. } | JobSpec::Verify { root, .. } = &spec {
            cur.trees.insert(*root);
        }
        info!(agent = %self.agent, job = job.id, kind = spec.kind(), "standby job handed out");
        self.current = Some(cur);
        Ok(Message::JobOffer { id: job.id as u64, spec })
    }

    /// `FetchTree`: a tree of the current restore job.
    pub fn fetch_tree(&mut self, id: TreeId) -> Result<Message, SessionError> {
        if !self.current.as_ref().is_some_and(|c| c.trees.contains(&id)) {
            return Err(self.refuse(format!("tree {id}")));
        }
        let frame = self.backend.store.read(&BlobRef::tree(&id))?;
        let damaged =
            |why: String| SessionError::new(ErrorCode::Integrity, format!("tree {id} is damaged at the DRC: {why}"));
        let plain = codec::decompress_bounded(&frame, MAX_TREE_LEN).map_err(|e| damaged(e.to_string()))?;
        if TreeId::of(&plain) != id {
            return Err(damaged("content does not match its id".into()));
        }
        let tree = Tree::decode(&plain).map_err(|e| damaged(e.to_string()))?;
        let cur = self.current.as_mut().expect("checked above");
        for e in tree.entries() {
            match &e.node {
                Node::Dir { tree } => {
                    cur.trees.insert(*tree);
                }
                Node::File { segments, .. } if cur.reads_chunks => {
                    for s in segments {
                        if let Segment::Data { id, len } = s {
                            cur.chunks.insert(*id, *len);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Message::TreeData { id, raw_len: plain.len() as u32, data: frame })
    }

    /// `FetchChunks`: chunks of the current restore job, in order.
    pub fn fetch_chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<Message>, SessionError> {
        if ids.len() > MAX_FETCH_CHUNKS {
            return Err(SessionError::new(
                ErrorCode::Protocol,
                format!("{} chunks asked at once; at most {MAX_FETCH_CHUNKS}", ids.len()),
            ));
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(len) = self.current.as_ref().and_then(|c| c.chunks.get(id).copied()) else {
                return Err(self.refuse(format!("chunk {id}")));
            };
            let data = self.backend.store.read(&BlobRef::chunk(id))?;
            out.push(Message::ChunkData { id: *id, raw_len: len, data });
        }
        Ok(out)
    }

    /// `JobDone`: records the outcome of the current job.
    pub fn done(&mut self, id: u64, ok: bool, message: &str, detail: &str) -> Result<Message, SessionError> {
        let Some(cur) = self.current.take() else {
            return Err(SessionError::new(ErrorCode::Protocol, "job-done without a running job"));
        };
        if cur.id as u64 != id {
            return Err(SessionError::new(ErrorCode::Protocol, format!("job-done for job {id}, running {}", cur.id)));
        }
        let detail: Option<serde_json::Value> = serde_json::from_str(detail).ok();
        let entry = NewAudit::new(
            &format!("agent:{}", self.agent),
            "standby-job-done",
            &cur.id.to_string(),
            serde_json::json!({ "ok": ok, "message": message, "detail": detail }),
        );
        let mut cat = self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
        cat.audited(&entry, |c| c.finish_job(&self.agent, cur.id, ok, message, detail.as_ref()))?;
        info!(agent = %self.agent, job = cur.id, ok, %message, "standby job finished");
        Ok(Message::JobAck)
    }
}

impl Drop for JobSession {
    fn drop(&mut self) {
        if let Some(cur) = self.current.take() {
            let cat = self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
            let why = format!("the connection of agent {} ended before it reported the job's outcome", self.agent);
            if let Err(e) = cat.abandon_job(cur.id, &why) {
                warn!(error = %e, job = cur.id, "cannot mark an abandoned standby job");
            }
        }
    }
}
