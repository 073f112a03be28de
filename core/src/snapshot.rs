//! Snapshot records: what an agent commits, content-addressed.
//!
//! Layout (v1): magic "PULIHSNP" | version u16 | agent str | dataset str |
//! host str | npaths u32 | path bytes* | started_ns i64 | finished_ns i64 |
//! root tree [32] | has_parent u8 | parent [32]? | chunker_version u16 |
//! stats (8 x u64) | errors_total u64 | nerrors u32 | (path bytes, message str)*
//!
//! The snapshot id is the blake3 of this encoding. The record is stored by
//! the controller both in its catalog and as a file in the store, so the
//! catalog can be rebuilt from the store alone.

use crate::enc::{DecodeError, Reader, Writer};
use crate::formats::{MAX_SNAPSHOT_ERRORS, SNAPSHOT_MAGIC, SNAPSHOT_VERSION};
use crate::id::{SnapshotId, TreeId};
use crate::names::{AgentName, DatasetName};

/// Counters of one snapshot, measured by the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Entries of other kinds (fifos) kept, plus sockets and devices skipped.
    pub others: u64,
    /// Logical size of all files.
    pub bytes: u64,
    /// Bytes read from disk (changed files only).
    pub bytes_read: u64,
    /// Compressed bytes sent to the controller.
    pub bytes_sent: u64,
    /// Files that changed while they were read.
    pub changed_while_read: u64,
}

/// A problem met while taking the snapshot (the entry was skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotIssue {
    /// Path relative to the snapshot root (bytes, may be non-UTF-8).
    pub path: Vec<u8>,
    pub message: String,
}

/// One committed snapshot of one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub agent: AgentName,
    pub dataset: DatasetName,
    pub host: String,
    /// The absolute source paths the dataset covers.
    pub paths: Vec<Vec<u8>>,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub root: TreeId,
    pub parent: Option<SnapshotId>,
    pub chunker_version: u16,
    pub stats: SnapshotStats,
    /// Total problems met; at most [`MAX_SNAPSHOT_ERRORS`] are listed.
    pub errors_total: u64,
    pub errors: Vec<SnapshotIssue>,
}

/// Why a snapshot record is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot record: {0}")]
    Decode(#[from] DecodeError),
}

const MAX_TEXT: usize = 4096;
const MAX_PATHS: u32 = 1024;

impl SnapshotRecord {
    /// Canonical encoding and the snapshot id.
    pub fn encode(&self) -> (SnapshotId, Vec<u8>) {
        let mut w = Writer::with_capacity(256);
        w.raw(SNAPSHOT_MAGIC);
        w.u16(SNAPSHOT_VERSION);
        w.str(self.agent.as_str());
        w.str(self.dataset.as_str());
        w.str(&self.host);
        w.count(self.paths.len());
        for p in &self.paths {
            w.bytes(p);
        }
        w.i64(self.started_ns);
        w.i64(self.finished_ns);
        w.raw(self.root.as_bytes());
        match &self.parent {
            Some(p) => {
                w.u8(1);
                w.raw(p.as_bytes());
            }
            None => w.u8(0),
        }
        w.u16(self.chunker_version);
        let s = &self.stats;
        for v in [s.files, s.dirs, s.symlinks, s.others, s.bytes, s.bytes_read, s.bytes_sent, s.changed_while_read] {
            w.u64(v);
        }
        w.u64(self.errors_total);
        w.count(self.errors.len());
        for e in &self.errors {
            w.bytes(&e.path);
            w.str(&e.message);
        }
        let bytes = w.into_bytes();
        (SnapshotId::of(&bytes), bytes)
    }

