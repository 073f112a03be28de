//! Restore a snapshot (or part of it) into a directory, safely.
//!
//! The restore never writes outside its target, whatever the trees say
//! (F28-F31): every name was validated as a single path component when the
//! tree was decoded; every directory is created by us and opened with
//! `O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor, files are
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so a symlink placed in the
//! target (by the snapshot itself or by a racing local user) is never
//! followed. Hard links are made only to files this restore created, found
//! again by walking the same way. Every chunk is verified before it is
//! written; holes of sparse files are skipped, not written.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pulih_core::tree::{Entry, Node, Segment};
use pulih_core::TreeId;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Timespec, Timestamps, CWD};

use crate::reader::{self, ReadError};
use crate::store::Store;

/// Deepest directory nesting restored.
const MAX_DEPTH: usize = 1024;

/// Restore failures.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("destination {0} exists and is not an empty directory; restore only into a new or empty directory")]
    DestNotEmpty(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: {source}")]
    Read { path: String, source: ReadError },
    #[error("path {0:?} is not in the snapshot")]
    NoSuchPath(String),
    #[error("{0}: directories nested deeper than {MAX_DEPTH}")]
    TooDeep(String),
}

/// What a restore did.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub others: u64,
    pub bytes: u64,
}

struct Ctx<'a> {
    store: &'a Store,
    root: OwnedFd,
    owners: bool,
    /// Hard-link group → path (components) of the first file restored.
    links: HashMap<u64, Vec<Vec<u8>>>,
    stats: RestoreStats,
}

fn show(path: &[Vec<u8>]) -> String {
    let v: Vec<String> = path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("/{}", v.join("/"))
}

fn io_at(path: &[Vec<u8>]) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io { path: show(path), source }
}

fn ts(ns: i64) -> Timespec {
    Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) as _ }
}

fn times(mtime_ns: i64) -> Timestamps {
    Timestamps { last_access: ts(mtime_ns), last_modification: ts(mtime_ns) }
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

/// Restores the tree `root` (or the entry at `subpath` within it) into `dest`.
pub fn restore(store: &Store, root: &TreeId, subpath: &[Vec<u8>], dest: &Path) -> Result<RestoreStats, RestoreError> {
    let dest_s = dest.display().to_string();
    match std::fs::read_dir(dest) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(RestoreError::DestNotEmpty(dest_s));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(|source| RestoreError::Io { path: dest_s.clone(), source })?;
        }
        Err(_) => return Err(RestoreError::DestNotEmpty(dest_s)),
    }
    let root_fd = rustix::fs::openat(CWD, dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| RestoreError::Io { path: dest_s.clone(), source: e.into() })?;
    restore_into(store, root, subpath, root_fd, &dest_s)
}

/// Restores into an open, empty directory (`dest_s` names it in errors):
/// how the API restores into a target opened by [`open_confined`].
pub fn restore_into(
    store: &Store,
    root: &TreeId,
    subpath: &[Vec<u8>],
    root_fd: OwnedFd,
    dest_s: &str,
) -> Result<RestoreStats, RestoreError> {
    let dest_s = dest_s.to_owned();
    let mut entries = rustix::fs::Dir::read_from(&root_fd)
        .map_err(|e| RestoreError::Io { path: dest_s.clone(), source: e.into() })?;
    let has_entries = entries.any(|e| e.is_ok_and(|e| ![&b"."[..], &b".."[..]].contains(&e.file_name().to_bytes())));
    if has_entries {
        return Err(RestoreError::DestNotEmpty(dest_s));
    }
    let owners = rustix::process::geteuid().is_root();
    let mut ctx = Ctx { store, root: root_fd, owners, links: HashMap::new(), stats: RestoreStats::default() };

    // Find the subtree or entry to restore.
    let mut tree_id = *root;
    let mut walked: Vec<Vec<u8>> = Vec::new();
    for (i, comp) in subpath.iter().enumerate() {
        let tree =
            reader::load_tree(store, &tree_id).map_err(|source| RestoreError::Read { path: show(&walked), source })?;
        let entry = tree.get(comp).ok_or_else(|| RestoreError::NoSuchPath(show(subpath)))?.clone();
        walked.push(comp.clone());
        match &entry.node {
            Node::Dir { tree } => tree_id = *tree,
            _ if i + 1 == subpath.len() => {
                // A single non-directory entry: restore it into dest.
                let dir = ctx.root.try_clone().map_err(io_at(&walked))?;
                ctx.entry(&dir, &[], &entry, 0)?;
                return Ok(ctx.stats);
            }
            _ => return Err(RestoreError::NoSuchPath(show(subpath))),
        }
    }
    let dir = ctx.root.try_clone().map_err(|source| RestoreError::Io { path: dest_s, source })?;
    ctx.tree(&dir, &[], &tree_id, 0)?;
    Ok(ctx.stats)
}

