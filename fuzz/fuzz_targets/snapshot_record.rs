//! A snapshot record as sent in `Commit` or read back from the store.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_core::snapshot::SnapshotRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = SnapshotRecord::decode(data) {
        let (id, bytes) = rec.encode();
        let back = SnapshotRecord::decode(&bytes).expect("canonical encoding decodes");
        assert_eq!(back, rec);
        assert_eq!(back.encode().0, id);
    }
});
