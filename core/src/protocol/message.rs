//! Protocol messages and their payload encodings.

use crate::enc::{DecodeError, Reader, Writer};
use crate::formats::{MAX_CHUNK_LEN, MAX_FRAME_LEN, MAX_IDS_PER_QUERY, MAX_TREE_LEN};
use crate::id::{ChunkId, SnapshotId, TreeId};
use crate::protocol::standby::JobSpec;

/// Error classes carried in `Error` frames. The agent's retry loop decides
/// by [`ErrorCode::is_temporary`], never by message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or unexpected frame.
    Protocol,
    /// The peer is not allowed to do this.
    Forbidden,
    /// Content did not match its id or declared size.
    Integrity,
    /// A tree or commit references something not stored for this agent.
    MissingReference,
    /// The controller could not store data (disk full, I/O error).
    Storage,
    /// The controller is shutting down or over capacity.
    Unavailable,
    /// An enrollment token is unknown, used, expired or for another name.
    BadToken,
    /// Versions do not match.
    Version,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::Forbidden => 2,
            ErrorCode::Integrity => 3,
            ErrorCode::MissingReference => 4,
            ErrorCode::Storage => 5,
            ErrorCode::Unavailable => 6,
            ErrorCode::BadToken => 7,
            ErrorCode::Version => 8,
            ErrorCode::Other(c) => c,
        }
    }
    fn from_u16(c: u16) -> Self {
        match c {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Forbidden,
            3 => ErrorCode::Integrity,
            4 => ErrorCode::MissingReference,
            5 => ErrorCode::Storage,
            6 => ErrorCode::Unavailable,
            7 => ErrorCode::BadToken,
            8 => ErrorCode::Version,
            c => ErrorCode::Other(c),
        }
    }
    /// Whether trying again later may succeed. `MissingReference` is
    /// temporary: the agent retries without trusting its parent (F15).
    pub fn is_temporary(self) -> bool {
        matches!(self, ErrorCode::Storage | ErrorCode::Unavailable | ErrorCode::MissingReference | ErrorCode::Integrity)
    }
}

/// Every message of protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello {
        version: u16,
        software: String,
    },
    HelloOk {
        version: u16,
        controller: String,
        agent: String,
        server_time_ns: i64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    EnrollRequest {
        token: String,
        name: String,
        csr_der: Vec<u8>,
    },
    Enrolled {
        cert_der: Vec<u8>,
        ca_der: Vec<u8>,
    },
    HasChunks {
        ids: Vec<ChunkId>,
    },
    Missing {
        ids: Vec<ChunkId>,
    },
    PutChunk {
        id: ChunkId,
        raw_len: u32,
        data: Vec<u8>,
    },
    PutTree {
        id: TreeId,
        raw_len: u32,
        data: Vec<u8>,
    },
    Commit {
        record: Vec<u8>,
    },
    Committed {
        id: SnapshotId,
        bytes_new: u64,
        blobs_new: u64,
    },
    /// A running agent says what it protects and how often (sent at the
    /// start of a connection); the controller records it for lag alerts.
    Report {
        datasets: Vec<DatasetReport>,
    },
    /// Answer to `Report`: chunks of this agent found damaged at the DRC,
    /// which the agent should send again if it still has them (self-healing).
    ReportOk {
        repair: Vec<ChunkId>,
    },
    /// Certificate renewal over the authenticated connection: a CSR for a
    /// key made on the agent, for the same name.
    Renew {
        csr_der: Vec<u8>,
    },
    Renewed {
        cert_der: Vec<u8>,
    },
    /// A standby agent asks for work (see [`crate::protocol::standby`]).
    JobPoll,
    /// No work now; ask again after the poll interval.
    JobNone,
    /// A job for the asking agent.
    JobOffer {
        id: u64,
        spec: JobSpec,
    },
    /// During a restore job: the tree `id` of the job's snapshot.
    FetchTree {
        id: TreeId,
    },
    /// A tree (zstd, `raw_len` bytes of plaintext); the agent rehashes it.
    TreeData {
        id: TreeId,
        raw_len: u32,
        data: Vec<u8>,
    },
    /// During a restore job: these chunks of the job's snapshot; answered by
    /// one `ChunkData` per id, in order.
    FetchChunks {
        ids: Vec<ChunkId>,
    },
    /// A chunk (zstd); the agent rehashes it before writing.
    ChunkData {
        id: ChunkId,
        raw_len: u32,
        data: Vec<u8>,
    },
    /// The job ended; `detail` is JSON for the catalog (stats, snapshot id).
    JobDone {
        id: u64,
        ok: bool,
        message: String,
        detail: String,
    },
    JobAck,
}

