//! End to end: a directory tree replicated by the real agent to the real
//! controller over mutual TLS, restored byte-identical with its metadata.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;
use pulih_e2e::{assert_same_tree, bytes, ok, run, set_mtime, Controller};
use rustix::fs::{Mode, CWD};

/// A tree with every kind of entry the format knows.
fn build_rich_tree(src: &Path) {
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::create_dir_all(src.join("empty-dir")).unwrap();
    fs::write(src.join("empty-file"), b"").unwrap();
    fs::write(src.join("a/small.txt"), b"hello DRC\n").unwrap();
    // Sizes around chunk boundaries (64 KiB min, 1 MiB max).
    for (i, len) in [65_535usize, 65_536, 65_537, 1_048_575, 1_048_576, 1_048_577, 3_000_001].iter().enumerate() {
        fs::write(src.join(format!("a/b/size-{len}")), bytes(i as u64 + 10, *len)).unwrap();
    }
    fs::write(src.join("a/b/c/compressible.log"), "line of log text\n".repeat(100_000)).unwrap();
    // F32: names that are not UTF-8, with spaces and non-ASCII.
    fs::write(src.join(OsStr::from_bytes(b"latin1-\xe9\xff.txt")), b"bytes").unwrap();
    fs::write(src.join("laporan keuangan 2018.csv"), b"a,b\n1,2\n").unwrap();
    fs::write(src.join("dokumen_ñ_ü.txt"), b"utf8").unwrap();
    // Symlinks: relative, absolute, dangling, to a directory, non-UTF-8 target.
    symlink("a/small.txt", src.join("rel-link")).unwrap();
    symlink("/etc/hostname", src.join("abs-link")).unwrap();
    symlink("does/not/exist", src.join("dangling")).unwrap();
    symlink("a/b", src.join("dir-link")).unwrap();
    symlink(OsStr::from_bytes(b"odd-\xfe"), src.join("odd-target")).unwrap();
    // Hard links, across directories.
    fs::write(src.join("a/hard1"), b"linked content").unwrap();
    fs::hard_link(src.join("a/hard1"), src.join("a/b/hard2")).unwrap();
    fs::hard_link(src.join("a/hard1"), src.join("hard3")).unwrap();
    // F34: a sparse file with data in the middle and a trailing hole.
    let f = fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(64 * 1024 * 1024).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&bytes(99, 200_000), 20 * 1024 * 1024).unwrap();
    drop(f);
    // A named pipe.
    rustix::fs::mknodat(CWD, src.join("fifo"), rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
    // Modes, including setgid and an unreadable-by-others file.
    fs::set_permissions(src.join("a/small.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("a/b/size-65535"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::set_permissions(src.join("a/b/c"), fs::Permissions::from_mode(0o750)).unwrap();
    // Nanosecond mtimes, directories last (writing into them changes them).
    set_mtime(&src.join("a/small.txt"), 1_500_000_000_123_456_789);
    set_mtime(&src.join("dangling"), 1_400_000_000_000_000_001);
    set_mtime(&src.join("a/b/c"), 1_600_000_000_999_999_999);
    set_mtime(&src.join("empty-dir"), 1_000_000_000);
}

#[test]
fn round_trip_preserves_contents_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_rich_tree(&src);
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "web-pemkot");
    agent.add_dataset("web", &[&src], &[]);
    let snap = agent.snapshot();
    assert!(snap.files >= 15, "{snap:?}");
    assert_eq!(snap.errors, 0, "{snap:?}");

    let dest = tmp.path().join("restored");
    let out = ctl.restore(&snap.id, Some(&src), &dest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&src, &dest);

    // The listing shows the snapshot with the documented fields.
    let list = ctl.snapshots();
    assert_eq!(list.len(), 1);
    for key in ["id", "agent", "dataset", "time", "files", "bytes", "bytes_new"] {
        assert!(list[0].get(key).is_some(), "snapshots --json lacks {key}");
    }
    assert_eq!(list[0]["agent"], "web-pemkot");
    ok(&mut ctl.cmd(&["verify", "--all"]));
}

