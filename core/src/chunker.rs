//! Content-defined chunking (FastCDC 2020) with the v1 parameters of
//! [`crate::formats`].
//!
//! Cut points depend only on the bytes around them, so inserting a byte into
//! a large file changes the chunks near the insertion and no others: the
//! rest deduplicate against the previous snapshot.

use std::io::{self, Read};

use fastcdc::v2020::StreamCDC;

use crate::formats::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// Splits a byte stream into plaintext chunks.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    /// A chunker with the v1 parameters.
    pub fn new(reader: R) -> Self {
        Self { inner: StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| {
            r.map(|c| c.data).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => e,
                other => io::Error::other(other.to_string()),
            })
        })
    }
}

/// Cut points of `data` as (offset, length) pairs; for tests and tools.
pub fn boundaries(data: &[u8]) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX).map(|c| (c.offset, c.length)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift64*), so pinned values do
    /// not depend on a crate's RNG.
    pub(crate) fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.max(1);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn stream_and_slice_agree_and_cover_input() {
        let data = seeded_bytes(7, 5 * 1024 * 1024 + 17);
        let slices = boundaries(&data);
        let streamed: Vec<Vec<u8>> = Chunker::new(&data[..]).map(|c| c.unwrap()).collect();
        assert_eq!(slices.len(), streamed.len());
        let mut pos = 0;
        for ((off, len), chunk) in slices.iter().zip(&streamed) {
            assert_eq!(*off, pos);
            assert_eq!(&data[*off..off + len], &chunk[..]);
            assert!(*len as u32 <= CHUNK_MAX);
            pos += len;
        }
        assert_eq!(pos, data.len());
    }

    /// Pinned cut points for seeded input: an accidental change of chunker
    /// parameters or crate behaviour changes chunk ids of all new data and
    /// must be a deliberate format decision (CHUNKER_VERSION).
    #[test]
    fn pinned_boundaries_v1() {
        let data = seeded_bytes(1, 4 * 1024 * 1024);
        let cuts = boundaries(&data);
        let summary: Vec<usize> = cuts.iter().map(|c| c.1).collect();
        let digest = blake3::hash(format!("{summary:?}").as_bytes()).to_hex().to_string();
        assert_eq!(digest[..16], *PINNED, "cut points changed: {summary:?}");
    }
    const PINNED: &str = "e973e910a8e222cb";

    #[test]
    fn insertion_changes_only_nearby_chunks() {
        let data = seeded_bytes(3, 8 * 1024 * 1024);
        let mut edited = data.clone();
        edited.splice(4_000_000..4_000_000, b"inserted!".iter().copied());
        let ids = |d: &[u8]| -> std::collections::HashSet<blake3::Hash> {
            boundaries(d).iter().map(|(o, l)| blake3::hash(&d[*o..o + l])).collect()
        };
        let before = ids(&data);
        let after = ids(&edited);
        let new = after.difference(&before).count();
        assert!(new <= 3, "{new} chunks changed after a 9-byte insertion");
        assert!(before.len() > 10);
    }
}