    /// Decodes and validates a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader::new(bytes);
        if r.take("snapshot magic", 8)? != SNAPSHOT_MAGIC {
            return Err(r.invalid("snapshot magic", "not a Pulih snapshot record").into());
        }
        let version = r.u16("snapshot version")?;
        if version != SNAPSHOT_VERSION {
            return Err(r
                .invalid("snapshot version", format!("unknown version {version} (this build reads {SNAPSHOT_VERSION})"))
                .into());
        }
        let agent = r.str("agent name", 63)?;
        let agent = AgentName::new(agent).map_err(|e| r.invalid("agent name", e.to_string()))?;
        let dataset = r.str("dataset name", 63)?;
        let dataset = DatasetName::new(dataset).map_err(|e| r.invalid("dataset name", e.to_string()))?;
        let host = r.str("host", 255)?.to_owned();
        let n = r.count("path count", MAX_PATHS, 4)?;
        let mut paths = Vec::with_capacity(n);
        for _ in 0..n {
            paths.push(r.bytes("path", MAX_TEXT)?.to_vec());
        }
        let started_ns = r.i64("start time")?;
        let finished_ns = r.i64("finish time")?;
        let root = TreeId::from_bytes(r.array("root tree id")?);
        let parent = match r.u8("parent flag")? {
            0 => None,
            1 => Some(SnapshotId::from_bytes(r.array("parent id")?)),
            f => return Err(r.invalid("parent flag", format!("{f} is not 0 or 1")).into()),
        };
        let chunker_version = r.u16("chunker version")?;
        let mut v = [0u64; 8];
        for x in &mut v {
            *x = r.u64("stats")?;
        }
        let stats = SnapshotStats {
            files: v[0],
            dirs: v[1],
            symlinks: v[2],
            others: v[3],
            bytes: v[4],
            bytes_read: v[5],
            bytes_sent: v[6],
            changed_while_read: v[7],
        };
        let errors_total = r.u64("error total")?;
        let n = r.count("error count", MAX_SNAPSHOT_ERRORS, 8)?;
        let mut errors = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.bytes("error path", MAX_TEXT)?.to_vec();
            let message = r.str("error message", MAX_TEXT)?.to_owned();
            errors.push(SnapshotIssue { path, message });
        }
        r.finish("snapshot record")?;
        Ok(Self {
            agent,
            dataset,
            host,
            paths,
            started_ns,
            finished_ns,
            root,
            parent,
            chunker_version,
            stats,
            errors_total,
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> SnapshotRecord {
        SnapshotRecord {
            agent: AgentName::new("bkpsdm-srv1").unwrap(),
            dataset: DatasetName::new("simpeg").unwrap(),
            host: "srv1".into(),
            paths: vec![b"/srv/simpeg".to_vec(), b"/etc/\xffodd".to_vec()],
            started_ns: 1,
            finished_ns: 2,
            root: TreeId::of(b"root"),
            parent: Some(SnapshotId::of(b"p")),
            chunker_version: 1,
            stats: SnapshotStats { files: 3, bytes: 10, ..Default::default() },
            errors_total: 1,
            errors: vec![SnapshotIssue { path: b"x/y".to_vec(), message: "permission denied".into() }],
        }
    }

    #[test]
    fn round_trip_and_id_is_stable() {
        let s = sample();
        let (id, bytes) = s.encode();
        let back = SnapshotRecord::decode(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.encode().0, id);
    }

    #[test]
    fn forged_names_are_refused() {
        let (_, bytes) = sample().encode();
        // Replace the agent name "bkpsdm-srv1" with "../../etc/x" (same length).
        let mut forged = bytes.clone();
        let at = forged.windows(11).position(|w| w == b"bkpsdm-srv1").unwrap();
        forged[at..at + 11].copy_from_slice(b"../../etc/x");
        assert!(SnapshotRecord::decode(&forged).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = SNAPSHOT_MAGIC.to_vec();
            b.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
            b.extend_from_slice(&bytes);
            let _ = SnapshotRecord::decode(&b);
        }

        #[test]
        fn truncations_are_errors(cut in 0usize..200) {
            let (_, bytes) = sample().encode();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(SnapshotRecord::decode(&bytes[..cut]).is_err());
        }
    }
}