#[test]
fn incremental_snapshots_read_and_send_only_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    for i in 0..50 {
        fs::write(src.join(format!("docs/{i}.txt")), bytes(i, 5000)).unwrap();
    }
    let big = bytes(7, 8 * 1024 * 1024);
    fs::write(src.join("db.bin"), &big).unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "simpeg");
    agent.add_dataset("simpeg", &[&src], &[]);
    let first = agent.snapshot();
    assert_eq!(first.bytes_read, 50 * 5000 + big.len() as u64);

    // Nothing changed: no file is read, nothing is sent.
    let second = agent.snapshot();
    assert_eq!((second.bytes_read, second.bytes_sent, second.bytes_new), (0, 0, 0), "{second:?}");

    // One small file changed: only it is read.
    fs::write(src.join("docs/3.txt"), bytes(1000, 5000)).unwrap();
    let third = agent.snapshot();
    assert_eq!(third.bytes_read, 5000, "{third:?}");

    // Bytes inserted in the middle of the big file: it is read again, but
    // content-defined chunking sends only the chunks around the insertion.
    let mut edited = big.clone();
    edited.splice(4_000_000..4_000_000, b"inserted by the application".iter().copied());
    fs::write(src.join("db.bin"), &edited).unwrap();
    let fourth = agent.snapshot();
    assert_eq!(fourth.bytes_read, edited.len() as u64);
    assert!(
        fourth.bytes_sent < 3 * 1024 * 1024,
        "sent {} of {} bytes after a small insertion",
        fourth.bytes_sent,
        edited.len()
    );

    // Every snapshot restores to what the source was at the time.
    let dest = tmp.path().join("r4");
    assert!(ctl.restore(&fourth.id, Some(&src), &dest).status.success());
    assert_same_tree(&src, &dest);
    let dest1 = tmp.path().join("r1");
    assert!(ctl.restore(&first.id, Some(&src.join("db.bin")), &dest1).status.success());
    assert_eq!(fs::read(dest1.join("db.bin")).unwrap(), big);
}

/// Chunker version 2: a page rewritten in a database file (`*.db`, small
/// chunks by default) re-sends well under half of what the same rewrite
/// costs in an ordinary file; `small_chunks = []` gives the database file
/// the standard chunks again. Every version restores identical.
#[test]
fn database_files_get_small_chunks_and_page_rewrites_send_less() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let pages = bytes(21, 8 * 1024 * 1024);
    for name in ["pegawai.db", "pegawai.bin"] {
        fs::write(src.join(name), &pages).unwrap();
    }
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "simpeg");
    agent.add_dataset("simpeg", &[&src], &[]);
    agent.snapshot();
    // The same ten 8 KiB pages rewritten in one file, then in the other.
    let rewrite = |name: &str, seed: u64| {
        let mut d = fs::read(src.join(name)).unwrap();
        for i in 0..10usize {
            let at = 8192 * (31 + 97 * i);
            d[at..at + 8192].copy_from_slice(&bytes(seed + i as u64, 8192));
        }
        fs::write(src.join(name), d).unwrap();
    };
    rewrite("pegawai.db", 100);
    let db = agent.snapshot();
    rewrite("pegawai.bin", 100);
    let bin = agent.snapshot();
    assert_eq!((db.bytes_read, bin.bytes_read), (pages.len() as u64, pages.len() as u64));
    assert!(
        db.bytes_sent * 5 < bin.bytes_sent * 2,
        "sent {} for the .db and {} for the .bin",
        db.bytes_sent,
        bin.bytes_sent
    );
    let dest = tmp.path().join("r");
    assert!(ctl.restore(&bin.id, Some(&src), &dest).status.success());
    assert_same_tree(&src, &dest);

    // Turned off: the .db file is cut like any other, and the next rewrite
    // costs as much as the .bin's did.
    agent.append_config("small_chunks = []\n"); // into the dataset table, the file's last
    rewrite("pegawai.db", 200);
    let standard = agent.snapshot();
    assert!(standard.bytes_sent * 5 > bin.bytes_sent * 3, "sent {} with small_chunks = []", standard.bytes_sent);
}

