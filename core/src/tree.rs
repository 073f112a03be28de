//! Tree blobs: one directory's entries, content-addressed (a Merkle tree).
//!
//! Layout (v1, all integers little-endian, see [`crate::enc`]):
//!
//! ```text
//! magic "PULIHTRE" | version u16 | count u32 | entry*count
//! entry: name bytes | kind u8 | mode u32 | uid u32 | gid u32 | mtime_ns i64 | body
//!   file (1):    size u64 | link_group u64 (0 = none) | flags u8 | nseg u32 | segment*nseg
//!                segment: 0 | chunk id [32] | len u32     (data)
//!                         1 | len u64                      (hole, sparse file)
//!   dir (2):     tree id [32]
//!   symlink (3): target bytes
//!   fifo (4):    (nothing)
//! ```
//!
//! Entries are sorted by name bytes with no duplicates, so equal directories
//! have equal encodings and equal ids. Decoding checks everything a restore
//! relies on: names are single path components (no `/`, NUL, `.` or `..`,
//! F28), file sizes equal the sum of their segments, lengths are bounded.

use std::num::NonZeroU64;

use crate::enc::{DecodeError, Reader, Writer};
use crate::formats::{MAX_CHUNK_LEN, MAX_LINK_TARGET_LEN, MAX_NAME_LEN, MAX_TREE_LEN, TREE_MAGIC, TREE_VERSION};
use crate::id::{ChunkId, TreeId};

/// A single path component: 1-255 bytes, no `/` or NUL, not `.` or `..`.
/// Not necessarily UTF-8 (F32).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(Vec<u8>);

/// Why a name is not a valid single path component.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid file name {shown:?}: {why}")]
pub struct BadName {
    shown: String,
    why: &'static str,
}

impl EntryName {
    /// Validates a name.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, BadName> {
        let bytes = bytes.into();
        let why = if bytes.is_empty() {
            Some("empty")
        } else if bytes.len() > MAX_NAME_LEN {
            Some("longer than 255 bytes")
        } else if bytes.contains(&b'/') {
            Some("contains '/'")
        } else if bytes.contains(&0) {
            Some("contains NUL")
        } else if bytes == b"." || bytes == b".." {
            Some("is '.' or '..'")
        } else {
            None
        };
        match why {
            Some(why) => Err(BadName { shown: String::from_utf8_lossy(&bytes).chars().take(80).collect(), why }),
            None => Ok(Self(bytes)),
        }
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// Lossy text, for messages.
    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl std::fmt::Debug for EntryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

/// A run of a file's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes stored as a chunk.
    Data { id: ChunkId, len: u32 },
    /// A hole of a sparse file: zeros not stored and not written on restore.
    Hole { len: u64 },
}

impl Segment {
    /// Bytes of file content this segment covers.
    pub fn len(&self) -> u64 {
        match self {
            Segment::Data { len, .. } => u64::from(*len),
            Segment::Hole { len } => *len,
        }
    }
    /// Whether the segment covers no bytes (never true in a valid tree).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// File flag: the file changed while it was read; its content is what was
/// read, which may mix old and new data.
pub const FLAG_CHANGED_WHILE_READ: u8 = 1;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file.
    File {
        /// Length in bytes (sum of the segments).
        size: u64,
        /// Files of one snapshot sharing a group are hard links of each other.
        link_group: Option<NonZeroU64>,
        /// `FLAG_*` bits.
        flags: u8,
        /// The content, in order.
        segments: Vec<Segment>,
    },
    /// A directory, whose entries are in another tree blob.
    Dir { tree: TreeId },
    /// A symbolic link; the target is stored, never followed.
    Symlink { target: Vec<u8> },
    /// A named pipe.
    Fifo,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: EntryName,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub node: Node,
}

/// A directory listing, sorted by name.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    entries: Vec<Entry>,
}

