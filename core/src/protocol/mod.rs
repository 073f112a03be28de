//! The agent ↔ controller wire protocol, sans I/O.
//!
//! After the TLS handshake (ALPN `pulih/1` for enrolled agents, `pulih-enroll/1`
//! for enrollment), both sides exchange length-prefixed frames:
//!
//! ```text
//! frame: body_len u32 LE | type u8 | payload      (body_len = 1 + payload, ≤ MAX_FRAME_LEN)
//! ```
//!
//! A session starts with `Hello` → `HelloOk` (versions checked), then:
//!
//! * `HasChunks{ids}` → `Missing{ids}`: which of these chunks the controller
//!   lacks *for this agent* (answers come in query order);
//! * `PutChunk{id, raw_len, zstd}`: no answer; the controller verifies and stores;
//! * `PutTree{id, raw_len, zstd}`: no answer; every chunk and subtree it
//!   references must already be stored for this agent;
//! * `Commit{record}` → `Committed{id, ...}`: the snapshot becomes visible.
//! * standby role (types 0x60-0x68, see [`standby`]): `JobPoll` →
//!   `JobNone` | `JobOffer{id, spec}`; during a restore job `FetchTree{id}` →
//!   `TreeData`, `FetchChunks{ids}` → one `ChunkData` per id; `JobDone` →
//!   `JobAck`. A controller without them answers `Error{Protocol}`.
//!
//! Any failure is answered with `Error{code, message}` and the connection is
//! closed; nothing uncommitted becomes visible. [`frame::decode`] checks the
//! announced length against [`MAX_FRAME_LEN`](crate::formats::MAX_FRAME_LEN)
//! before it waits for or allocates the body.

pub mod frame;
pub mod message;
pub mod standby;

pub use frame::{decode, encode, FrameError};
pub use message::{DatasetReport, ErrorCode, Message};
pub use standby::{Destination, JobSpec};

/// ALPN protocol id of agent sessions (client certificate required).
pub const ALPN_AGENT: &[u8] = b"pulih/1";
/// ALPN protocol id of enrollment sessions (no client certificate yet).
pub const ALPN_ENROLL: &[u8] = b"pulih-enroll/1";