impl Ctx<'_> {
    fn tree(&mut self, dir: &OwnedFd, path: &[Vec<u8>], id: &TreeId, depth: usize) -> Result<(), RestoreError> {
        if depth > MAX_DEPTH {
            return Err(RestoreError::TooDeep(show(path)));
        }
        let tree =
            reader::load_tree(self.store, id).map_err(|source| RestoreError::Read { path: show(path), source })?;
        for entry in tree.entries() {
            self.entry(dir, path, entry, depth)?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: &OwnedFd, parent: &[Vec<u8>], e: &Entry, depth: usize) -> Result<(), RestoreError> {
        let name = OsStr::from_bytes(e.name.as_bytes());
        let mut path = parent.to_vec();
        path.push(e.name.as_bytes().to_vec());
        let mode = Mode::from_raw_mode(e.mode);
        match &e.node {
            Node::Dir { tree } => {
                rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(|x| io_at(&path)(x.into()))?;
                let child = open_dir_at(dir, e.name.as_bytes()).map_err(io_at(&path))?;
                self.tree(&child, &path, tree, depth + 1)?;
                // Metadata after the children, so their creation does not
                // change the directory's mtime afterwards.
                self.own(&child, e, &path)?;
                rustix::fs::fchmod(&child, mode).map_err(|x| io_at(&path)(x.into()))?;
                rustix::fs::futimens(&child, &times(e.mtime_ns)).map_err(|x| io_at(&path)(x.into()))?;
                self.stats.dirs += 1;
            }
            Node::File { size, link_group, segments, .. } => {
                if let Some(first) = link_group.and_then(|g| self.links.get(&g.get())).cloned() {
                    let (src_dir, src_name) = self.open_parent(&first).map_err(io_at(&first))?;
                    rustix::fs::linkat(&src_dir, OsStr::from_bytes(&src_name), dir, name, AtFlags::empty())
                        .map_err(|x| io_at(&path)(x.into()))?;
                    self.stats.hardlinks += 1;
                    return Ok(());
                }
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|x| io_at(&path)(x.into()))?;
                let mut file = File::from(fd);
                for seg in segments {
                    match seg {
                        Segment::Data { id, len } => {
                            let data = reader::load_chunk(self.store, id, *len)
                                .map_err(|source| RestoreError::Read { path: show(&path), source })?;
                            file.write_all(&data).map_err(io_at(&path))?;
                        }
                        Segment::Hole { len } => {
                            rustix::fs::seek(&file, SeekFrom::Current(*len as i64))
                                .map_err(|x| io_at(&path)(x.into()))?;
                        }
                    }
                }
                // Trailing holes: extend without writing.
                file.set_len(*size).map_err(io_at(&path))?;
                self.own(&file, e, &path)?;
                rustix::fs::fchmod(&file, mode).map_err(|x| io_at(&path)(x.into()))?;
                rustix::fs::futimens(&file, &times(e.mtime_ns)).map_err(|x| io_at(&path)(x.into()))?;
                if let Some(g) = link_group {
                    self.links.insert(g.get(), path.clone());
                }
                self.stats.files += 1;
                self.stats.bytes += size;
            }
            Node::Symlink { target } => {
                rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name).map_err(|x| io_at(&path)(x.into()))?;
                self.own_at(dir, name, e, &path)?;
                rustix::fs::utimensat(dir, name, &times(e.mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|x| io_at(&path)(x.into()))?;
                self.stats.symlinks += 1;
            }
            Node::Fifo => {
                rustix::fs::mknodat(dir, name, FileType::Fifo, mode, 0).map_err(|x| io_at(&path)(x.into()))?;
                self.own_at(dir, name, e, &path)?;
                rustix::fs::chmodat(dir, name, mode, AtFlags::empty()).map_err(|x| io_at(&path)(x.into()))?;
                rustix::fs::utimensat(dir, name, &times(e.mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|x| io_at(&path)(x.into()))?;
                self.stats.others += 1;
            }
        }
        Ok(())
    }

    fn own(&self, fd: impl AsFd, e: &Entry, path: &[Vec<u8>]) -> Result<(), RestoreError> {
        if self.owners {
            rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(e.uid)), Some(rustix::fs::Gid::from_raw(e.gid)))
                .map_err(|x| io_at(path)(x.into()))?;
        }
        Ok(())
    }

    /// Sets the owner of a non-directory entry without following a link.
    fn own_at(&self, dir: &OwnedFd, name: &OsStr, e: &Entry, path: &[Vec<u8>]) -> Result<(), RestoreError> {
        if self.owners {
            let (uid, gid) = (rustix::fs::Uid::from_raw(e.uid), rustix::fs::Gid::from_raw(e.gid));
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|x| io_at(path)(x.into()))?;
        }
        Ok(())
    }

    /// Opens the parent directory of `path` (relative to the restore root)
    /// component by component, never following a symlink.
    fn open_parent(&self, path: &[Vec<u8>]) -> io::Result<(OwnedFd, Vec<u8>)> {
        let (last, dirs) = path.split_last().ok_or_else(|| io::Error::other("empty path"))?;
        let mut fd = self.root.try_clone()?;
        for d in dirs {
            fd = open_dir_at(&fd, d)?;
        }
        Ok((fd, last.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlobRef;
    use pulih_core::tree::{EntryName, Tree};
    use std::num::NonZeroU64;
    use std::os::unix::fs::{symlink, MetadataExt};

    #[test]
    fn api_targets_are_confined_below_the_root() {
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

    fn put_tree(store: &Store, entries: Vec<Entry>) -> TreeId {
        let (id, bytes) = Tree::new(entries).unwrap().encode();
        store.put_unsynced(&BlobRef::tree(&id), &pulih_core::codec::compress(&bytes, 1)).unwrap();
        id
    }

    fn put_chunk(store: &Store, data: &[u8]) -> Segment {
        let id = pulih_core::ChunkId::of(data);
        store.put_unsynced(&BlobRef::chunk(&id), &pulih_core::codec::compress(data, 1)).unwrap();
        Segment::Data { id, len: data.len() as u32 }
    }

    fn entry(name: &str, node: Node) -> Entry {
        Entry { name: EntryName::new(name).unwrap(), mode: 0o644, uid: 0, gid: 0, mtime_ns: 0, node }
    }

    fn file(store: &Store, name: &str, data: &[u8], group: u64) -> Entry {
        entry(
            name,
            Node::File {
                size: data.len() as u64,
                link_group: NonZeroU64::new(group),
                flags: 0,
                segments: vec![put_chunk(store, data)],
            },
        )
    }

    fn setup() -> (tempfile::TempDir, Store, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("store")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        (dir, store, outside)
    }

    /// F29: a symlink in the snapshot pointing outside is restored as a
    /// symlink and never followed, not by `--path` either.
    #[test]
    fn f29_symlinked_parent_is_not_followed() {
        let (dir, store, outside) = setup();
        let root = put_tree(
            &store,
            vec![
                entry("evil", Node::Symlink { target: outside.as_os_str().as_bytes().to_vec() }),
                file(&store, "ok", b"x", 0),
            ],
        );
        let dest = dir.path().join("dest");
        restore(&store, &root, &[], &dest).unwrap();
        assert!(std::fs::symlink_metadata(dest.join("evil")).unwrap().file_type().is_symlink());
        let err = restore(&store, &root, &[b"evil".to_vec(), b"passwd".to_vec()], &dir.path().join("d2")).unwrap_err();
        assert!(matches!(err, RestoreError::NoSuchPath(_)), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote outside the target");
    }

    /// F29: a symlink that appears in the target while restoring (a racing
    /// local user) is neither written through nor descended into.
    #[test]
    fn f29_symlink_planted_in_target_is_not_followed() {
        let (dir, store, outside) = setup();
        let sub = put_tree(&store, vec![file(&store, "passwd", b"owned", 0)]);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        symlink(&outside, dest.join("d")).unwrap();
        symlink(outside.join("f"), dest.join("f")).unwrap();
        let root_fd = rustix::fs::openat(CWD, &dest, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut ctx =
            Ctx { store: &store, root: root_fd, owners: false, links: HashMap::new(), stats: RestoreStats::default() };
        let dirfd = ctx.root.try_clone().unwrap();
        assert!(ctx.entry(&dirfd, &[], &entry("d", Node::Dir { tree: sub }), 0).is_err());
        assert!(ctx.entry(&dirfd, &[], &file(&store, "f", b"owned", 0), 0).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote outside the target");
    }

    /// F30: hard links are made only to files this restore created, reached
    /// without following symlinks; a swapped parent makes the link fail.
    #[test]
    fn f30_hard_links_stay_inside_the_target() {
        let (dir, store, outside) = setup();
        std::fs::write(outside.join("f"), b"outside").unwrap();
        let sub = put_tree(&store, vec![file(&store, "f", b"inside", 9)]);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let root_fd = rustix::fs::openat(CWD, &dest, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut ctx =
            Ctx { store: &store, root: root_fd, owners: false, links: HashMap::new(), stats: RestoreStats::default() };
        let dirfd = ctx.root.try_clone().unwrap();
        ctx.entry(&dirfd, &[], &entry("d", Node::Dir { tree: sub }), 0).unwrap();
        // Swap d for a symlink to a directory outside holding a file of the same name.
        std::fs::rename(dest.join("d"), dir.path().join("moved")).unwrap();
        symlink(&outside, dest.join("d")).unwrap();
        assert!(ctx.entry(&dirfd, &[], &file(&store, "z", b"inside", 9), 0).is_err());
        assert_eq!(std::fs::metadata(outside.join("f")).unwrap().nlink(), 1, "linked to a file outside the target");
    }

    /// F31: a tree stored under an id it does not hash to (forged by someone
    /// with write access to the store) is refused, not restored.
    #[test]
    fn f31_forged_tree_is_refused() {
        let (dir, store, _) = setup();
        let (_, bytes) = Tree::new(vec![entry("x", Node::Fifo)]).unwrap().encode();
        let claimed = TreeId::of(b"something else");
        store.put_unsynced(&BlobRef::tree(&claimed), &pulih_core::codec::compress(&bytes, 1)).unwrap();
        let err = restore(&store, &claimed, &[], &dir.path().join("dest")).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    /// F24/F26: a chunk whose content no longer matches is never written.
    #[test]
    fn damaged_chunk_is_not_written() {
        let (dir, store, _) = setup();
        let f = file(&store, "f", b"good content", 0);
        let Node::File { segments, .. } = &f.node else { unreachable!() };
        let Segment::Data { id, .. } = &segments[0] else { unreachable!() };
        store.put_unsynced(&BlobRef::chunk(id), &pulih_core::codec::compress(b"evil content", 1)).unwrap();
        let root = put_tree(&store, vec![f.clone()]);
        let dest = dir.path().join("dest");
        assert!(restore(&store, &root, &[], &dest).is_err());
        let written = std::fs::read(dest.join("f")).unwrap_or_default();
        assert!(!written.starts_with(b"evil"), "damaged data reached the restored file");
    }
}
