//! Where the controller keeps a blob's bytes, for tests that damage, move
//! or lose stored data on purpose. The catalog says where each blob is: a
//! range of a pack file (store layout 3) or a loose file (layout 2).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One stored blob as the catalog locates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    pub tree: bool,
    /// Hex id.
    pub id: String,
    /// The file holding its bytes.
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// Hex name of its pack (`None`: a loose file).
    pub pack: Option<String>,
}

fn catalog(data_dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(data_dir.join("catalog.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    c
}

/// Every blob with a catalog row (chunks when `tree` is false), by id.
pub fn stored_blobs(data_dir: &Path, tree: bool) -> Vec<StoredBlob> {
    let conn = catalog(data_dir);
    let mut st = conn
        .prepare(
            "SELECT lower(hex(id)), lower(hex(pack)), pack_offset, stored_len FROM blobs WHERE kind = ?1 ORDER BY id",
        )
        .unwrap();
    let rows = st
        .query_map([if tree { 2 } else { 1 }], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .unwrap();
    let store = data_dir.join("store");
    rows.map(Result::unwrap)
        .map(|(id, pack, offset, len)| {
            let (path, offset) = match &pack {
                Some(p) => (store.join("packs").join(&p[0..2]).join(p), offset.unwrap() as u64),
                None => (store.join(if tree { "trees" } else { "chunks" }).join(&id[0..2]).join(&id), 0),
            };
            StoredBlob { tree, id, path, offset, len: len as u64, pack }
        })
        .collect()
}

/// The stored blob with this id.
pub fn stored_blob(data_dir: &Path, tree: bool, id: &str) -> StoredBlob {
    stored_blobs(data_dir, tree).into_iter().find(|b| b.id == id).unwrap_or_else(|| panic!("no stored blob {id}"))
}

/// The largest stored chunk.
pub fn largest_chunk(data_dir: &Path) -> StoredBlob {
    stored_blobs(data_dir, false).into_iter().max_by_key(|b| b.len).expect("a stored chunk")
}

/// Bytes of every file under the store's blob directories (packs and loose).
pub fn store_bytes(data_dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack: Vec<PathBuf> = ["packs", "chunks", "trees"].iter().map(|d| data_dir.join("store").join(d)).collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += m.len();
            }
        }
    }
    n
}

impl StoredBlob {
    /// Its stored bytes.
    pub fn read(&self) -> Vec<u8> {
        let f = fs::File::open(&self.path).unwrap();
        let mut b = vec![0u8; self.len as usize];
        f.read_exact_at(&mut b, self.offset).unwrap();
        b
    }

    /// Overwrites part of its bytes in place (`at` from its start).
    pub fn overwrite(&self, at: u64, bytes: &[u8]) {
        assert!(at + bytes.len() as u64 <= self.len, "overwrite past the blob's end");
        let f = OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all_at(bytes, self.offset + at).unwrap();
    }

    /// Flips one bit in the middle of its bytes.
    pub fn flip(&self) {
        let mid = self.len / 2;
        let b = self.read()[mid as usize] ^ 0x40;
        self.overwrite(mid, &[b]);
    }

    /// Zeroes its last `n` bytes, as a torn write leaves them (F1).
    pub fn zero_tail(&self, n: u64) {
        let n = n.min(self.len);
        self.overwrite(self.len - n, &vec![0u8; n as usize]);
    }

    /// Points its catalog row at another blob's bytes (what a store that
    /// confuses two blobs would return, F21); [`StoredBlob::relocate_back`]
    /// undoes it.
    pub fn relocate_to(&self, data_dir: &Path, other: &StoredBlob) {
        self.set_location(data_dir, other.pack.as_deref(), other.offset, other.len);
    }

    /// Puts its catalog row back where it was.
    pub fn relocate_back(&self, data_dir: &Path) {
        self.set_location(data_dir, self.pack.as_deref(), self.offset, self.len);
    }

    fn set_location(&self, data_dir: &Path, pack: Option<&str>, offset: u64, len: u64) {
        let pack = pack.expect("relocating needs packed blobs");
        catalog(data_dir)
            .execute(
                "UPDATE blobs SET pack = ?1, pack_offset = ?2, stored_len = ?3 WHERE kind = ?4 AND id = ?5",
                rusqlite::params![
                    unhex(pack),
                    offset as i64,
                    len as i64,
                    if self.tree { 2 } else { 1 },
                    unhex(&self.id)
                ],
            )
            .unwrap();
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}
