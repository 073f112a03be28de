//! Kills, damage and full disks: nothing partial becomes visible, nothing
//! stored is lost, and the next snapshot resends only what is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pulih_e2e::{assert_same_tree, bin, bytes, ok, run, Controller};

fn count_blobs(dir: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    walk(&e.path(), n);
                } else {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(&dir.join("store/chunks"), &mut n);
    n
}

fn all_chunk_files(dir: &Path) -> Vec<PathBuf> {
    all_blob_files(dir, "chunks")
}

fn all_blob_files(dir: &Path, kind: &str) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("store").join(kind), &mut out);
    out.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() == 64));
    out.sort();
    out
}

fn make_source(src: &Path, files: usize, size: usize, seed: u64) -> u64 {
    fs::create_dir_all(src).unwrap();
    for i in 0..files {
        fs::write(src.join(format!("f{i:03}")), bytes(seed + i as u64, size)).unwrap();
    }
    (files * size) as u64
}

fn set_checkpoint_mib(ctl: &Controller, mib: u64) {
    let p = ctl.dir.join("controller.toml");
    let text = fs::read_to_string(&p).unwrap().replace("checkpoint_mib = 64", &format!("checkpoint_mib = {mib}"));
    fs::write(p, text).unwrap();
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// F3, F6, F11: the controller is SIGKILLed in the middle of uploads. No
/// partial snapshot is ever listed, the store verifies after each restart,
/// and the agent's retry completes by resending only what was not yet
/// recorded as durable.
#[test]
fn f6_controller_killed_mid_upload_resumes_without_partial_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut ctl = Controller::init(tmp.path());
    set_checkpoint_mib(&ctl, 4);
    ctl.serve();
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    for round in 0..3u64 {
        let total = make_source(&src.join(format!("r{round}")), 40, 1_000_000, round * 1000);
        let before = ctl.snapshots().len();
        let blobs_before = count_blobs(&ctl.dir);
        let child = agent.cmd(&["snapshot", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        // Kill once some chunks are on disk but (most likely) before the commit.
        wait_for("upload to start", Duration::from_secs(60), || {
            count_blobs(&ctl.dir) > blobs_before + 40 + round as usize * 10
        });
        ctl.kill();
        assert_eq!(ctl.snapshots().len(), before, "round {round}: a snapshot became visible without its commit");
        ok(&mut ctl.cmd(&["verify", "--all"]));
        ctl.serve();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "round {round}: agent did not recover after the controller restarted");
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
        assert!(v["attempts"].as_u64().unwrap() >= 2, "round {round}: the kill came too late: {v}");
        assert!(
            v["bytes_sent"].as_u64().unwrap() < total,
            "round {round}: the retry resent everything ({} of {total} bytes)",
            v["bytes_sent"]
        );
        assert_eq!(ctl.snapshots().len(), before + 1);
    }
    ok(&mut ctl.cmd(&["verify", "--all"]));
    let dest = tmp.path().join("restored");
    assert!(ctl.restore("latest", Some(&src), &dest).status.success());
    assert_same_tree(&src, &dest);
}

/// F11: the agent is SIGKILLed mid-upload: nothing is listed, and the next
/// snapshot completes sending less than everything.
#[test]
fn f11_agent_killed_mid_upload_next_snapshot_resends_only_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let total = make_source(&src, 60, 1_000_000, 7);
    let mut ctl = Controller::init(tmp.path());
    set_checkpoint_mib(&ctl, 4);
    ctl.serve();
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    let mut child = agent.cmd(&["snapshot"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("upload to start", Duration::from_secs(60), || count_blobs(&ctl.dir) > 20);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ctl.snapshots().is_empty(), "a killed upload left a snapshot");
    let snap = agent.snapshot();
    assert!(snap.bytes_sent < total, "resent everything: {snap:?}");
    ok(&mut ctl.cmd(&["verify", "--all"]));
    let dest = tmp.path().join("r");
    assert!(ctl.restore(&snap.id, Some(&src), &dest).status.success());
    assert_same_tree(&src, &dest);
}

/// F1, F21, F22: a stored chunk flipped, truncated or emptied is found by
/// verify, which names the snapshot, the path and the chunk; restore of the
/// affected file fails loudly instead of writing bad data; other files still
/// restore.
#[test]
fn f22_damaged_chunks_are_named_by_verify_and_refused_by_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("victim-a"), bytes(1, 100_000)).unwrap();
    fs::write(src.join("victim-b"), bytes(2, 100_000)).unwrap();
    fs::write(src.join("victim-c"), bytes(3, 100_000)).unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    let snap = agent.snapshot();
    ok(&mut ctl.cmd(&["verify", "--all"]));

    let chunks = all_chunk_files(&ctl.dir);
    assert_eq!(chunks.len(), 3);
    // Flip one byte in the middle, truncate another, empty the third (F1).
    let mut b = fs::read(&chunks[0]).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    fs::write(&chunks[0], b).unwrap();
    let b = fs::read(&chunks[1]).unwrap();
    fs::write(&chunks[1], &b[..b.len() - 7]).unwrap();
    fs::write(&chunks[2], b"").unwrap();

    let out = run(&mut ctl.cmd(&["verify", &snap.id]));
    assert_eq!(out.status.code(), Some(2), "verify must fail on damage");
    let text = String::from_utf8_lossy(&out.stdout);
    for (i, c) in chunks.iter().enumerate() {
        let id = c.file_name().unwrap().to_str().unwrap();
        assert!(text.contains(id), "chunk {i} {id} not named:\n{text}");
    }
    for name in ["victim-a", "victim-b", "victim-c"] {
        assert!(text.contains(name), "{name} not named:\n{text}");
    }
    assert!(text.contains(&snap.id[..12]));

    let out = ctl.restore(&snap.id, Some(&src), &tmp.path().join("r"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("victim-") && err.contains("damaged") || err.contains("missing"), "{err}");
}

