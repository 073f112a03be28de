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

/// A reusable decompressor: one zstd decompression context kept between
/// blobs. Creating a context costs about 12 µs on a VM (zstd probes the CPU
/// with `cpuid`, a VM exit each time), as much as decompressing a small
/// chunk; a session, a scrub or a restore keeps one per thread instead.
///
/// Same checks as the free functions: output bounded by a limit chosen by
/// the reader (F25), exact declared lengths (F24, F26), ids (F23).
pub struct Decompressor {
    ctx: zstd::zstd_safe::DCtx<'static>,
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

fn zstd_reason(code: usize) -> String {
    zstd::zstd_safe::get_error_name(code).to_string()
}

impl Decompressor {
    /// A decompressor with a fresh context.
    pub fn new() -> Self {
        Self { ctx: zstd::zstd_safe::DCtx::create() }
    }

    /// Decompresses one frame that must expand to exactly `declared` bytes,
    /// at most `limit`. Never allocates more than `declared` for the output.
    pub fn decompress_exact(&mut self, frame: &[u8], declared: u64, limit: u32) -> Result<Vec<u8>, CodecError> {
        if declared == 0 || declared > u64::from(limit) {
            return Err(CodecError::BadLength { declared, limit: limit.into() });
        }
        let mut out = Vec::with_capacity(declared as usize);
        // A failed earlier call may have left the session mid-frame.
        let _ = self.ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
        // The capacity is the declared length itself: zstd fails when the
        // output does not fit, which is mapped to Corrupt.
        let n = self
            .ctx
            .decompress(&mut out, frame)
            .map_err(|code| CodecError::Corrupt { declared, reason: zstd_reason(code) })?;
        if n as u64 != declared {
            return Err(CodecError::LengthMismatch { declared, actual: n as u64 });
        }
        Ok(out)
    }

    /// Decompresses the first frame of `frame`, whose plaintext length is
    /// unknown, refusing output beyond `limit` bytes (F25). The buffer grows
    /// with the real output, never with what the frame header claims.
    pub fn decompress_bounded(&mut self, frame: &[u8], limit: u32) -> Result<Vec<u8>, CodecError> {
        use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
        let corrupt = |reason: String| CodecError::Corrupt { declared: limit.into(), reason };
        self.ctx.reset(ResetDirective::SessionOnly).map_err(|c| corrupt(zstd_reason(c)))?;
        let limit_len = limit as usize;
        let mut out: Vec<u8> = Vec::with_capacity(frame.len().saturating_mul(4).max(4096).min(limit_len + 1));
        let mut input = InBuffer::around(frame);
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit_len {
                    return Err(corrupt(format!("expands beyond {limit} bytes")));
                }
                // Grow by doubling, up to one byte past the limit (to tell
                // "exactly the limit" from "more").
                let want = (out.capacity() * 2).max(4096).min(limit_len + 1);
                out.reserve_exact(want - out.len());
            }
            let pos = out.len();
            let (hint, produced) = {
                let mut output = OutBuffer::around_pos(&mut out, pos);
                let hint = self.ctx.decompress_stream(&mut output, &mut input).map_err(|c| corrupt(zstd_reason(c)))?;
                (hint, output.pos() - pos)
            };
            if out.len() > limit_len {
                return Err(corrupt(format!("expands beyond {limit} bytes")));
            }
            if hint == 0 {
                break; // the frame is complete
            }
            if produced == 0 && input.pos() == frame.len() && out.len() < out.capacity() {
                return Err(corrupt("the frame is truncated".into()));
            }
        }
        if out.is_empty() {
            return Err(CodecError::BadLength { declared: 0, limit: limit.into() });
        }
        Ok(out)
    }

    /// Decodes a chunk blob and checks it against its id (F23, F25-F27).
    pub fn open_chunk(&mut self, id: &ChunkId, frame: &[u8], declared: u64) -> Result<Vec<u8>, CodecError> {
        let plain = self.decompress_exact(frame, declared, MAX_CHUNK_LEN)?;
        check_chunk(id, &plain)?;
        Ok(plain)
    }
}

fn check_chunk(id: &ChunkId, plain: &[u8]) -> Result<(), CodecError> {
    let actual = ChunkId::of(plain);
    if actual != *id {
        return Err(CodecError::HashMismatch { expected: id.to_hex(), actual: actual.to_hex() });
    }
    Ok(())
}

thread_local! {
    /// The context of the free functions below: one per thread, so every
    /// reader (verify, scrub, restore, standby restores) reuses one without
    /// carrying it around.
    static THREAD_DECOMPRESSOR: std::cell::RefCell<Decompressor> = std::cell::RefCell::new(Decompressor::new());
}

/// Runs `f` with this thread's decompressor (a fresh one while the thread
/// is being torn down).
fn with_thread_decompressor<T>(f: impl FnOnce(&mut Decompressor) -> T) -> T {
    let mut f = Some(f);
    let res = THREAD_DECOMPRESSOR.try_with(|d| match d.try_borrow_mut() {
        Ok(mut d) => Ok((f.take().expect("called once"))(&mut d)),
        Err(_) => Err(()),
    });
    match res {
        Ok(Ok(v)) => v,
        _ => (f.take().expect("not called yet"))(&mut Decompressor::new()),
    }
}

/// Decompresses one frame that must expand to exactly `declared` bytes, at
/// most `limit` (this thread's [`Decompressor`]).
pub fn decompress_exact(frame: &[u8], declared: u64, limit: u32) -> Result<Vec<u8>, CodecError> {
    with_thread_decompressor(|d| d.decompress_exact(frame, declared, limit))
}