/// One dataset in a [`Message::Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetReport {
    pub name: String,
    /// Seconds; 0 when the dataset has no target.
    pub rpo_target_secs: u64,
    /// How snapshots are triggered, for display ("daily 01:30", "continuous").
    pub schedule: String,
}

/// Datasets per report; a config with more is refused by the agent.
pub const MAX_REPORTED_DATASETS: usize = 1024;

const T_HELLO: u8 = 0x01;
const T_HELLO_OK: u8 = 0x02;
const T_ERROR: u8 = 0x03;
const T_ENROLL: u8 = 0x10;
const T_ENROLLED: u8 = 0x11;
const T_HAS: u8 = 0x20;
const T_MISSING: u8 = 0x21;
const T_PUT_CHUNK: u8 = 0x22;
const T_PUT_TREE: u8 = 0x23;
const T_COMMIT: u8 = 0x30;
const T_COMMITTED: u8 = 0x31;
const T_REPORT: u8 = 0x40;
const T_REPORT_OK: u8 = 0x41;
const T_RENEW: u8 = 0x50;
const T_RENEWED: u8 = 0x51;
const T_JOB_POLL: u8 = 0x60;
const T_JOB_NONE: u8 = 0x61;
const T_JOB_OFFER: u8 = 0x62;
const T_FETCH_TREE: u8 = 0x63;
const T_TREE_DATA: u8 = 0x64;
const T_FETCH_CHUNKS: u8 = 0x65;
const T_CHUNK_DATA: u8 = 0x66;
const T_JOB_DONE: u8 = 0x67;
const T_JOB_ACK: u8 = 0x68;
/// Longest JSON detail of a finished job.
const MAX_JOB_DETAIL: usize = 64 * 1024;

const MAX_TEXT: usize = 4096;
const MAX_DER: usize = 16 * 1024;

