//! A tree blob's plaintext as received in `PutTree` or read from the store.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_core::tree::Tree;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data) {
        let _ = tree.references();
        for e in tree.entries() {
            let _ = e.name.display();
        }
        let (id, bytes) = tree.encode();
        let back = Tree::decode(&bytes).expect("canonical encoding decodes");
        assert_eq!(back.encode().0, id);
    }
});
