//! Chunk and tree blob codec: one zstd frame per blob.
//!
//! Decoding never trusts the frame: output is bounded by a limit chosen by
//! the reader (a decompression bomb or a lying content-size header fails,
//! F25), the decoded length must equal the declared one (F26), and the
//! blake3 of the plaintext must equal the blob's id (F23, F26).

use crate::formats::MAX_CHUNK_LEN;
use crate::id::ChunkId;

/// Why a blob could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Declared plaintext length is zero or above the limit.
    #[error("declared length {declared} is not in 1..={limit}")]
    BadLength { declared: u64, limit: u64 },
    /// The zstd frame is corrupt, or expands beyond the declared length.
    #[error("zstd frame is corrupt or larger than its declared {declared} bytes: {reason}")]
    Corrupt { declared: u64, reason: String },
    /// The frame decoded to fewer bytes than declared.
    #[error("decoded {actual} bytes, declared {declared}")]
    LengthMismatch { declared: u64, actual: u64 },
    /// The plaintext does not hash to the id it was sent or stored under.
    #[error("content hashes to {actual}, expected {expected}")]
    HashMismatch { expected: String, actual: String },
}

/// Compresses `plain` at zstd `level` into one frame.
pub fn compress(plain: &[u8], level: i32) -> Vec<u8> {
    // Writing into a Vec cannot fail for I/O reasons; zstd fails only on
    // allocation, which aborts anyway.
    zstd::bulk::compress(plain, level).expect("zstd compression into memory failed")
}

/// A reusable compressor (keeps its zstd context and a scratch buffer
/// between calls).
pub struct Compressor {
    inner: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl Compressor {
    /// A compressor at zstd `level`.
    pub fn new(level: i32) -> Self {
        Self { inner: zstd::bulk::Compressor::new(level).expect("zstd context allocation failed"), scratch: Vec::new() }
    }
    /// Compresses `plain` into one frame, returned in an allocation of its
    /// exact size: frames wait in queues, and zstd's worst-case sized output
    /// would hold about the plaintext's size for each of them.
    pub fn compress(&mut self, plain: &[u8]) -> Vec<u8> {
        self.scratch.clear();
        self.scratch.reserve(zstd::zstd_safe::compress_bound(plain.len()));
        self.inner.compress_to_buffer(plain, &mut self.scratch).expect("zstd compression into memory failed");
        self.scratch.as_slice().to_vec()
    }
}

/// Decompresses one frame that must expand to exactly `declared` bytes, at
/// most `limit`. Never allocates more than `declared` for the output.
pub fn decompress_exact(frame: &[u8], declared: u64, limit: u32) -> Result<Vec<u8>, CodecError> {
    if declared == 0 || declared > u64::from(limit) {
        return Err(CodecError::BadLength { declared, limit: limit.into() });
    }
    let cap = declared as usize;
    let mut out = Vec::with_capacity(cap);
    let mut dec =
        zstd::bulk::Decompressor::new().map_err(|e| CodecError::Corrupt { declared, reason: e.to_string() })?;
    // One byte of slack would let us tell "exactly declared" from "more";
    // zstd reports an error when the output does not fit, which we map to
    // Corrupt, so the capacity is the declared length itself.
    let n = dec
        .decompress_to_buffer(frame, &mut out)
        .map_err(|e| CodecError::Corrupt { declared, reason: e.to_string() })?;
    if n as u64 != declared {
        return Err(CodecError::LengthMismatch { declared, actual: n as u64 });
    }
    Ok(out)
}

/// Decompresses one frame of unknown plaintext length, refusing output
/// beyond `limit` bytes (F25). The buffer grows with the real output, never
/// with what the frame header claims.
pub fn decompress_bounded(frame: &[u8], limit: u32) -> Result<Vec<u8>, CodecError> {
    use std::io::Read;
    let corrupt = |reason: String| CodecError::Corrupt { declared: limit.into(), reason };
    let dec = zstd::stream::read::Decoder::with_buffer(frame).map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    dec.single_frame().take(u64::from(limit) + 1).read_to_end(&mut out).map_err(|e| corrupt(e.to_string()))?;
    if out.len() as u64 > u64::from(limit) {
        return Err(corrupt(format!("expands beyond {limit} bytes")));
    }
    if out.is_empty() {
        return Err(CodecError::BadLength { declared: 0, limit: limit.into() });
    }
    Ok(out)
}

/// Decodes a chunk blob and checks it against its id (F23, F25-F27).
pub fn open_chunk(id: &ChunkId, frame: &[u8], declared: u64) -> Result<Vec<u8>, CodecError> {
    let plain = decompress_exact(frame, declared, MAX_CHUNK_LEN)?;
    let actual = ChunkId::of(&plain);
    if actual != *id {
        return Err(CodecError::HashMismatch { expected: id.to_hex(), actual: actual.to_hex() });
    }
    Ok(plain)
}

/// Reads the plaintext length recorded in a zstd frame header, if any.
/// Informational only: never used to size a buffer (F25).
pub fn frame_content_size(frame: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(frame).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f23_round_trip_at_every_level() {
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let id = ChunkId::of(&plain);
        for level in [-5, 1, 3, 9, 19] {
            let frame = compress(&plain, level);
            assert_eq!(open_chunk(&id, &frame, plain.len() as u64).unwrap(), plain);
        }
    }

    /// F25: 13 bytes that claim a terabyte, and a real bomb, are refused
    /// without allocating their claimed size.
    #[test]
    fn f25_decompression_bomb_is_refused() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        let bomb = compress(&zeros, 19);
        assert!(bomb.len() < 2000);
        let err = decompress_exact(&bomb, 1024, MAX_CHUNK_LEN).unwrap_err();
        assert!(matches!(err, CodecError::Corrupt { .. }), "{err}");
        assert!(matches!(
            decompress_exact(&bomb, u64::from(MAX_CHUNK_LEN) + 1, MAX_CHUNK_LEN),
            Err(CodecError::BadLength { .. })
        ));
    }

    #[test]
    fn bounded_decompression_stops_at_the_limit() {
        let frame = compress(&vec![1u8; 1_000_000], 3);
        assert_eq!(decompress_bounded(&frame, 1_000_000).unwrap().len(), 1_000_000);
        assert!(decompress_bounded(&frame, 999_999).is_err());
        assert!(decompress_bounded(&frame[..frame.len() - 3], 1_000_000).is_err());
    }

    /// F24: truncated frames and frames decoding short are refused.
    #[test]
    fn f24_truncated_and_short_frames_are_refused() {
        let plain = vec![7u8; 100_000];
        let frame = compress(&plain, 3);
        for cut in [0, 1, frame.len() / 2, frame.len() - 1] {
            assert!(decompress_exact(&frame[..cut], 100_000, MAX_CHUNK_LEN).is_err(), "cut {cut}");
        }
        let err = decompress_exact(&frame, 100_001, MAX_CHUNK_LEN).unwrap_err();
        assert!(matches!(err, CodecError::LengthMismatch { .. }), "{err}");
    }

    /// F26/F27: content that does not match its id, and zero-length chunks.
    #[test]
    fn f26_f27_wrong_id_and_empty_chunk_are_refused() {
        let frame = compress(b"data", 3);
        let err = open_chunk(&ChunkId::of(b"other"), &frame, 4).unwrap_err();
        assert!(matches!(err, CodecError::HashMismatch { .. }));
        let empty = compress(b"", 3);
        assert!(matches!(open_chunk(&ChunkId::of(b""), &empty, 0), Err(CodecError::BadLength { .. })));
    }
}