/// F21: type confusion in the store. A tree's stored bytes planted under a
/// chunk's name, and a chunk's under a tree's name, are both well-formed
/// zstd frames of the right kind of size: verify still finds both (the
/// content does not hash to the name, or does not decode as a tree), names
/// them, and a restore refuses them.
#[test]
fn f21_a_tree_planted_as_a_chunk_and_a_chunk_as_a_tree_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/one"), bytes(1, 50_000)).unwrap();
    fs::write(src.join("two"), bytes(2, 50_000)).unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    let snap = agent.snapshot();
    ok(&mut ctl.cmd(&["verify", "--all"]));

    let chunks = all_chunk_files(&ctl.dir);
    let trees = all_blob_files(&ctl.dir, "trees");
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert!(trees.len() >= 2, "{trees:?}");
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_owned();
    let confused = |victim: &Path, planted: &Path, what: &str| {
        let original = fs::read(victim).unwrap();
        fs::copy(planted, victim).unwrap();
        let out = run(&mut ctl.cmd(&["verify", &snap.id]));
        assert_eq!(out.status.code(), Some(2), "verify must fail on {what}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&name(victim)), "{what}: not named:\n{text}");
        let out = ctl.restore(&snap.id, Some(&src), &tmp.path().join(format!("r-{}", name(victim))));
        assert!(!out.status.success(), "{what}: a restore through it must fail");
        fs::write(victim, original).unwrap();
        ok(&mut ctl.cmd(&["verify", &snap.id]));
    };
    confused(&chunks[0], &trees[0], "a tree's frame under a chunk's name");
    confused(&trees[trees.len() - 1], &chunks[1], "a chunk's frame under a tree's name");
}

/// F5: the controller's disk fills up during an upload: the upload fails
/// with a message saying so, the controller keeps running, and everything
/// committed before still verifies and restores.
#[test]
fn f5_disk_full_at_the_controller_loses_nothing_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&small)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP f5_disk_full: cannot mount a size-limited tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    let mut ctl = Controller::start(&small);
    let agent = ctl.enroll(tmp.path(), "opd");
    let src = tmp.path().join("src");
    make_source(&src.join("first"), 4, 1_000_000, 1);
    agent.add_dataset("d", &[&src], &[]);
    let first = agent.snapshot();
    make_source(&src.join("second"), 40, 1_000_000, 100);
    let out = agent.snapshot_raw();
    assert!(!out.status.success(), "an upload larger than the disk succeeded?");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disk is full"), "{err}");
    assert_eq!(ctl.snapshots().len(), 1);
    ok(&mut ctl.cmd(&["verify", "--all"]));
    let dest = tmp.path().join("r");
    assert!(ctl.restore(&first.id, Some(&src.join("first")), &dest).status.success());
    assert_same_tree(&src.join("first"), &dest);
    assert!(ctl.stop(), "controller should still be running and stop cleanly: {}", ctl.log());
    let _ = bin("pulih-controller");
}

/// F15, F7: a chunk the catalog believes stored has vanished from the store.
/// The agent's next snapshot that touches the directory is refused with
/// "missing reference", retries without its change cache, re-uploads the
/// chunk, and the earlier snapshot becomes whole again.
#[test]
fn f15_vanished_base_chunk_forces_reupload() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("stable"), bytes(5, 200_000)).unwrap();
    fs::write(src.join("changing"), bytes(6, 1000)).unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    let first = agent.snapshot();
    // Lose the chunk of the unchanged file.
    let stable_chunk = pulih_core::ChunkId::of(&bytes(5, 200_000)).to_hex();
    let victim = all_chunk_files(&ctl.dir).into_iter().find(|p| p.ends_with(&stable_chunk)).expect("stable's chunk");
    fs::remove_file(&victim).unwrap();
    assert_eq!(run(&mut ctl.cmd(&["verify", &first.id])).status.code(), Some(2));
    // A sibling changes, so the directory's tree is uploaded again.
    fs::write(src.join("changing"), bytes(7, 1000)).unwrap();
    let out = agent.snapshot_raw();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(v["attempts"], 2, "{v}");
    assert!(victim.exists(), "the vanished chunk was not uploaded again");
    ok(&mut ctl.cmd(&["verify", "--all"]));
    let dest = tmp.path().join("r");
    assert!(ctl.restore(&first.id, Some(&src.join("stable")), &dest).status.success());
}
