//! Restore from the controller's store: the store as a
//! [`BlobSource`] for the shared writer in [`pulih_core::restore`] (which
//! holds the safety rules, F28-F31, and rehashes every blob).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};

pub use pulih_core::restore::{Options, RestoreError, RestoreStats};
use pulih_core::restore::{SharedSource, SourceError};
use pulih_core::{ChunkId, TreeId};

use pulih_core::codec;
use pulih_core::formats::MAX_TREE_LEN;

use crate::store::{BlobRef, Store};

/// The local store as a blob source. It only decompresses (bounded); the
/// writer verifies the hashes. Several threads may read it at once, so a
/// restore writes file contents in parallel ([`SharedSource`]).
pub struct StoreSource<'a>(pub &'a Store);

impl SharedSource for StoreSource<'_> {
    fn tree(&self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
        let frame = self.0.read(&BlobRef::tree(id))?;
        codec::decompress_bounded(&frame, MAX_TREE_LEN)
            .map_err(|e| format!("tree {} is damaged: {e}", id.to_hex()).into())
    }
    fn chunk(&self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError> {
        let frame = self.0.read(&BlobRef::chunk(id))?;
        codec::decompress_exact(&frame, len.into(), len)
            .map_err(|e| format!("chunk {} is damaged: {e}", id.to_hex()).into())
    }
}

/// Restores the tree `root` (or the entry at `subpath` within it) from the
/// store into `dest`.
pub fn restore(
    store: &Store,
    root: &TreeId,
    subpath: &[Vec<u8>],
    dest: &Path,
    opts: Options,
) -> Result<RestoreStats, RestoreError> {
    pulih_core::restore::restore(&mut StoreSource(store), root, subpath, dest, opts)
}

/// Opens an existing directory `name` under `dir` without following links.
fn open_dir_at(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Why a restore target given over the API is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("target {0:?} must be a relative path below the restore root ([restore] root), not an absolute path")]
    Absolute(String),
    #[error("target {0:?} may not contain '..'")]
    ParentDir(String),
    #[error("target {0:?} is empty, too long or contains a NUL byte")]
    Malformed(String),
    #[error(
        "target {target:?}: {component:?} is a symbolic link; restores do not follow links below the restore root"
    )]
    Symlink { target: String, component: String },
    #[error("target {target:?}: {component:?} exists and is not a directory")]
    NotDir { target: String, component: String },
    #[error("restore root {root}: {source}")]
    Root { root: String, source: io::Error },
    #[error("target {target:?}: {source}")]
    Io { target: String, source: io::Error },
}

/// Opens (creating what is missing, mode 0700) the directory `rel` below
/// `root`: `rel` must be relative, without `..`, and no component below
/// `root` may be a symbolic link. Each component is opened with
/// `O_NOFOLLOW` relative to its parent's descriptor, so a link swapped in
/// while this runs is refused too, not followed. `root` itself (set by the
/// administrator) is created if missing and may be a link.
pub fn open_confined(root: &Path, rel: &str) -> Result<(OwnedFd, std::path::PathBuf), ConfineError> {
    if rel.starts_with('/') {
        return Err(ConfineError::Absolute(rel.into()));
    }
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err(ConfineError::ParentDir(rel.into()));
    }
    if parts.is_empty() || rel.len() > 4096 || rel.contains('\0') {
        return Err(ConfineError::Malformed(rel.into()));
    }
    let root_err = |source: io::Error| ConfineError::Root { root: root.display().to_string(), source };
    std::fs::create_dir_all(root).map_err(root_err)?;
    let mut dir = rustix::fs::openat(CWD, root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| root_err(e.into()))?;
    let io = |source: io::Error| ConfineError::Io { target: rel.into(), source };
    for (i, part) in parts.iter().enumerate() {
        let shown = parts[..=i].join("/");
        let name = part.as_bytes();
        let opened = match open_dir_at(&dir, name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match rustix::fs::mkdirat(&dir, OsStr::from_bytes(name), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(io(e.into())),
                }
                open_dir_at(&dir, name)
            }
            other => other,
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(e) => {
                // ELOOP (a link) or ENOTDIR: say which.
                let st =
                    rustix::fs::statat(&dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).map_err(|_| io(e))?;
                return Err(if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    ConfineError::Symlink { target: rel.into(), component: shown }
                } else {
                    ConfineError::NotDir { target: rel.into(), component: shown }
                });
            }
        };
    }
    Ok((dir, root.join(parts.join("/"))))
}

/// Restores into an open directory (see [`open_confined`]); `dest_s` names
/// it in errors.
pub fn restore_into(
    store: &Store,
    root: &TreeId,
    subpath: &[Vec<u8>],
    root_fd: OwnedFd,
    dest_s: &str,
    opts: Options,
) -> Result<RestoreStats, RestoreError> {
    pulih_core::restore::restore_into(&mut StoreSource(store), root, subpath, root_fd, dest_s, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulih_core::tree::{Entry, EntryName, Node, Segment, Tree};

    /// F26 through the store: a chunk whose stored content no longer
    /// matches is never written.
    #[test]
    fn damaged_chunk_in_store_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("store")).unwrap();
        let id = ChunkId::of(b"good content");
        store.put_unsynced(&BlobRef::chunk(&id), &codec::compress(b"evil content", 1)).unwrap();
        let e = Entry {
            name: EntryName::new("f").unwrap(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            node: Node::File { size: 12, link_group: None, flags: 0, segments: vec![Segment::Data { id, len: 12 }] },
        };
        let (root, bytes) = Tree::new(vec![e]).unwrap().encode();
        store.put_unsynced(&BlobRef::tree(&root), &codec::compress(&bytes, 1)).unwrap();
        let dest = dir.path().join("dest");
        let err = restore(&store, &root, &[], &dest, Options::default()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!std::fs::read(dest.join("f")).unwrap_or_default().starts_with(b"evil"));
    }

    #[test]
    fn api_targets_are_confined_below_the_root() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("restores");
        let (_, p) = open_confined(&root, "opd/web/./2026").unwrap();
        assert_eq!(p, root.join("opd/web/2026"));
        assert!(root.join("opd/web/2026").is_dir());
        // Opening an existing directory again is fine.
        open_confined(&root, "opd/web").unwrap();
        assert!(matches!(open_confined(&root, "/etc"), Err(ConfineError::Absolute(_))));
        assert!(matches!(open_confined(&root, "a/../../etc"), Err(ConfineError::ParentDir(_))));
        assert!(matches!(open_confined(&root, ".."), Err(ConfineError::ParentDir(_))));
        assert!(matches!(open_confined(&root, "./"), Err(ConfineError::Malformed(_))));
        assert!(matches!(open_confined(&root, "a\0b"), Err(ConfineError::Malformed(_))));
        symlink(dir.path(), root.join("opd/escape")).unwrap();
        match open_confined(&root, "opd/escape/x") {
            Err(ConfineError::Symlink { component, .. }) => assert_eq!(component, "opd/escape"),
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("x").exists(), "nothing created through the link");
        std::fs::write(root.join("file"), b"x").unwrap();
        assert!(matches!(open_confined(&root, "file/x"), Err(ConfineError::NotDir { .. })));
    }
}
