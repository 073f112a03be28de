//! Kills, damage and full disks: nothing partial becomes visible, nothing
//! stored is lost, and the next snapshot resends only what is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pulih_e2e::stored::{store_bytes, stored_blob, stored_blobs};
use pulih_e2e::{assert_same_tree, bin, bytes, ok, run, Controller};

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
        let stored_before = store_bytes(&ctl.dir);
        let child = agent.cmd(&["snapshot", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        // Kill once some chunks are on disk but (most likely) before the
        // commit: 20-30 of the round's 40 MB (incompressible) written.
        wait_for("upload to start", Duration::from_secs(60), || {
            store_bytes(&ctl.dir) > stored_before + 20_000_000 + round * 5_000_000
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
    wait_for("upload to start", Duration::from_secs(60), || store_bytes(&ctl.dir) > 12_000_000);
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

    let chunks = stored_blobs(&ctl.dir, false);
    assert_eq!(chunks.len(), 3);
    // Flip one byte in the middle, tear the end of another, zero the whole
    // third: what a torn or lost write leaves in a pack (F1).
    chunks[0].flip();
    chunks[1].zero_tail(7);
    chunks[2].zero_tail(chunks[2].len);

    let out = run(&mut ctl.cmd(&["verify", &snap.id]));
    assert_eq!(out.status.code(), Some(2), "verify must fail on damage");
    let text = String::from_utf8_lossy(&out.stdout);
    for (i, c) in chunks.iter().enumerate() {
        assert!(text.contains(&c.id), "chunk {i} {} not named:\n{text}", c.id);
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

/// F21: type confusion in the store. The catalog made to locate a chunk at
/// a tree's stored bytes, and a tree at a chunk's: both are well-formed
/// zstd frames of the right kind of size; verify still finds both (the
/// content does not hash to the id, or does not decode as a tree), names
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

    let chunks = stored_blobs(&ctl.dir, false);
    let trees = stored_blobs(&ctl.dir, true);
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert!(trees.len() >= 2, "{trees:?}");
    let confused = |victim: &pulih_e2e::stored::StoredBlob, planted: &pulih_e2e::stored::StoredBlob, what: &str| {
        victim.relocate_to(&ctl.dir, planted);
        let out = run(&mut ctl.cmd(&["verify", &snap.id]));
        assert_eq!(out.status.code(), Some(2), "verify must fail on {what}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&victim.id), "{what}: not named:\n{text}");
        let out = ctl.restore(&snap.id, Some(&src), &tmp.path().join(format!("r-{}", victim.id)));
        assert!(!out.status.success(), "{what}: a restore through it must fail");
        victim.relocate_back(&ctl.dir);
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

/// F15, F7: a chunk the catalog believes stored has vanished from the store
/// (here with the whole pack file holding it). The agent's next snapshot
/// that touches the directory is refused with "missing reference", retries
/// without its change cache, re-uploads what is gone, and the new snapshot
/// is whole; the old one stays reported damaged.
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
    // Lose the pack holding the chunk of the unchanged file.
    let stable_chunk = pulih_core::ChunkId::of(&bytes(5, 200_000)).to_hex();
    let victim = stored_blob(&ctl.dir, false, &stable_chunk);
    assert!(victim.pack.is_some(), "new blobs are packed");
    fs::remove_file(&victim.path).unwrap();
    assert_eq!(run(&mut ctl.cmd(&["verify", &first.id])).status.code(), Some(2));
    // A sibling changes, so the directory's tree is uploaded again.
    fs::write(src.join("changing"), bytes(7, 1000)).unwrap();
    let out = agent.snapshot_raw();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(v["attempts"], 2, "{v}");
    let again = stored_blob(&ctl.dir, false, &stable_chunk);
    assert!(again.path.exists() && again.path != victim.path, "the vanished chunk was not uploaded again");
    let second = v["id"].as_str().unwrap().to_owned();
    ok(&mut ctl.cmd(&["verify", &second]));
    let dest = tmp.path().join("r");
    assert!(ctl.restore(&second, Some(&src), &dest).status.success());
    assert_same_tree(&src, &dest);
    assert_eq!(run(&mut ctl.cmd(&["verify", &first.id])).status.code(), Some(2));
}
