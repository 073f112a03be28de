//! One message body (type byte and payload) behind a valid frame header, so
//! the fuzzer spends its time in the payload decoders, not in lengths.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_core::protocol::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut framed = (data.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(data);
    if let Ok(Some((msg, used))) = decode(&framed) {
        assert_eq!(used, framed.len());
        let _ = msg.name();
        let mut again = Vec::new();
        encode(&msg, &mut again);
        assert_eq!(decode(&again).expect("re-encoded").expect("complete").0, msg);
    }
});