/// Why a tree could not be built or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("duplicate entry name {0:?}")]
    Duplicate(EntryName),
    #[error("tree blob: {0}")]
    Decode(#[from] DecodeError),
}

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;
const KIND_FIFO: u8 = 4;
/// Smallest encoded entry: name (4+1) kind mode uid gid mtime.
const MIN_ENTRY_LEN: usize = 5 + 1 + 4 + 4 + 4 + 8;

impl Tree {
    /// Sorts `entries` by name; fails on duplicates.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, TreeError> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(TreeError::Duplicate(w[0].name.clone()));
        }
        Ok(Self { entries })
    }
    /// The entries, sorted by name.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
    /// Consumes the tree into its entries.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }
    /// The entry named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_bytes().cmp(name)).ok().map(|i| &self.entries[i])
    }

    /// Canonical encoding and its id.
    pub fn encode(&self) -> (TreeId, Vec<u8>) {
        let mut w = Writer::with_capacity(16 + self.entries.len() * 64);
        w.raw(TREE_MAGIC);
        w.u16(TREE_VERSION);
        w.count(self.entries.len());
        for e in &self.entries {
            w.bytes(e.name.as_bytes());
            match &e.node {
                Node::File { .. } => w.u8(KIND_FILE),
                Node::Dir { .. } => w.u8(KIND_DIR),
                Node::Symlink { .. } => w.u8(KIND_SYMLINK),
                Node::Fifo => w.u8(KIND_FIFO),
            }
            w.u32(e.mode);
            w.u32(e.uid);
            w.u32(e.gid);
            w.i64(e.mtime_ns);
            match &e.node {
                Node::File { size, link_group, flags, segments } => {
                    w.u64(*size);
                    w.u64(link_group.map_or(0, NonZeroU64::get));
                    w.u8(*flags);
                    encode_segments(&mut w, segments);
                }
                Node::Dir { tree } => w.raw(tree.as_bytes()),
                Node::Symlink { target } => w.bytes(target),
                Node::Fifo => {}
            }
        }
        let bytes = w.into_bytes();
        (TreeId::of(&bytes), bytes)
    }

    /// Decodes and validates a tree blob's plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let mut r = Reader::new(bytes);
        if bytes.len() > MAX_TREE_LEN as usize {
            return Err(r.invalid("tree blob", format!("{} bytes exceeds the limit", bytes.len())).into());
        }
        if r.take("tree magic", 8)? != TREE_MAGIC {
            return Err(r.invalid("tree magic", "not a Pulih tree blob").into());
        }
        let version = r.u16("tree version")?;
        if version != TREE_VERSION {
            return Err(r
                .invalid("tree version", format!("unknown version {version} (this build reads {TREE_VERSION})"))
                .into());
        }
        let n = r.count("tree entry count", u32::MAX, MIN_ENTRY_LEN)?;
        let mut entries: Vec<Entry> = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos();
            let raw_name = r.bytes("entry name", MAX_NAME_LEN)?;
            let name = EntryName::new(raw_name).map_err(|e| r.invalid("entry name", e.to_string()))?;
            if let Some(prev) = entries.last() {
                if prev.name >= name {
                    return Err(DecodeError {
                        what: "entry name",
                        at,
                        problem: crate::enc::Problem::Invalid("entries not sorted or duplicated".into()),
                    }
                    .into());
                }
            }
            let kind = r.u8("entry kind")?;
            let mode = r.u32("entry mode")?;
            if mode > 0o7777 {
                return Err(r.invalid("entry mode", format!("{mode:o} has bits beyond 7777")).into());
            }
            let uid = r.u32("entry uid")?;
            let gid = r.u32("entry gid")?;
            let mtime_ns = r.i64("entry mtime")?;
            let node = match kind {
                KIND_FILE => {
                    let size = r.u64("file size")?;
                    let link_group = NonZeroU64::new(r.u64("file link group")?);
                    let flags = r.u8("file flags")?;
                    if flags & !FLAG_CHANGED_WHILE_READ != 0 {
                        return Err(r.invalid("file flags", format!("unknown flags {flags:#x}")).into());
                    }
                    let segments = decode_segments(&mut r)?;
                    let mut total: u64 = 0;
                    for seg in &segments {
                        total =
                            total.checked_add(seg.len()).ok_or_else(|| r.invalid("file size", "segments overflow"))?;
                    }
                    if total != size {
                        return Err(r.invalid("file size", format!("size {size} but segments sum to {total}")).into());
                    }
                    Node::File { size, link_group, flags, segments }
                }
                KIND_DIR => Node::Dir { tree: TreeId::from_bytes(r.array("subtree id")?) },
                KIND_SYMLINK => {
                    let target = r.bytes("symlink target", MAX_LINK_TARGET_LEN)?;
                    if target.is_empty() || target.contains(&0) {
                        return Err(r.invalid("symlink target", "empty or contains NUL").into());
                    }
                    Node::Symlink { target: target.to_vec() }
                }
                KIND_FIFO => Node::Fifo,
                k => return Err(r.invalid("entry kind", format!("unknown kind {k}")).into()),
            };
            entries.push(Entry { name, mode, uid, gid, mtime_ns, node });
        }
        r.finish("tree blob")?;
        Ok(Self { entries })
    }

    /// Chunk ids and subtree ids this tree references directly.
    pub fn references(&self) -> (Vec<ChunkId>, Vec<TreeId>) {
        let mut chunks = Vec::new();
        let mut trees = Vec::new();
        for e in &self.entries {
            match &e.node {
                Node::File { segments, .. } => chunks.extend(segments.iter().filter_map(|s| match s {
                    Segment::Data { id, .. } => Some(*id),
                    Segment::Hole { .. } => None,
                })),
                Node::Dir { tree } => trees.push(*tree),
                _ => {}
            }
        }
        (chunks, trees)
    }
}

