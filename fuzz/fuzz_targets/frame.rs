//! A byte stream from a peer, cut into frames the way both sides read it.
//! Every decoded message must encode back to a frame that decodes equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_core::protocol::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((msg, used))) = decode(buf) {
        assert!(used > 4 && used <= buf.len());
        let mut again = Vec::new();
        encode(&msg, &mut again);
        let (back, n) = decode(&again).expect("re-encoded frame decodes").expect("complete");
        assert_eq!(n, again.len());
        assert_eq!(back, msg);
        buf = &buf[used..];
    }
});
