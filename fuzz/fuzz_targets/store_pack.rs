//! A controller pack file as found in the store (crate `pack`): its index
//! read and every entry's range read back. Damage must be an error, never
//! a panic, a huge allocation or a range outside the file.
#![no_main]
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulih_controller::pack::read_index;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let path = DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory")).path().join("p");
    let mut f = std::fs::File::create(&path).expect("create pack");
    f.write_all(data).expect("write pack");
    drop(f);
    if let Ok(entries) = read_index(&path) {
        let f = std::fs::File::open(&path).expect("open pack");
        for e in entries {
            let mut buf = vec![0u8; e.len as usize];
            f.read_exact_at(&mut buf, e.offset).expect("an indexed range lies inside the file");
        }
    }
});