#[test]
fn dataset_with_several_paths_and_excludes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("srv/simpeg/data");
    let etc = tmp.path().join("etc/simpeg");
    fs::create_dir_all(data.join("cache")).unwrap();
    fs::create_dir_all(&etc).unwrap();
    fs::write(data.join("keep.db"), b"keep").unwrap();
    fs::write(data.join("scratch.tmp"), b"drop").unwrap();
    fs::write(data.join("cache/x"), b"drop").unwrap();
    fs::write(etc.join("simpeg.conf"), b"conf").unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "bkpsdm");
    agent.add_dataset("simpeg", &[&data, &etc], &["*.tmp", "cache/"]);
    let snap = agent.snapshot();
    assert_eq!(snap.files, 2, "{snap:?}");

    // The whole snapshot keeps the absolute layout of both paths.
    let all = tmp.path().join("all");
    assert!(ctl.restore(&snap.id, None, &all).status.success());
    let rel = |p: &Path| all.join(p.strip_prefix("/").unwrap());
    assert_eq!(fs::read(rel(&data).join("keep.db")).unwrap(), b"keep");
    assert_eq!(fs::read(rel(&etc).join("simpeg.conf")).unwrap(), b"conf");
    assert!(!rel(&data).join("scratch.tmp").exists());
    assert!(!rel(&data).join("cache").exists());

    // A single file, by its path on the source host, into an empty directory.
    let one = tmp.path().join("one");
    assert!(ctl.restore("latest", Some(&etc.join("simpeg.conf")), &one).status.success());
    assert_eq!(fs::read(one.join("simpeg.conf")).unwrap(), b"conf");

    // Restore refuses a destination that is not empty, and a path not in the snapshot.
    let out = ctl.restore("latest", None, &one);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an empty directory"));
    let out = ctl.restore("latest", Some(Path::new("/no/such/path")), &tmp.path().join("none"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the snapshot"));

    // `latest` and prefixes resolve; an unknown prefix is a clear error.
    let out = ctl.restore(&snap.id[..8], Some(&etc), &tmp.path().join("by-prefix"));
    assert!(out.status.success());
    let out = run(&mut ctl.cmd(&["verify", "0000000000"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot"));
}

/// F33: an unreadable file or directory is recorded and skipped; its
/// siblings and parents are kept. (As root the agent runs as `nobody` for
/// this test, since root reads everything.)
#[test]
fn f33_unreadable_entries_do_not_drop_siblings() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("locked-dir")).unwrap();
    fs::create_dir_all(src.join("open-dir")).unwrap();
    fs::write(src.join("locked-dir/secret"), b"s").unwrap();
    fs::write(src.join("open-dir/a"), b"a").unwrap();
    fs::write(src.join("locked-file"), b"x").unwrap();
    fs::write(src.join("z-sibling"), b"z").unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    let root = rustix::process::geteuid().is_root();
    if root {
        // Let `nobody` reach the tree, the state and the config.
        for p in [tmp.path(), &src, &src.join("open-dir")] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for p in [&src.join("open-dir/a"), &src.join("z-sibling"), &agent.config] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        ok(std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(&agent.state));
    }
    fs::set_permissions(src.join("locked-dir"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("locked-file"), fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(pulih_e2e::bin("pulih-agent"));
        c
    } else {
        std::process::Command::new(pulih_e2e::bin("pulih-agent"))
    };
    let out = run(cmd.args(["snapshot", "--json", "--config"]).arg(&agent.config));
    // Committed, with problems: exit status 3.
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["errors"], 2, "{out}");
    let dest = tmp.path().join("r");
    assert!(ctl.restore("latest", Some(&src), &dest).status.success());
    assert_eq!(fs::read(dest.join("open-dir/a")).unwrap(), b"a");
    assert_eq!(fs::read(dest.join("z-sibling")).unwrap(), b"z");
    assert!(!dest.join("locked-file").exists());
    assert!(!dest.join("locked-dir").exists());
}

/// F34: a file truncated and extended to the same size between snapshots,
/// and a file replaced by a sparse one, are read again and restored exactly.
#[test]
fn f34_truncated_then_extended_files_are_captured() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), bytes(1, 300_000)).unwrap();
    fs::write(src.join("g"), bytes(2, 300_000)).unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    agent.snapshot();
    let mtime = fs::metadata(src.join("f")).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new().write(true).open(src.join("f")).unwrap();
    f.set_len(0).unwrap();
    f.set_len(300_000).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"new data after truncation", 150_000).unwrap();
    f.set_modified(mtime).unwrap(); // same size and mtime: only ctime tells
    drop(f);
    let g = fs::OpenOptions::new().write(true).truncate(true).open(src.join("g")).unwrap();
    g.set_len(100 * 1024 * 1024).unwrap();
    drop(g);
    let snap = agent.snapshot();
    // f is re-read (only its data extent: the rest is now a hole); g has no data.
    assert!(snap.bytes_read > 0 && snap.bytes_read < 300_000, "{snap:?}");
    let dest = tmp.path().join("r");
    assert!(ctl.restore(&snap.id, Some(&src), &dest).status.success());
    assert_same_tree(&src, &dest);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// F32: random trees (arbitrary-byte names, modes, symlinks, hard links,
    /// sizes across chunk boundaries) round-trip exactly through the real
    /// binaries.
    #[test]
    fn f32_random_trees_round_trip(spec in proptest::collection::vec(
        (proptest::collection::vec(1u8..=255, 1..12), 0u8..4, 0usize..2_200_000, any::<u64>(), 0u32..0o7777),
        1..25,
    )) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        let mut files = Vec::new();
        for (i, (raw, kind, len, seed, mode)) in spec.iter().enumerate() {
            let mut name: Vec<u8> = raw.iter().map(|b| if *b == b'/' { b'_' } else { *b }).collect();
            name.extend_from_slice(format!("-{i}").as_bytes());
            let dir = if i % 2 == 0 { src.clone() } else { src.join("sub") };
            let p = dir.join(OsStr::from_bytes(&name));
            match kind {
                0 | 1 => {
                    fs::write(&p, bytes(*seed, if *kind == 0 { *len } else { len % 3000 })).unwrap();
                    // Keep the owner able to read, so the test can compare.
                    fs::set_permissions(&p, fs::Permissions::from_mode((mode | 0o400) & !0o7000)).unwrap();
                    files.push(p);
                }
                2 => symlink(OsStr::from_bytes(&name), &p).unwrap(),
                _ => {
                    if let Some(target) = files.last() {
                        fs::hard_link(target, &p).unwrap();
                    } else {
                        fs::create_dir(&p).unwrap();
                    }
                }
            }
        }
        let ctl = Controller::start(tmp.path());
        let agent = ctl.enroll(tmp.path(), "prop");
        agent.add_dataset("d", &[&src], &[]);
        let snap = agent.snapshot();
        let dest = tmp.path().join("r");
        let out = ctl.restore(&snap.id, Some(&src), &dest);
        prop_assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_same_tree(&src, &dest);
    }
}

