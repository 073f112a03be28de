//! One directory record of the agent's change cache (a local file a crash,
//! a full disk or another program may have damaged).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_agent::cache::DirRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = DirRecord::decode(data) {
        let (_, bytes) = rec.encode();
        assert_eq!(DirRecord::decode(&bytes).expect("canonical encoding decodes"), rec);
        if let Some(first) = rec.entries.first() {
            assert!(rec.get(&first.name).is_some());
        }
    }
});
