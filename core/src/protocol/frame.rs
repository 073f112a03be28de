//! Frame boundaries: parses from a byte buffer, returns `Ok(None)` cheaply
//! while a frame is incomplete, and refuses oversized frames from their
//! 4-byte header.

use super::message::Message;
use crate::enc::DecodeError;
use crate::formats::MAX_FRAME_LEN;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge { len: u32 },
    #[error("empty frame")]
    Empty,
    #[error("malformed message: {0}")]
    Message(#[from] DecodeError),
}

/// Appends the frame of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    msg.encode_body(out);
    let body_len = u32::try_from(out.len() - start - 4).expect("frame body over 4 GiB");
    debug_assert!(body_len <= MAX_FRAME_LEN, "encoded an oversized frame");
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
}

/// Parses one frame from the front of `buf`: `Ok(None)` when more bytes are
/// needed, `Ok(Some((msg, consumed)))` otherwise.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(len) = peek_len(buf)? else { return Ok(None) };
    let total = 4 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let msg = Message::decode_body(&buf[4..total])?;
    Ok(Some((msg, total)))
}

/// The body length announced by a frame header, validated; `None` while
/// fewer than 4 bytes are buffered.
pub fn peek_len(buf: &[u8]) -> Result<Option<u32>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use proptest::prelude::*;

    #[test]
    fn incomplete_frames_wait_and_oversized_ones_fail_early() {
        let mut buf = Vec::new();
        encode(&Message::HasChunks { ids: vec![ChunkId::of(b"a"); 3] }, &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]).unwrap(), None, "cut {cut}");
        }
        let (msg, used) = decode(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(msg, Message::HasChunks { ids: vec![ChunkId::of(b"a"); 3] });

        let huge = (MAX_FRAME_LEN + 1).to_le_bytes();
        assert!(matches!(decode(&huge), Err(FrameError::TooLarge { .. })));
        assert!(matches!(decode(&[0, 0, 0, 0]), Err(FrameError::Empty)));
    }

    proptest! {
        /// Random bytes are an error or an incomplete frame, never a panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
