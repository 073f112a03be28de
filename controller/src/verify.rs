//! Verify snapshots: re-read and rehash every blob they reach.
//!
//! Each blob is read once per run, however many snapshots share it; an
//! intact subtree is not walked again. Damage is reported per snapshot,
//! path and blob, so an operator knows exactly which files are affected.

use std::collections::HashMap;

use pulih_core::tree::{Node, Segment};
use pulih_core::{ChunkId, TreeId};

use crate::reader::{self, ReadError};
use crate::store::Store;

/// One damaged object as seen from one path of one snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    pub snapshot: String,
    pub path: String,
    pub kind: &'static str,
    pub id: String,
    pub reason: String,
}

/// The outcome of a verify run.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub snapshots: u64,
    pub trees_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damage: Vec<Damage>,
}

/// Verifier state shared across snapshots of one run.
pub struct Verifier<'a> {
    store: &'a Store,
    /// Chunk id → damage reason (None = intact).
    chunks: HashMap<ChunkId, Option<String>>,
    /// Tree id → whether everything under it is intact.
    trees: HashMap<TreeId, bool>,
    pub report: VerifyReport,
}

impl<'a> Verifier<'a> {
    pub fn new(store: &'a Store) -> Self {
        Self { store, chunks: HashMap::new(), trees: HashMap::new(), report: VerifyReport::default() }
    }

    /// Verifies one snapshot; damage is appended to the report. An error
    /// is returned only for failures of the store itself (not damage).
    pub fn snapshot(&mut self, snapshot_id: &str, root: &TreeId) -> Result<(), ReadError> {
        self.report.snapshots += 1;
        self.tree(snapshot_id, root, &mut String::new())?;
        Ok(())
    }

    fn tree(&mut self, snap: &str, id: &TreeId, path: &mut String) -> Result<bool, ReadError> {
        if self.trees.get(id) == Some(&true) {
            return Ok(true);
        }
        let tree = match reader::load_tree(self.store, id) {
            Ok(t) => t,
            Err(e) if e.is_damage() => {
                self.trees.insert(*id, false);
                self.report.damage.push(Damage {
                    snapshot: snap.to_owned(),
                    path: if path.is_empty() { "/".into() } else { path.clone() },
                    kind: "tree",
                    id: id.to_hex(),
                    reason: e.to_string(),
                });
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.report.trees_checked += 1;
        let mut intact = true;
        for e in tree.entries() {
            let len = path.len();
            path.push('/');
            path.push_str(&e.name.display());
            match &e.node {
                Node::Dir { tree } => intact &= self.tree(snap, tree, path)?,
                Node::File { segments, .. } => {
                    for s in segments {
                        if let Segment::Data { id, len } = s {
                            intact &= self.chunk(snap, id, *len, path)?;
                        }
                    }
                }
                _ => {}
            }
            path.truncate(len);
        }
        self.trees.insert(*id, intact);
        Ok(intact)
    }

    fn chunk(&mut self, snap: &str, id: &ChunkId, len: u32, path: &str) -> Result<bool, ReadError> {
        let verdict = match self.chunks.get(id) {
            Some(v) => v.clone(),
            None => {
                let v = match reader::load_chunk(self.store, id, len) {
                    Ok(_) => {
                        self.report.chunks_checked += 1;
                        self.report.bytes_checked += u64::from(len);
                        None
                    }
                    Err(e) if e.is_damage() => Some(e.to_string()),
                    Err(e) => return Err(e),
                };
                self.chunks.insert(*id, v.clone());
                v
            }
        };
        match verdict {
            None => Ok(true),
            Some(reason) => {
                self.report.damage.push(Damage {
                    snapshot: snap.to_owned(),
                    path: path.to_owned(),
                    kind: "chunk",
                    id: id.to_hex(),
                    reason,
                });
                Ok(false)
            }
        }
    }
}