/// Files deleted while the snapshot runs are reported, not fatal; what was
/// captured restores exactly, and nothing stored before is affected.
#[test]
fn files_vanishing_mid_snapshot_are_reported_and_the_rest_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let content = |i: u64| bytes(i, 20_000 + (i as usize % 7) * 1000);
    for i in 0..1500u64 {
        fs::write(src.join(format!("f{i:04}")), content(i)).unwrap();
    }
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    let first = agent.snapshot();
    for i in 0..1500u64 {
        fs::write(src.join(format!("f{i:04}")), content(i + 10_000)).unwrap();
    }
    let deleter = {
        let src = src.clone();
        std::thread::spawn(move || {
            for i in (0..1500u64).rev().step_by(2) {
                let _ = fs::remove_file(src.join(format!("f{i:04}")));
            }
        })
    };
    let out = agent.snapshot_raw();
    deleter.join().unwrap();
    let code = out.status.code();
    assert!(code == Some(0) || code == Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(code == Some(3), v["errors"].as_u64().unwrap() > 0, "{v}");
    ok(&mut ctl.cmd(&["verify", "--all"]));
    // Every file in the new snapshot has its new content.
    let dest = tmp.path().join("r");
    assert!(ctl.restore(v["id"].as_str().unwrap(), Some(&src), &dest).status.success());
    for e in fs::read_dir(&dest).unwrap() {
        let e = e.unwrap();
        let i: u64 = e.file_name().to_str().unwrap()[1..].parse().unwrap();
        assert_eq!(fs::read(e.path()).unwrap(), content(i + 10_000), "{:?}", e.file_name());
    }
    // The earlier snapshot is whole.
    let dest1 = tmp.path().join("r1");
    assert!(ctl.restore(&first.id, Some(&src), &dest1).status.success());
    assert_eq!(fs::read_dir(&dest1).unwrap().count(), 1500);
}