/// Decompresses one frame of unknown plaintext length, refusing output
/// beyond `limit` bytes (F25; this thread's [`Decompressor`]).
pub fn decompress_bounded(frame: &[u8], limit: u32) -> Result<Vec<u8>, CodecError> {
    with_thread_decompressor(|d| d.decompress_bounded(frame, limit))
}

/// Decodes a chunk blob and checks it against its id (F23, F25-F27; this
/// thread's [`Decompressor`]).
pub fn open_chunk(id: &ChunkId, frame: &[u8], declared: u64) -> Result<Vec<u8>, CodecError> {
    with_thread_decompressor(|d| d.open_chunk(id, frame, declared))
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

    /// One context reused across good, corrupt, truncated and oversized
    /// frames gives the same answers as a fresh context for each (an error
    /// must not poison the next blob).
    #[test]
    fn f25_reused_decompressor_keeps_every_check() {
        let mut d = Decompressor::new();
        let plain = vec![3u8; 300_000];
        let frame = compress(&plain, 3);
        let bomb = compress(&vec![0u8; 4 * 1024 * 1024], 19);
        for _ in 0..3 {
            assert_eq!(d.decompress_exact(&frame, 300_000, MAX_CHUNK_LEN).unwrap(), plain);
            assert!(matches!(d.decompress_exact(&bomb, 1024, MAX_CHUNK_LEN), Err(CodecError::Corrupt { .. })));
            assert!(d.decompress_exact(&frame[..frame.len() / 2], 300_000, MAX_CHUNK_LEN).is_err());
            assert!(matches!(
                d.decompress_exact(&frame, 300_001, MAX_CHUNK_LEN),
                Err(CodecError::LengthMismatch { .. })
            ));
            assert!(matches!(d.decompress_exact(&frame, 0, MAX_CHUNK_LEN), Err(CodecError::BadLength { .. })));
            assert!(d.decompress_bounded(&bomb, 1 << 20).is_err());
            assert!(d.decompress_bounded(&frame[..frame.len() - 3], 1 << 20).is_err());
            assert!(d.decompress_bounded(&frame, 299_999).is_err());
            assert_eq!(d.decompress_bounded(&frame, 300_000).unwrap(), plain);
            assert!(matches!(d.decompress_bounded(&compress(b"", 3), 10), Err(CodecError::BadLength { .. })));
            assert!(d.decompress_bounded(b"", 10).is_err());
            assert!(d.decompress_bounded(b"not a zstd frame", 10).is_err());
            assert_eq!(d.open_chunk(&ChunkId::of(&plain), &frame, 300_000).unwrap(), plain);
            assert!(matches!(d.open_chunk(&ChunkId::of(b"x"), &frame, 300_000), Err(CodecError::HashMismatch { .. })));
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// A reused context agrees with a fresh one on every input:
            /// valid frames of random data, and the same frames cut or
            /// with a flipped byte, under random declared lengths and limits.
            #[test]
            fn reused_context_agrees_with_a_fresh_one(
                blobs in proptest::collection::vec(
                    (proptest::collection::vec(0u8..4, 0..20_000), any::<u16>(), any::<u8>(), 0u32..30_000, 0u64..30_000),
                    1..8,
                ),
            ) {
                let mut d = Decompressor::new();
                for (plain, cut, flip, limit, declared) in blobs {
                    let mut frame = compress(&plain, 1);
                    match flip % 3 {
                        0 => {}
                        1 => frame.truncate(usize::from(cut) % (frame.len() + 1)),
                        _ => {
                            let i = usize::from(cut) % frame.len();
                            frame[i] ^= flip | 1;
                        }
                    }
                    let fresh_exact = zstd_exact_reference(&frame, declared, limit);
                    let reused_exact = d.decompress_exact(&frame, declared, limit);
                    prop_assert_eq!(fresh_exact.is_ok(), reused_exact.is_ok());
                    if let (Ok(a), Ok(b)) = (&fresh_exact, &reused_exact) {
                        prop_assert_eq!(a, b);
                    }
                    let bounded = d.decompress_bounded(&frame, limit);
                    if let Ok(out) = &bounded {
                        prop_assert!(out.len() as u64 <= u64::from(limit) && !out.is_empty());
                        if flip % 3 == 0 {
                            prop_assert_eq!(out, &plain);
                        }
                    }
                    if flip % 3 == 0 && !plain.is_empty() && plain.len() as u64 <= u64::from(limit) {
                        prop_assert_eq!(bounded.unwrap(), plain.clone());
                        prop_assert_eq!(d.decompress_exact(&frame, plain.len() as u64, limit).unwrap(), plain);
                    }
                }
            }
        }

        /// The checks of `decompress_exact` with zstd's own one-shot API and
        /// a context of its own, as the function was before contexts were kept.
        fn zstd_exact_reference(frame: &[u8], declared: u64, limit: u32) -> Result<Vec<u8>, ()> {
            if declared == 0 || declared > u64::from(limit) {
                return Err(());
            }
            let mut out = Vec::with_capacity(declared as usize);
            let n = zstd::bulk::Decompressor::new().unwrap().decompress_to_buffer(frame, &mut out).map_err(|_| ())?;
            if n as u64 != declared {
                return Err(());
            }
            Ok(out)
        }
    }
}