impl Message {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::HelloOk { .. } => "hello-ok",
            Message::Error { .. } => "error",
            Message::EnrollRequest { .. } => "enroll",
            Message::Enrolled { .. } => "enrolled",
            Message::HasChunks { .. } => "has-chunks",
            Message::Missing { .. } => "missing",
            Message::PutChunk { .. } => "put-chunk",
            Message::PutTree { .. } => "put-tree",
            Message::Commit { .. } => "commit",
            Message::Committed { .. } => "committed",
            Message::Report { .. } => "report",
            Message::ReportOk { .. } => "report-ok",
            Message::Renew { .. } => "renew",
            Message::Renewed { .. } => "renewed",
            Message::JobPoll => "job-poll",
            Message::JobNone => "job-none",
            Message::JobOffer { .. } => "job-offer",
            Message::FetchTree { .. } => "fetch-tree",
            Message::TreeData { .. } => "tree-data",
            Message::FetchChunks { .. } => "fetch-chunks",
            Message::ChunkData { .. } => "chunk-data",
            Message::JobDone { .. } => "job-done",
            Message::JobAck => "job-ack",
        }
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new();
        match self {
            Message::Hello { version, software } => {
                w.u8(T_HELLO);
                w.u16(*version);
                w.str(software);
            }
            Message::HelloOk { version, controller, agent, server_time_ns } => {
                w.u8(T_HELLO_OK);
                w.u16(*version);
                w.str(controller);
                w.str(agent);
                w.i64(*server_time_ns);
            }
            Message::Error { code, message } => {
                w.u8(T_ERROR);
                w.u16(code.to_u16());
                w.str(message);
            }
            Message::EnrollRequest { token, name, csr_der } => {
                w.u8(T_ENROLL);
                w.str(token);
                w.str(name);
                w.bytes(csr_der);
            }
            Message::Enrolled { cert_der, ca_der } => {
                w.u8(T_ENROLLED);
                w.bytes(cert_der);
                w.bytes(ca_der);
            }
            Message::HasChunks { ids }
            | Message::Missing { ids }
            | Message::ReportOk { repair: ids }
            | Message::FetchChunks { ids } => {
                w.u8(match self {
                    Message::HasChunks { .. } => T_HAS,
                    Message::Missing { .. } => T_MISSING,
                    Message::FetchChunks { .. } => T_FETCH_CHUNKS,
                    _ => T_REPORT_OK,
                });
                w.count(ids.len());
                for id in ids {
                    w.raw(id.as_bytes());
                }
            }
            Message::PutChunk { id, raw_len, data } | Message::ChunkData { id, raw_len, data } => {
                // Large payloads go straight into `out`, without an extra copy.
                out.push(if matches!(self, Message::PutChunk { .. }) { T_PUT_CHUNK } else { T_CHUNK_DATA });
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(&raw_len.to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
                return;
            }
            Message::PutTree { id, raw_len, data } | Message::TreeData { id, raw_len, data } => {
                out.push(if matches!(self, Message::PutTree { .. }) { T_PUT_TREE } else { T_TREE_DATA });
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(&raw_len.to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
                return;
            }
            Message::Commit { record } => {
                w.u8(T_COMMIT);
                w.bytes(record);
            }
            Message::Committed { id, bytes_new, blobs_new } => {
                w.u8(T_COMMITTED);
                w.raw(id.as_bytes());
                w.u64(*bytes_new);
                w.u64(*blobs_new);
            }
            Message::Report { datasets } => {
                w.u8(T_REPORT);
                w.count(datasets.len());
                for d in datasets {
                    w.str(&d.name);
                    w.u64(d.rpo_target_secs);
                    w.str(&d.schedule);
                }
            }
            Message::Renew { csr_der } => {
                w.u8(T_RENEW);
                w.bytes(csr_der);
            }
            Message::Renewed { cert_der } => {
                w.u8(T_RENEWED);
                w.bytes(cert_der);
            }
            Message::JobPoll => w.u8(T_JOB_POLL),
            Message::JobNone => w.u8(T_JOB_NONE),
            Message::JobAck => w.u8(T_JOB_ACK),
            Message::JobOffer { id, spec } => {
                w.u8(T_JOB_OFFER);
                w.u64(*id);
                spec.encode(&mut w);
            }
            Message::FetchTree { id } => {
                w.u8(T_FETCH_TREE);
                w.raw(id.as_bytes());
            }
            Message::JobDone { id, ok, message, detail } => {
                w.u8(T_JOB_DONE);
                w.u64(*id);
                w.u8(u8::from(*ok));
                w.str(message);
                w.str(detail);
            }
        }
        out.extend_from_slice(&w.into_bytes());
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let t = r.u8("message type")?;
        let msg = match t {
            T_HELLO => Message::Hello { version: r.u16("version")?, software: r.str("software", MAX_TEXT)?.into() },
            T_HELLO_OK => Message::HelloOk {
                version: r.u16("version")?,
                controller: r.str("controller", MAX_TEXT)?.into(),
                agent: r.str("agent", MAX_TEXT)?.into(),
                server_time_ns: r.i64("server time")?,
            },
            T_ERROR => Message::Error {
                code: ErrorCode::from_u16(r.u16("error code")?),
                message: r.str("error message", MAX_TEXT)?.into(),
            },
            T_ENROLL => Message::EnrollRequest {
                token: r.str("token", 256)?.into(),
                name: r.str("name", 256)?.into(),
                csr_der: r.bytes("csr", MAX_DER)?.to_vec(),
            },
            T_ENROLLED => Message::Enrolled {
                cert_der: r.bytes("certificate", MAX_DER)?.to_vec(),
                ca_der: r.bytes("ca certificate", MAX_DER)?.to_vec(),
            },
            T_HAS | T_MISSING | T_REPORT_OK | T_FETCH_CHUNKS => {
                let n = r.count("id count", MAX_IDS_PER_QUERY, 32)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(ChunkId::from_bytes(r.array("chunk id")?));
                }
                match t {
                    T_HAS => Message::HasChunks { ids },
                    T_MISSING => Message::Missing { ids },
                    T_FETCH_CHUNKS => Message::FetchChunks { ids },
                    _ => Message::ReportOk { repair: ids },
                }
            }
            T_PUT_CHUNK | T_CHUNK_DATA => {
                let id = ChunkId::from_bytes(r.array("chunk id")?);
                let raw_len = r.u32("chunk length")?;
                if raw_len == 0 || raw_len > MAX_CHUNK_LEN {
                    return Err(r.invalid("chunk length", format!("{raw_len} not in 1..={MAX_CHUNK_LEN}")));
                }
                let data = r.bytes("chunk data", MAX_FRAME_LEN as usize)?.to_vec();
                if t == T_PUT_CHUNK {
                    Message::PutChunk { id, raw_len, data }
                } else {
                    Message::ChunkData { id, raw_len, data }
                }
            }
            T_PUT_TREE | T_TREE_DATA => {
                let id = TreeId::from_bytes(r.array("tree id")?);
                let raw_len = r.u32("tree length")?;
                if raw_len == 0 || raw_len > MAX_TREE_LEN {
                    return Err(r.invalid("tree length", format!("{raw_len} not in 1..={MAX_TREE_LEN}")));
                }
                let data = r.bytes("tree data", MAX_FRAME_LEN as usize)?.to_vec();
                if t == T_PUT_TREE {
                    Message::PutTree { id, raw_len, data }
                } else {
                    Message::TreeData { id, raw_len, data }
                }
            }
            T_COMMIT => Message::Commit { record: r.bytes("snapshot record", 1024 * 1024)?.to_vec() },
            T_COMMITTED => Message::Committed {
                id: SnapshotId::from_bytes(r.array("snapshot id")?),
                bytes_new: r.u64("bytes new")?,
                blobs_new: r.u64("blobs new")?,
            },
            T_REPORT => {
                // Smallest entry: two empty strings and a u64.
                let n = r.count("dataset count", MAX_REPORTED_DATASETS as u32, 16)?;
                let mut datasets = Vec::with_capacity(n);
                for _ in 0..n {
                    datasets.push(DatasetReport {
                        name: r.str("dataset name", 256)?.into(),
                        rpo_target_secs: r.u64("rpo target")?,
                        schedule: r.str("schedule", 256)?.into(),
                    });
                }
                Message::Report { datasets }
            }
            T_RENEW => Message::Renew { csr_der: r.bytes("csr", MAX_DER)?.to_vec() },
            T_RENEWED => Message::Renewed { cert_der: r.bytes("certificate", MAX_DER)?.to_vec() },
            T_JOB_POLL => Message::JobPoll,
            T_JOB_NONE => Message::JobNone,
            T_JOB_ACK => Message::JobAck,
            T_JOB_OFFER => Message::JobOffer { id: r.u64("job id")?, spec: JobSpec::decode(&mut r)? },
            T_FETCH_TREE => Message::FetchTree { id: TreeId::from_bytes(r.array("tree id")?) },
            T_JOB_DONE => Message::JobDone {
                id: r.u64("job id")?,
                ok: match r.u8("job outcome")? {
                    0 => false,
                    1 => true,
                    o => return Err(r.invalid("job outcome", format!("{o} is not 0 or 1"))),
                },
                message: r.str("job message", MAX_TEXT)?.into(),
                detail: r.str("job detail", MAX_JOB_DETAIL)?.into(),
            },
            other => return Err(r.invalid("message type", format!("unknown type {other:#04x}"))),
        };
        r.finish("message")?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{decode, encode};
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Hello { version: 1, software: "pulih-agent 0.1".into() },
            Message::HelloOk { version: 1, controller: "drc".into(), agent: "a".into(), server_time_ns: -1 },
            Message::Error { code: ErrorCode::Integrity, message: "bad".into() },
            Message::Error { code: ErrorCode::Other(999), message: String::new() },
            Message::EnrollRequest { token: "t".into(), name: "n".into(), csr_der: vec![1, 2] },
            Message::Enrolled { cert_der: vec![3], ca_der: vec![4] },
            Message::HasChunks { ids: vec![ChunkId::of(b"1"), ChunkId::of(b"2")] },
            Message::Missing { ids: vec![] },
            Message::PutChunk { id: ChunkId::of(b"x"), raw_len: 5, data: vec![9; 10] },
            Message::PutTree { id: TreeId::of(b"t"), raw_len: 7, data: vec![8; 3] },
            Message::Commit { record: vec![1; 20] },
            Message::Committed { id: SnapshotId::of(b"s"), bytes_new: 5, blobs_new: 2 },
            Message::Report {
                datasets: vec![DatasetReport {
                    name: "www".into(),
                    rpo_target_secs: 300,
                    schedule: "continuous".into(),
                }],
            },
            Message::Report { datasets: vec![] },
            Message::ReportOk { repair: vec![ChunkId::of(b"d")] },
            Message::Renew { csr_der: vec![5, 6] },
            Message::Renewed { cert_der: vec![7] },
            Message::JobPoll,
            Message::JobNone,
            Message::JobAck,
            Message::JobOffer {
                id: 7,
                spec: JobSpec::RunAction { name: "start".into(), env: vec![("A".into(), "b".into())] },
            },
            Message::FetchTree { id: TreeId::of(b"t") },
            Message::TreeData { id: TreeId::of(b"t"), raw_len: 3, data: vec![1, 2] },
            Message::FetchChunks { ids: vec![ChunkId::of(b"c")] },
            Message::ChunkData { id: ChunkId::of(b"c"), raw_len: 9, data: vec![4; 4] },
            Message::JobDone { id: 7, ok: false, message: "no".into(), detail: "{}".into() },
        ]
    }

    proptest::proptest! {
        /// Every job offer, whatever its spec, decodes to itself.
        #[test]
        fn job_offers_round_trip(id in proptest::prelude::any::<u64>(), spec in crate::protocol::standby::tests::arb_spec()) {
            let m = Message::JobOffer { id, spec };
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            let (back, used) = decode(&buf).unwrap().unwrap();
            proptest::prop_assert_eq!(back, m);
            proptest::prop_assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            let (back, used) = decode(&buf).unwrap().unwrap();
            assert_eq!(back, m);
            assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn oversized_counts_and_lengths_are_refused() {
        // A has-chunks claiming 2^32-1 ids in a tiny frame.
        let body = [T_HAS, 0xff, 0xff, 0xff, 0xff];
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        assert!(decode(&frame).is_err());
        // A put-chunk declaring a zero or huge plaintext length.
        for raw in [0u32, MAX_CHUNK_LEN + 1] {
            let mut body = vec![T_PUT_CHUNK];
            body.extend_from_slice(&[0; 32]);
            body.extend_from_slice(&raw.to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.push(0);
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&body);
            assert!(decode(&frame).is_err(), "raw_len {raw}");
        }
        // Trailing garbage after a valid message.
        let mut buf = Vec::new();
        encode(&Message::Missing { ids: vec![] }, &mut buf);
        buf.push(0);
        buf[0] += 1;
        assert!(decode(&buf).is_err());
    }
}
