//! Verification of a restored copy: re-read every restored file and
//! compare it with the snapshot, chunk by chunk, against the chunk hashes
//! the snapshot's trees hold (blake3 of the plaintext). Used by drills, at
//! the DRC (trees from the store) and on a standby agent (trees fetched over
//! its job connection), through [`BlobSource`]; chunk data is never needed. Holes must read as
//! zeros; sizes, symlink targets and entry types must match. Files are
//! opened relative to their directory without following symlinks, as the
//! restore made them. Every difference names the file.
//!
//! This reads what landed on disk, not the blobs: it proves the restored
//! copy is the snapshot, whatever happened between the store and the disk.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, CWD};

use crate::restore::{load_tree, BlobSource};
use crate::tree::{Entry, Node, Segment};
use crate::{ChunkId, TreeId};

/// Most problems listed (the count is always exact).
const MAX_LISTED: usize = 50;

/// What verification read.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checked {
    pub files: u64,
    pub bytes: u64,
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl Checked {
    fn bad(&mut self, path: &str, what: impl std::fmt::Display) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(format!("{path}: {what}"));
        }
    }
}

fn show(path: &[Vec<u8>]) -> String {
    let v: Vec<String> = path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("/{}", v.join("/"))
}

fn open_at(dir: &OwnedFd, name: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Compares what was restored into `dest` from the tree `root` (or the
/// entry at `subpath` of it) with the snapshot. Every tree is rehashed as
/// it is loaded; source errors (a tree that cannot be read) are problems too.
pub fn check<S: BlobSource + ?Sized>(src: &mut S, root: &TreeId, subpath: &[Vec<u8>], dest: &Path) -> Checked {
    let mut c = Checked::default();
    let dir = match rustix::fs::openat(CWD, dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(d) => d,
        Err(e) => {
            c.bad(&dest.display().to_string(), e);
            return c;
        }
    };
    let mut tree_id = *root;
    let mut walked = Vec::new();
    for (i, comp) in subpath.iter().enumerate() {
        let tree = match load_tree(src, &tree_id, &show(&walked)) {
            Ok(t) => t,
            Err(e) => {
                c.bad(&show(&walked), e);
                return c;
            }
        };
        walked.push(comp.clone());
        match tree.get(comp).map(|e| (e.clone(), &e.node)) {
            Some((_, Node::Dir { tree })) => tree_id = *tree,
            Some((e, _)) if i + 1 == subpath.len() => {
                entry(src, &dir, &[], &e, &mut c);
                return c;
            }
            _ => {
                c.bad(&show(&walked), "not in the snapshot");
                return c;
            }
        }
    }
    tree(src, &dir, &[], &tree_id, &mut c);
    c
}

fn tree<S: BlobSource + ?Sized>(src: &mut S, dir: &OwnedFd, path: &[Vec<u8>], id: &TreeId, c: &mut Checked) {
    match load_tree(src, id, &show(path)) {
        Ok(t) => {
            for e in t.entries() {
                entry(src, dir, path, e, c);
            }
        }
        Err(e) => c.bad(&show(path), e),
    }
}

fn entry<S: BlobSource + ?Sized>(src: &mut S, dir: &OwnedFd, parent: &[Vec<u8>], e: &Entry, c: &mut Checked) {
    let mut path = parent.to_vec();
    path.push(e.name.as_bytes().to_vec());
    let name = e.name.as_bytes();
    match &e.node {
        Node::Dir { tree: t } => match open_at(dir, name, OFlags::DIRECTORY) {
            Ok(child) => tree(src, &child, &path, t, c),
            Err(err) => c.bad(&show(&path), format!("directory missing or not a directory: {err}")),
        },
        Node::File { size, segments, .. } => match open_at(dir, name, OFlags::empty()) {
            Ok(fd) => {
                if let Err(err) = file(File::from(fd), *size, segments, &show(&path), c) {
                    c.bad(&show(&path), format!("cannot read: {err}"));
                }
            }
            Err(err) => c.bad(&show(&path), format!("file missing: {err}")),
        },
        Node::Symlink { target } => match rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new()) {
            Ok(t) if t.as_bytes() == target.as_slice() => {}
            Ok(_) => c.bad(&show(&path), "symlink target differs from the snapshot"),
            Err(err) => c.bad(&show(&path), format!("symlink missing: {err}")),
        },
        Node::Fifo => match rustix::fs::statat(dir, OsStr::from_bytes(name), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Fifo => {}
            Ok(_) => c.bad(&show(&path), "not a FIFO"),
            Err(err) => c.bad(&show(&path), format!("FIFO missing: {err}")),
        },
    }
}

fn file(mut f: File, size: u64, segments: &[Segment], path: &str, c: &mut Checked) -> io::Result<()> {
    let meta = f.metadata()?;
    if !meta.is_file() {
        c.bad(path, "not a regular file");
        return Ok(());
    }
    if meta.len() != size {
        c.bad(path, format!("size {} differs from the snapshot's {size}", meta.len()));
        return Ok(());
    }
    let mut buf = Vec::new();
    let mut offset = 0u64;
    for seg in segments {
        let len = match seg {
            Segment::Data { len, .. } => u64::from(*len),
            Segment::Hole { len } => *len,
        };
        match seg {
            Segment::Data { id, .. } => {
                buf.resize(len as usize, 0);
                f.read_exact(&mut buf)?;
                if ChunkId::of(&buf) != *id {
                    c.bad(
                        path,
                        format!("content at offset {offset} differs from the snapshot (chunk {})", id.to_hex()),
                    );
                    return Ok(());
                }
            }
            Segment::Hole { .. } => {
                if !zeros(&mut f, len)? {
                    c.bad(path, format!("hole at offset {offset} is not zeros"));
                    return Ok(());
                }
            }
        }
        offset += len;
    }
    // A trailing hole (the restore extends the file without writing).
    if !zeros(&mut f, size - offset.min(size))? {
        c.bad(path, format!("trailing hole at offset {offset} is not zeros"));
        return Ok(());
    }
    c.files += 1;
    c.bytes += size;
    Ok(())
}

fn zeros(f: &mut File, mut len: u64) -> io::Result<bool> {
    let mut buf = [0u8; 64 * 1024];
    while len > 0 {
        let n = len.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        len -= n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::{restore, FnSource, SourceError};
    use crate::tree::{EntryName, Tree};
    use std::collections::HashMap;

    #[test]
    fn a_changed_restored_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut chunks = HashMap::new();
        let mut put = |data: &[u8]| {
            let id = ChunkId::of(data);
            chunks.insert(id, data.to_vec());
            Segment::Data { id, len: data.len() as u32 }
        };
        let mut f = |name: &str, data: &[u8]| Entry {
            name: EntryName::new(name).unwrap(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            node: Node::File {
                size: data.len() as u64 + 5,
                link_group: None,
                flags: 0,
                segments: vec![put(data), Segment::Hole { len: 5 }],
            },
        };
        let entries = vec![f("a", b"alpha"), f("b", b"bravo")];
        let (root, bytes) = Tree::new(entries).unwrap().encode();
        let mut src = FnSource {
            tree: |id: &TreeId| -> Result<Vec<u8>, SourceError> {
                if *id == root {
                    Ok(bytes.clone())
                } else {
                    Err("no such tree".into())
                }
            },
            chunk: |id: &ChunkId, _len: u32| -> Result<Vec<u8>, SourceError> {
                chunks.get(id).cloned().ok_or_else(|| "no such chunk".into())
            },
        };
        let dest = dir.path().join("dest");
        restore(&mut src, &root, &[], &dest, Default::default()).unwrap();
        let ok = check(&mut src, &root, &[], &dest);
        assert_eq!((ok.files, ok.problem_count), (2, 0), "{:?}", ok.problems);
        // One flipped byte in the restored copy, one file gone.
        std::fs::write(dest.join("a"), b"alphA\0\0\0\0\0").unwrap();
        std::fs::remove_file(dest.join("b")).unwrap();
        let bad = check(&mut src, &root, &[], &dest);
        assert_eq!(bad.problem_count, 2, "{:?}", bad.problems);
        assert!(bad.problems[0].starts_with("/a: content at offset 0"), "{:?}", bad.problems);
        assert!(bad.problems[1].starts_with("/b: file missing"), "{:?}", bad.problems);
        // A tree the source does not have is a problem too.
        let gone = check(&mut src, &TreeId::of(b"not a tree"), &[], &dest);
        assert_eq!(gone.problem_count, 1, "{:?}", gone.problems);
    }
}
