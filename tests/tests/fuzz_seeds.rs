//! The fuzz corpora of `fuzz/` seen from the normal test suite:
//!
//! * every checked-in seed (`fuzz/seeds/<target>/`) is a valid input of its
//!   decoder today, so a format change that leaves the seeds stale fails
//!   here; `PULIH_WRITE_FUZZ_SEEDS=1 cargo test -p pulih-e2e --test fuzz_seeds`
//!   rewrites them from the real encoders below;
//! * every crash reproducer (`fuzz/regressions/<target>/`) goes through the
//!   same decoders as its fuzz target without panicking (SECURITY.md, section 6).

use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use pulih_agent::cache::{CacheEntry, CacheKind, DirRecord, PackReader, PackWriter, Totals};
use pulih_core::codec;
use pulih_core::protocol::{encode, DatasetReport, Destination, ErrorCode, JobSpec, Message};
use pulih_core::snapshot::{SnapshotIssue, SnapshotRecord, SnapshotStats};
use pulih_core::tree::{Entry, EntryName, Node, Segment, Tree};
use pulih_core::{AgentName, ChunkId, DatasetName, SnapshotId, TreeId};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Seeds made by the real encoders: (target, file name, bytes).
fn generate() -> Vec<(String, String, Vec<u8>)> {
    let mut seeds = Seeds(Vec::new());

    let tree = sample_tree();
    let (tree_id, tree_bytes) = tree.encode();
    let (_, empty_tree) = Tree::default().encode();
    seeds.put("tree", "mixed", &tree_bytes);
    seeds.put("tree", "empty", &empty_tree);

    let record = sample_record(tree_id);
    let (snap_id, record_bytes) = record.encode();
    seeds.put("snapshot_record", "with-parent-and-errors", &record_bytes);
    let mut bare = record.clone();
    bare.parent = None;
    bare.errors.clear();
    bare.errors_total = 0;
    seeds.put("snapshot_record", "bare", &bare.encode().1);

    let plain: Vec<u8> = (0..5000u32).flat_map(|i| (i % 97).to_le_bytes()).collect();
    let frame = codec::compress(&plain, 3);
    let with_len = |declared: u32, frame: &[u8]| [&declared.to_le_bytes()[..], frame].concat();
    seeds.put("chunk", "chunk", &with_len(plain.len() as u32, &frame));
    seeds.put("chunk", "tree-blob", &with_len(tree_bytes.len() as u32, &codec::compress(&tree_bytes, 19)));
    // A small bomb: 4 MiB of zeros announced as 1 KiB (F25).
    seeds.put("chunk", "bomb", &with_len(1024, &codec::compress(&vec![0; 4 << 20], 19)));

    let (csr, cert, ca) = sample_pki();
    let chunk_id = ChunkId::of(&plain);
    let messages = vec![
        ("hello", Message::Hello { version: 1, software: "pulih-agent 0.1.0".into() }),
        (
            "hello-ok",
            Message::HelloOk {
                version: 1,
                controller: "drc".into(),
                agent: "web".into(),
                server_time_ns: 1_700_000_000_000_000_000,
            },
        ),
        ("error", Message::Error { code: ErrorCode::Integrity, message: "content hashes to ...".into() }),
        ("error-unknown-code", Message::Error { code: ErrorCode::Other(999), message: String::new() }),
        (
            "enroll",
            Message::EnrollRequest {
                token: "pulih-enroll-0123456789abcdef".into(),
                name: "web".into(),
                csr_der: csr.clone(),
            },
        ),
        ("enrolled", Message::Enrolled { cert_der: cert.clone(), ca_der: ca }),
        ("has-chunks", Message::HasChunks { ids: vec![chunk_id, ChunkId::of(b"x")] }),
        ("missing", Message::Missing { ids: vec![chunk_id] }),
        ("put-chunk", Message::PutChunk { id: chunk_id, raw_len: plain.len() as u32, data: frame.clone() }),
        (
            "put-tree",
            Message::PutTree { id: tree_id, raw_len: tree_bytes.len() as u32, data: codec::compress(&tree_bytes, 3) },
        ),
        ("commit", Message::Commit { record: record_bytes }),
        ("committed", Message::Committed { id: snap_id, bytes_new: 4096, blobs_new: 3 }),
        (
            "report",
            Message::Report {
                datasets: vec![
                    DatasetReport { name: "www".into(), rpo_target_secs: 3600, schedule: "daily 01:30".into() },
                    DatasetReport { name: "db".into(), rpo_target_secs: 0, schedule: "continuous".into() },
                ],
            },
        ),
        ("report-ok", Message::ReportOk { repair: vec![chunk_id] }),
        ("renew", Message::Renew { csr_der: csr.clone() }),
        ("renewed", Message::Renewed { cert_der: cert }),
        (
            "job-restore",
            Message::JobOffer {
                id: 7,
                spec: JobSpec::Restore {
                    snapshot: snap_id,
                    root: tree_id,
                    destination: Destination::BelowRoot("simpeg/db".into()),
                    only_changed: true,
                    delete: true,
                },
            },
        ),
        (
            "job-action",
            Message::JobOffer {
                id: 8,
                spec: JobSpec::RunAction { name: "start".into(), env: vec![("PULIH_SYSTEM".into(), "simpeg".into())] },
            },
        ),
        (
            "job-verify",
            Message::JobOffer {
                id: 9,
                spec: JobSpec::Verify {
                    snapshot: snap_id,
                    root: tree_id,
                    destination: Destination::DatasetPath("db".into()),
                },
            },
        ),
        ("fetch-chunks", Message::FetchChunks { ids: vec![chunk_id] }),
    ];
    let mut stream = Vec::new();
    for (name, msg) in &messages {
        let mut one = Vec::new();
        encode(msg, &mut one);
        seeds.put("message", name, &one[4..]);
        seeds.put("frame", name, &one);
        stream.extend_from_slice(&one);
    }
    seeds.put("frame", "session", &stream);

    let example = |name: &str| fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)).unwrap();
    seeds.put("agent_config", "example", &example("agent.toml.example"));
    let state = Path::new("/var/lib/pulih-agent");
    seeds.put("agent_config", "template", pulih_agent::config::template("web", state, "drc.example:7443").as_bytes());
    seeds.put("controller_config", "example", &example("controller.toml.example"));
    seeds.put(
        "controller_config",
        "template",
        pulih_controller::config::template("drc", "0.0.0.0:7443", "127.0.0.1:7444").as_bytes(),
    );

    let bodies: [(u8, &str, &str); 8] = [
        (0, "enroll-token", r#"{"agent":"web","ttl_hours":24}"#),
        (1, "verify-some", r#"{"snapshots":["0123abcd"]}"#),
        (1, "verify-all", r#"{"all":true}"#),
        (2, "restore", r#"{"snapshot":"0123abcd","target":"/srv/restore/web","path":"/var/www"}"#),
        (3, "create-token", r#"{"name":"coordinator-1","role":"coordinator","expires_days":30}"#),
        (4, "snapshot-query", "agent=web&dataset=www"),
        (5, "audit-query", "after_seq=10&limit=100"),
        (2, "restore-traversal", r#"{"snapshot":"0123","target":"/srv/../etc","path":"../../etc/shadow"}"#),
    ];
    for (which, name, body) in bodies {
        seeds.put("api_bodies", name, &[&[which][..], body.as_bytes()].concat());
    }

    seeds.put("enroll", "web", &[&[3u8][..], b"web", &csr].concat());
    seeds.put("enroll", "bad-name", &[&[6u8][..], b"../etc", &csr].concat());

    let sub = DirRecord {
        tree: Some(TreeId::of(b"sub")),
        totals: Totals { files: 1, dirs: 1, symlinks: 0, others: 0, bytes: 5000 },
        entries: vec![cache_file("data.bin", 5000, chunk_id)],
    };
    let (sub_key, sub_bytes) = sub.encode();
    let top = DirRecord {
        tree: Some(tree_id),
        totals: Totals { files: 2, dirs: 2, symlinks: 0, others: 0, bytes: 5005 },
        entries: vec![
            cache_file("a.txt", 5, ChunkId::of(b"hello")),
            CacheEntry {
                name: b"sub".to_vec(),
                dev: 2049,
                ino: 12,
                ctime_ns: 1,
                mtime_ns: 1,
                size: 0,
                kind: CacheKind::Dir { record: sub_key },
            },
        ],
    };
    seeds.put("cache_record", "leaf", &sub_bytes);
    seeds.put("cache_record", "top", &top.encode().1);

    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("www.pack");
    let mut w = PackWriter::create(&pack).unwrap();
    w.add(&sub).unwrap();
    let root_key = w.add(&top).unwrap();
    w.finish(root_key).unwrap().install(&SnapshotId::of(b"snap"), &pack).unwrap();
    seeds.put("cache_pack", "two-records", &fs::read(&pack).unwrap());

    let store_pack = dir.path().join("store.pack");
    let mut w = pulih_controller::pack::PackWriter::create(pulih_controller::pack::PackId([7; 16]), store_pack.clone())
        .unwrap();
    let chunk = codec::compress(b"a chunk in a pack", 1);
    w.append(pulih_controller::store::BlobRef::chunk(&ChunkId::of(b"a chunk in a pack")), &chunk).unwrap();
    w.append(pulih_controller::store::BlobRef::tree(&tree_id), &codec::compress(&tree_bytes, 1)).unwrap();
    w.seal().unwrap();
    seeds.put("store_pack", "chunk-and-tree", &fs::read(&store_pack).unwrap());

    for (name, text) in
        [("duration", "1h30m"), ("ms", "500ms"), ("days", "7d"), ("size", "50MiB"), ("offset", "+07:00")]
    {
        seeds.put("units", name, text.as_bytes());
    }
    seeds.0
}

struct Seeds(Vec<(String, String, Vec<u8>)>);

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        self.0.push((target.to_owned(), name.to_owned(), bytes.to_vec()));
    }
}

/// Runs `data` through the decoders of fuzz target `target` (as
/// `fuzz/fuzz_targets/<target>.rs` does) and says whether they accepted it.
fn accepts(target: &str, data: &[u8]) -> bool {
    use pulih_controller::api::types::{
        AuditQuery, CreateTokenRequest, EnrollTokenRequest, RestoreRequest, SnapshotQuery, VerifyRequest,
    };
    let text = || std::str::from_utf8(data).ok();
    match target {
        "frame" => {
            let mut buf = data;
            while let Ok(Some((_, used))) = pulih_core::protocol::decode(buf) {
                buf = &buf[used..];
            }
            buf.is_empty() && !data.is_empty()
        }
        "message" => {
            let framed = [&(data.len() as u32).to_le_bytes()[..], data].concat();
            matches!(pulih_core::protocol::decode(&framed), Ok(Some(_)))
        }
        "tree" => Tree::decode(data).is_ok(),
        "snapshot_record" => SnapshotRecord::decode(data).is_ok(),
        "chunk" => data.len() > 4 && codec::decompress_bounded(&data[4..], pulih_core::formats::MAX_CHUNK_LEN).is_ok(),
        "agent_config" => text().is_some_and(|t| pulih_agent::config::Settings::parse(t).is_ok()),
        "controller_config" => text().is_some_and(|t| {
            toml::from_str::<pulih_controller::config::ControllerConfig>(t).is_ok_and(|c| c.validate().is_ok())
        }),
        "api_bodies" => match data.split_first() {
            Some((&w, body)) => match w % 6 {
                0 => serde_json::from_slice::<EnrollTokenRequest>(body).is_ok(),
                1 => serde_json::from_slice::<VerifyRequest>(body).is_ok(),
                2 => serde_json::from_slice::<RestoreRequest>(body).is_ok(),
                3 => serde_json::from_slice::<CreateTokenRequest>(body).is_ok(),
                4 => serde_urlencoded_like::<SnapshotQuery>(body),
                _ => serde_urlencoded_like::<AuditQuery>(body),
            },
            None => false,
        },
        "enroll" => {
            let Some((&n, rest)) = data.split_first() else { return false };
            let (name, csr) = rest.split_at(usize::from(n).min(rest.len()));
            let _ = pulih_core::tls::cert_info(csr);
            let name = std::str::from_utf8(name).ok().and_then(|n| AgentName::new(n).ok());
            let name = name.unwrap_or_else(|| AgentName::new("web").unwrap());
            test_ca().1.sign_agent(csr, &name, 30).is_ok()
        }
        "cache_record" => DirRecord::decode(data).is_ok(),
        "cache_pack" => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("d.pack");
            fs::write(&path, data).unwrap();
            match PackReader::open(&path) {
                Ok(Some(pack)) => matches!(pack.get(&pack.root), Ok(Some(_))),
                _ => false,
            }
        }
        "store_pack" => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p");
            fs::write(&path, data).unwrap();
            pulih_controller::pack::read_index(&path).is_ok_and(|e| !e.is_empty())
        }
        "units" => text().is_some_and(|t| {
            pulih_core::units::parse_duration(t).is_ok()
                || pulih_core::units::parse_size(t).is_ok()
                || pulih_controller::units::parse_offset(t).is_ok()
        }),
        other => panic!("no decoder known for fuzz target {other}: add it to accepts()"),
    }
}

/// Query strings: the fuzz target uses serde_urlencoded as axum does; here
/// the seed only has to be `key=value` pairs of the struct's fields, which
/// serde_json checks after a plain split (no extra dependency).
fn serde_urlencoded_like<T: serde::de::DeserializeOwned>(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else { return false };
    let mut map = serde_json::Map::new();
    for pair in text.split('&') {
        let Some((k, v)) = pair.split_once('=') else { return false };
        let value = v.parse::<i64>().map_or_else(|_| serde_json::Value::String(v.into()), serde_json::Value::from);
        map.insert(k.into(), value);
    }
    serde_json::from_value::<T>(serde_json::Value::Object(map)).is_ok()
}

fn test_ca() -> &'static (tempfile::TempDir, pulih_controller::pki::Ca) {
    static CA: std::sync::OnceLock<(tempfile::TempDir, pulih_controller::pki::Ca)> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let paths = pulih_controller::pki::PkiPaths::new(dir.path());
        pulih_controller::pki::create(&paths, "drc", &["localhost".into()]).unwrap();
        let ca = pulih_controller::pki::Ca::load(&paths).unwrap();
        (dir, ca)
    })
}

