//! A whole change-cache pack file as found on disk: opened and its root
//! record read. Damage must be an error, never a panic or a huge allocation.
#![no_main]
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulih_agent::cache::PackReader;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let path = DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory")).path().join("d.pack");
    let mut f = std::fs::File::create(&path).expect("create pack");
    f.write_all(data).expect("write pack");
    drop(f);
    if let Ok(Some(pack)) = PackReader::open(&path) {
        let _ = pack.get(&pack.root);
    }
});