/// Appends a file's segment list (shared with the agent's change cache).
pub fn encode_segments(w: &mut Writer, segments: &[Segment]) {
    w.count(segments.len());
    for s in segments {
        match s {
            Segment::Data { id, len } => {
                w.u8(0);
                w.raw(id.as_bytes());
                w.u32(*len);
            }
            Segment::Hole { len } => {
                w.u8(1);
                w.u64(*len);
            }
        }
    }
}

/// Reads and validates a segment list written by [`encode_segments`].
pub fn decode_segments(r: &mut Reader<'_>) -> Result<Vec<Segment>, DecodeError> {
    let nseg = r.count("segment count", u32::MAX, 9)?;
    let mut segments = Vec::with_capacity(nseg);
    for _ in 0..nseg {
        segments.push(match r.u8("segment kind")? {
            0 => {
                let id = ChunkId::from_bytes(r.array("chunk id")?);
                let len = r.u32("chunk length")?;
                if len == 0 || len > MAX_CHUNK_LEN {
                    return Err(r.invalid("chunk length", format!("{len} not in 1..={MAX_CHUNK_LEN}")));
                }
                Segment::Data { id, len }
            }
            1 => {
                let len = r.u64("hole length")?;
                if len == 0 {
                    return Err(r.invalid("hole length", "zero"));
                }
                Segment::Hole { len }
            }
            k => return Err(r.invalid("segment kind", format!("unknown kind {k}"))),
        });
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(name: &[u8], segs: Vec<Segment>) -> Entry {
        let size = segs.iter().map(Segment::len).sum();
        Entry {
            name: EntryName::new(name).unwrap(),
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime_ns: 1_700_000_000_123_456_789,
            node: Node::File { size, link_group: None, flags: 0, segments: segs },
        }
    }

    #[test]
    fn canonical_order_gives_equal_ids() {
        let a = file(b"a", vec![Segment::Data { id: ChunkId::of(b"x"), len: 1 }]);
        let b = file(b"b", vec![]);
        let t1 = Tree::new(vec![a.clone(), b.clone()]).unwrap();
        let t2 = Tree::new(vec![b, a]).unwrap();
        assert_eq!(t1.encode(), t2.encode());
        assert!(matches!(Tree::new(vec![file(b"a", vec![]), file(b"a", vec![])]), Err(TreeError::Duplicate(_))));
    }

    /// F28: names that would walk out of a restore target are refused both
    /// when building and when decoding a crafted blob.
    #[test]
    fn f28_traversal_names_are_refused() {
        for bad in [&b".."[..], b".", b"", b"a/b", b"/etc", b"a\0b", &[b'x'; 256]] {
            assert!(EntryName::new(bad).is_err(), "{bad:?}");
            // Craft a blob by hand with the bad name.
            let mut w = Writer::new();
            w.raw(TREE_MAGIC);
            w.u16(TREE_VERSION);
            w.u32(1);
            w.bytes(bad);
            w.u8(KIND_FIFO);
            w.u32(0o644);
            w.u32(0);
            w.u32(0);
            w.i64(0);
            assert!(Tree::decode(&w.into_bytes()).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn decoding_rejects_unsorted_bad_sizes_and_unknown_versions() {
        let t = Tree::new(vec![file(b"a", vec![]), file(b"b", vec![])]).unwrap();
        let (_, mut bytes) = t.encode();
        // swap names "a" and "b": unsorted
        let pa = bytes.iter().position(|&c| c == b'a').unwrap();
        let pb = bytes.iter().position(|&c| c == b'b').unwrap();
        bytes.swap(pa, pb);
        assert!(Tree::decode(&bytes).is_err());

        let mut bad = file(b"x", vec![Segment::Hole { len: 10 }]);
        if let Node::File { size, .. } = &mut bad.node {
            *size = 11;
        }
        let (_, bytes) = Tree { entries: vec![bad] }.encode();
        let err = Tree::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("segments sum"), "{err}");

        let (_, mut bytes) = Tree::default().encode();
        bytes[8] = 99;
        assert!(Tree::decode(&bytes).unwrap_err().to_string().contains("unknown version 99"));
        assert!(Tree::decode(b"PULIHSNP\x01\x00\x00\x00\x00\x00").is_err(), "type confusion");
    }

    fn arb_name() -> impl Strategy<Value = EntryName> {
        proptest::collection::vec(any::<u8>(), 1..40).prop_filter_map("valid", |v| EntryName::new(v).ok())
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        let seg = prop_oneof![
            (any::<[u8; 32]>(), 1..=MAX_CHUNK_LEN)
                .prop_map(|(b, len)| Segment::Data { id: ChunkId::from_bytes(b), len }),
            (1..u64::MAX / 1024).prop_map(|len| Segment::Hole { len }),
        ];
        prop_oneof![
            (proptest::collection::vec(seg, 0..6), any::<u64>(), 0..2u8).prop_map(|(segments, g, flags)| Node::File {
                size: segments.iter().map(Segment::len).sum(),
                link_group: NonZeroU64::new(g),
                flags,
                segments,
            }),
            any::<[u8; 32]>().prop_map(|b| Node::Dir { tree: TreeId::from_bytes(b) }),
            proptest::collection::vec(1..=255u8, 1..300).prop_map(|target| Node::Symlink { target }),
            Just(Node::Fifo),
        ]
    }

    proptest! {
        /// F32: arbitrary-byte names and link targets round-trip exactly.
        #[test]
        fn f32_trees_round_trip(entries in proptest::collection::btree_map(arb_name(), (arb_node(), 0..=0o7777u32, any::<u32>(), any::<u32>(), any::<i64>()), 0..20)) {
            let entries = entries.into_iter().map(|(name, (node, mode, uid, gid, mtime_ns))| Entry { name, mode, uid, gid, mtime_ns, node }).collect();
            let tree = Tree::new(entries).unwrap();
            let (id, bytes) = tree.encode();
            let back = Tree::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &tree);
            prop_assert_eq!(back.encode().0, id);
        }

        /// Random bytes never panic the decoder.
        #[test]
        fn decode_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..400), header in any::<bool>()) {
            if header {
                let mut h = TREE_MAGIC.to_vec();
                h.extend_from_slice(&TREE_VERSION.to_le_bytes());
                h.extend_from_slice(&bytes);
                bytes = h;
            }
            let _ = Tree::decode(&bytes);
        }
    }
}
