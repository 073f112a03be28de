//! pulih-core: what the Pulih agent and controller must agree on.
//!
//! Everything here is free of I/O beyond reading a caller-supplied `Read`:
//! identifiers ([`id`]), the content-defined chunker ([`chunker`]), the
//! chunk codec ([`codec`]), the persisted formats ([`tree`], [`snapshot`],
//! with their magic numbers and versions in [`formats`]), validated names
//! ([`names`]), the wire protocol ([`protocol`]), the TLS setup both
//! sides use ([`tls`]) and the safe restore writer ([`restore`]) the
//! controller and standby agents share.
//!
//! CPU work (chunking, hashing, compressing) is plain synchronous code; the
//! binaries decide which threads run it.

pub mod chunker;
#[cfg(feature = "cli")]
pub mod clidoc;
pub mod codec;
pub mod enc;
pub mod formats;
pub mod hooks;
pub mod id;
pub mod names;
pub mod protocol;
pub mod report;
pub mod restore;
pub mod restored;
pub mod snapshot;
pub mod tls;
pub mod tree;
pub mod units;

pub use id::{ChunkId, SnapshotId, TreeId};
pub use names::{AgentName, DatasetName};

/// Current time, nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