fn targets() -> Vec<String> {
    let text = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"'))
        .filter(|n| *n != "pulih-fuzz")
        .map(String::from)
        .collect()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn fuzz_seeds_are_valid_inputs_of_their_decoders() {
    let generated = generate();
    for (target, name, bytes) in &generated {
        assert!(accepts(target, bytes), "generated seed {target}/{name} is refused by its decoder");
    }
    let root = fuzz_dir().join("seeds");
    if std::env::var_os("PULIH_WRITE_FUZZ_SEEDS").is_some() {
        // Start clean so seeds of removed kinds do not linger.
        let _ = fs::remove_dir_all(&root);
        for (target, name, bytes) in &generated {
            fs::create_dir_all(root.join(target)).unwrap();
            fs::write(root.join(target).join(name), bytes).unwrap();
        }
    }
    for target in targets() {
        let seeds = files(&root.join(&target));
        assert!(!seeds.is_empty(), "fuzz target {target} has no seeds in fuzz/seeds/{target}");
        for (name, bytes) in seeds {
            assert!(
                accepts(&target, &bytes),
                "fuzz/seeds/{target}/{name} is no longer accepted: regenerate with PULIH_WRITE_FUZZ_SEEDS=1"
            );
        }
    }
}

/// Inputs that once crashed a fuzz target: each must now be handled
/// (accepted or refused with an error), never panic.
#[test]
fn fuzz_regressions_do_not_panic() {
    let mut n = 0;
    for target in targets() {
        for (_, bytes) in files(&fuzz_dir().join("regressions").join(&target)) {
            let _ = accepts(&target, &bytes);
            n += 1;
        }
    }
    println!("{n} crash reproducers replayed");
}

fn cache_file(name: &str, size: u32, id: ChunkId) -> CacheEntry {
    CacheEntry {
        name: name.as_bytes().to_vec(),
        dev: 2049,
        ino: 11,
        ctime_ns: 1_700_000_000_000_000_000,
        mtime_ns: 1_700_000_000_000_000_000,
        size: u64::from(size),
        kind: CacheKind::File { flags: 0, segments: vec![Segment::Data { id, len: size }] },
    }
}

fn sample_tree() -> Tree {
    let entry = |name: &str, node: Node| Entry {
        name: EntryName::new(name.as_bytes()).unwrap(),
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_000_000_000,
        node,
    };
    Tree::new(vec![
        entry(
            "data.bin",
            Node::File {
                size: 5000 + 4096,
                link_group: NonZeroU64::new(1),
                flags: 1,
                segments: vec![Segment::Data { id: ChunkId::of(b"c"), len: 5000 }, Segment::Hole { len: 4096 }],
            },
        ),
        entry("link", Node::Symlink { target: b"../data.bin".to_vec() }),
        entry("pipe", Node::Fifo),
        entry("sub", Node::Dir { tree: TreeId::of(b"sub") }),
    ])
    .unwrap()
}

fn sample_record(root: TreeId) -> SnapshotRecord {
    SnapshotRecord {
        agent: AgentName::new("web").unwrap(),
        dataset: DatasetName::new("www").unwrap(),
        host: "web-1.pemkot.example".into(),
        paths: vec![b"/var/www".to_vec(), b"/etc/nginx".to_vec()],
        started_ns: 1_700_000_000_000_000_000,
        finished_ns: 1_700_000_060_000_000_000,
        root,
        parent: Some(SnapshotId::of(b"parent")),
        chunker_version: 1,
        stats: SnapshotStats { files: 2, dirs: 1, symlinks: 1, others: 1, bytes: 9096, ..Default::default() },
        errors_total: 1,
        errors: vec![SnapshotIssue { path: b"/var/www/secret".to_vec(), message: "permission denied".into() }],
    }
}

/// A CSR as an agent makes it, a certificate issued by a real test CA, and that CA.
fn sample_pki() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = pulih_controller::pki::PkiPaths::new(dir.path());
    pulih_controller::pki::create(&paths, "drc", &["localhost".into()]).unwrap();
    let ca = pulih_controller::pki::Ca::load(&paths).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["web".into()]).unwrap().serialize_request(&key).unwrap();
    let cert = ca.sign_agent(csr.der(), &AgentName::new("web").unwrap(), 30).unwrap();
    use rustls::pki_types::pem::PemObject;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_file(paths.ca_cert()).unwrap();
    (csr.der().to_vec(), cert.to_vec(), ca_der.to_vec())
}
