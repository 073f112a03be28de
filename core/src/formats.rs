//! Magic numbers, versions and limits of every persisted or transmitted
//! structure.
//!
//! DO NOT MODIFY a published value: stores written by earlier versions must
//! stay readable. A change of layout gets a new version number, and readers
//! keep accepting the versions they know.

/// First bytes of an encoded tree blob (plaintext, before compression).
pub const TREE_MAGIC: &[u8; 8] = b"PULIHTRE";
/// Tree blob layout version written by this code.
pub const TREE_VERSION: u16 = 1;

/// First bytes of an encoded snapshot record.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"PULIHSNP";
/// Snapshot record layout version written by this code.
pub const SNAPSHOT_VERSION: u16 = 1;

/// Wire protocol version spoken in the hello exchange.
pub const PROTOCOL_VERSION: u16 = 1;

/// Chunker parameter set. Changing chunk sizes changes every chunk id of new
/// data (deduplication against older snapshots is lost), so it is versioned
/// and recorded in every snapshot.
///
/// - 1: every file cut with [`CHUNK_MIN`]/[`CHUNK_AVG`]/[`CHUNK_MAX`].
/// - 2: as 1, except files the agent's `small_chunks` patterns select
///   (database and disk-image files: rewritten in place in small pages) are
///   cut with [`CHUNK_SMALL_MIN`]/[`CHUNK_SMALL_AVG`]/[`CHUNK_SMALL_MAX`], so a
///   page rewrite re-sends about 64 KiB instead of about 256 KiB. Which files
///   those are is the agent's configuration; a reader never needs to know (a
///   file's chunk lengths are in its tree entry).
pub const CHUNKER_VERSION: u16 = 2;

/// Chunker versions a controller accepts in a snapshot record: those of
/// agents it may still meet. Restores do not depend on the version.
pub const CHUNKER_VERSIONS_ACCEPTED: &[u16] = &[1, 2];

/// Smallest chunk the standard profile cuts (except a file's last chunk).
pub const CHUNK_MIN: u32 = 64 * 1024;
/// Average chunk size the standard profile aims for.
pub const CHUNK_AVG: u32 = 256 * 1024;
/// Largest chunk the standard profile cuts.
pub const CHUNK_MAX: u32 = 1024 * 1024;

/// Smallest chunk the small profile (chunker version 2) cuts.
pub const CHUNK_SMALL_MIN: u32 = 16 * 1024;
/// Average chunk size the small profile aims for.
pub const CHUNK_SMALL_AVG: u32 = 64 * 1024;
/// Largest chunk the small profile cuts.
pub const CHUNK_SMALL_MAX: u32 = 256 * 1024;

/// Largest plaintext chunk anyone accepts. Above [`CHUNK_MAX`] so that a
/// later chunker version with larger chunks stays readable.
pub const MAX_CHUNK_LEN: u32 = 8 * 1024 * 1024;
/// Largest plaintext tree blob accepted.
pub const MAX_TREE_LEN: u32 = 64 * 1024 * 1024;
/// Largest wire frame body (type byte and payload).
pub const MAX_FRAME_LEN: u32 = 32 * 1024 * 1024;
/// Most ids in one has-chunks query or missing answer.
pub const MAX_IDS_PER_QUERY: u32 = 8192;
/// Longest file name accepted in a tree (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target accepted (Linux PATH_MAX less the NUL).
pub const MAX_LINK_TARGET_LEN: usize = 4095;
/// Most errors a snapshot record carries; more are counted, not listed.
pub const MAX_SNAPSHOT_ERRORS: u32 = 1000;
