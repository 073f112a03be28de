//! The uploader: turns a stream of verified-later items into protocol
//! frames with deduplication queries pipelined.
//!
//! Chunks are gathered into batches; each batch is announced with a
//! has-chunks query without waiting for the answer, up to a window of
//! [`MAX_QUERIES`] queries and [`WINDOW_BYTES`] of data. Answers come back in
//! order; for each answered batch only the missing chunks are sent. A tree
//! is sent only after every batch before it was answered and its chunks
//! sent, because the controller accepts a tree only when everything it
//! references is stored.

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use pulih_core::protocol::Message;
use pulih_core::{ChunkId, TreeId};

use crate::conn::{Conn, ConnError};

/// Something to upload.
pub enum Item {
    /// A compressed chunk the agent believes the controller may lack.
    Chunk { id: ChunkId, raw_len: u32, data: Vec<u8> },
    /// A compressed tree blob.
    Tree { id: TreeId, raw_len: u32, data: Vec<u8> },
}

/// Most has-chunks queries awaiting answers.
pub const MAX_QUERIES: usize = 16;
/// Most compressed bytes held while waiting for answers: as much as the
/// controller's receive queue. 12 and 16 MiB bought no measurable speed on
/// the benchmark and cost the agent ~5 and ~12 MiB of peak memory
/// (bench/RESULTS.md); at 8 MiB a 50 ms round trip still allows 160 MiB/s.
pub const WINDOW_BYTES: usize = 8 * 1024 * 1024;
/// Chunk ids per query.
const BATCH_IDS: usize = 512;
/// Compressed bytes per query, so large chunks still flow in several batches.
const BATCH_BYTES: usize = WINDOW_BYTES / 8;

/// What the uploader did.
#[derive(Debug, Default, Clone)]
pub struct UploadStats {
    pub chunks_offered: u64,
    pub chunks_sent: u64,
    pub trees_sent: u64,
    /// Compressed payload bytes sent (chunks and trees).
    pub bytes_sent: u64,
}

struct Batch {
    chunks: Vec<(ChunkId, u32, Vec<u8>)>,
    missing: Option<HashSet<ChunkId>>,
}

enum Pending {
    Batch(Batch),
    Tree(TreeId, u32, Vec<u8>),
}

/// Uploads everything received on `rx` until it closes.
pub fn run(conn: &mut Conn, rx: Receiver<Vec<Item>>) -> Result<UploadStats, ConnError> {
    let mut up = Uploader {
        conn,
        queue: VecDeque::new(),
        batch: Vec::new(),
        batch_bytes: 0,
        held: 0,
        queries: 0,
        stats: UploadStats::default(),
    };
    let mut inbox = Vec::new().into_iter();
    loop {
        if up.queries >= MAX_QUERIES {
            up.read_answer()?;
            continue;
        }
        if up.held >= WINDOW_BYTES {
            // The open batch may be what fills the window: ask about it
            // first, or we would wait for an answer to a question never sent.
            up.send_query()?;
            if up.queries > 0 {
                up.read_answer()?;
                continue;
            }
        }
        // Items come in batches (one hand-off per batch); taken one by one
        // so the window is kept exactly.
        let next = match inbox.next() {
            Some(item) => Ok(item),
            None => match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(batch) => {
                    inbox = batch.into_iter();
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match next {
            Ok(Item::Chunk { id, raw_len, data }) => {
                up.held += data.len();
                up.stats.chunks_offered += 1;
                up.batch.push((id, raw_len, data));
                up.batch_bytes += up.batch.last().map_or(0, |c| c.2.len());
                if up.batch.len() >= BATCH_IDS || up.batch_bytes >= BATCH_BYTES {
                    up.send_query()?;
                }
            }
            Ok(Item::Tree { id, raw_len, data }) => {
                up.send_query()?;
                if up.queue.is_empty() {
                    up.put_tree(id, raw_len, data)?;
                } else {
                    up.held += data.len();
                    up.queue.push_back(Pending::Tree(id, raw_len, data));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                up.send_query()?;
                if up.queries > 0 {
                    up.read_answer()?;
                } else {
                    up.conn.flush()?;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                up.send_query()?;
                while up.queries > 0 {
                    up.read_answer()?;
                }
                up.conn.flush()?;
                return Ok(up.stats);
            }
        }
    }
}

struct Uploader<'a> {
    conn: &'a mut Conn,
    queue: VecDeque<Pending>,
    batch: Vec<(ChunkId, u32, Vec<u8>)>,
    batch_bytes: usize,
    held: usize,
    queries: usize,
    stats: UploadStats,
}

impl Uploader<'_> {
    fn send_query(&mut self) -> Result<(), ConnError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let chunks = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.conn.send(&Message::HasChunks { ids: chunks.iter().map(|c| c.0).collect() })?;
        self.queue.push_back(Pending::Batch(Batch { chunks, missing: None }));
        self.queries += 1;
        Ok(())
    }

    fn read_answer(&mut self) -> Result<(), ConnError> {
        let ids = match self.conn.recv()? {
            Message::Missing { ids } => ids,
            other => {
                return Err(ConnError::Protocol(format!("expected a missing-chunks answer, got {}", other.name())))
            }
        };
        let batch = self
            .queue
            .iter_mut()
            .find_map(|p| match p {
                Pending::Batch(b) if b.missing.is_none() => Some(b),
                _ => None,
            })
            .ok_or_else(|| ConnError::Protocol("answer to a query that was not asked".into()))?;
        let asked: HashSet<ChunkId> = batch.chunks.iter().map(|c| c.0).collect();
        if ids.iter().any(|id| !asked.contains(id)) {
            return Err(ConnError::Protocol("the controller answered with ids that were not asked".into()));
        }
        batch.missing = Some(ids.into_iter().collect());
        self.queries -= 1;
        // Send everything at the front that is now ready.
        while let Some(front) = self.queue.front() {
            match front {
                Pending::Batch(b) if b.missing.is_none() => break,
                _ => {}
            }
            match self.queue.pop_front().expect("front exists") {
                Pending::Batch(b) => {
                    let missing = b.missing.expect("answered");
                    for (id, raw_len, data) in b.chunks {
                        self.held -= data.len();
                        if missing.contains(&id) {
                            self.stats.chunks_sent += 1;
                            self.stats.bytes_sent += data.len() as u64;
                            self.conn.send(&Message::PutChunk { id, raw_len, data })?;
                        }
                    }
                }
                Pending::Tree(id, raw_len, data) => {
                    self.held -= data.len();
                    self.put_tree(id, raw_len, data)?;
                }
            }
        }
        Ok(())
    }

    fn put_tree(&mut self, id: TreeId, raw_len: u32, data: Vec<u8>) -> Result<(), ConnError> {
        self.stats.trees_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        self.conn.send(&Message::PutTree { id, raw_len, data })
    }
}
