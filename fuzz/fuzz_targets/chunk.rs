//! A chunk or tree blob (one zstd frame) with the plaintext length the peer
//! declared: the first 4 bytes are the declared length, the rest the frame.
//! Output must stay bounded whatever the frame header claims (F25).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_core::codec;
use pulih_core::formats::MAX_CHUNK_LEN;
use pulih_core::ChunkId;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let declared = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
    let frame = &data[4..];
    let _ = codec::frame_content_size(frame);
    if let Ok(plain) = codec::decompress_exact(frame, declared, MAX_CHUNK_LEN) {
        assert_eq!(plain.len() as u64, declared);
        // The id check of a real upload: right id passes, any other fails.
        assert!(codec::open_chunk(&ChunkId::of(&plain), frame, declared).is_ok());
        assert!(codec::open_chunk(&ChunkId::of(b"not it"), frame, declared).is_err() || plain == b"not it");
    }
    // The reader of unknown-length blobs (change cache records), with a
    // small limit so bombs are cheap to find.
    if let Ok(plain) = codec::decompress_bounded(frame, 1 << 20) {
        assert!(!plain.is_empty() && plain.len() <= 1 << 20);
    }
});
