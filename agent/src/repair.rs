//! Self-healing: the controller found some of this agent's chunks damaged
//! at the DRC and asks for them again. The change cache says which file and
//! offset each chunk came from; a chunk is resent only when the file still
//! holds exactly that content (its blake3 matches), so the DRC copy is
//! repaired from the primary without re-reading the whole dataset.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use pulih_core::codec;
use pulih_core::protocol::Message;
use pulih_core::tree::Segment;
use pulih_core::ChunkId;
use tracing::{info, warn};

use crate::cache::{CacheKind, PackReader};
use crate::conn::{Conn, ConnError};

/// Sends every chunk of `wanted` that can still be read with the same
/// content. Returns how many were sent. Only connection failures are
/// errors: a chunk that cannot be found or no longer matches is logged.
pub fn resend(conn: &mut Conn, pack: Option<&PackReader>, level: i32, wanted: &[ChunkId]) -> Result<u64, ConnError> {
    let Some(pack) = pack else {
        warn!(
            chunks = wanted.len(),
            "the controller asks for damaged chunks, but there is no change cache to find them"
        );
        return Ok(0);
    };
    let mut left: HashSet<ChunkId> = wanted.iter().copied().collect();
    let mut sent = 0u64;
    let mut stack = vec![(pack.root, PathBuf::from("/"))];
    while let Some((key, dir)) = stack.pop() {
        if left.is_empty() {
            break;
        }
        let rec = match pack.get(&key) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "change cache unreadable; cannot look for damaged chunks");
                break;
            }
        };
        for e in rec.entries {
            let path = dir.join(OsStr::from_bytes(&e.name));
            match e.kind {
                CacheKind::Dir { record } => stack.push((record, path)),
                CacheKind::File { segments, .. } => {
                    let mut off = 0u64;
                    for seg in segments {
                        match seg {
                            Segment::Hole { len } => off += len,
                            Segment::Data { id, len } => {
                                if left.contains(&id) {
                                    if let Some(data) = read_exact_chunk(&path, off, len, &id) {
                                        let packed = codec::compress(&data, level);
                                        conn.send(&Message::PutChunk { id, raw_len: len, data: packed })?;
                                        left.remove(&id);
                                        sent += 1;
                                    }
                                }
                                off += u64::from(len);
                            }
                        }
                    }
                }
            }
        }
    }
    info!(asked = wanted.len(), sent, not_found = left.len(), "resent damaged chunks to the controller");
    Ok(sent)
}

fn read_exact_chunk(path: &std::path::Path, off: u64, len: u32, id: &ChunkId) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, off).ok()?;
    if ChunkId::of(&buf) == *id {
        Some(buf)
    } else {
        warn!(path = %path.display(), chunk = %id.to_hex(), "file changed since the snapshot; this damaged chunk cannot be resent from it");
        None
    }
}
