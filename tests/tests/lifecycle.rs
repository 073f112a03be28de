//! End to end: the storage lifecycle with the real binaries — retention,
//! garbage collection beside running uploads, scrub and self-healing,
//! catalog rebuild, and a full disk during GC.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pulih_e2e::{bytes, describe, ok, run, Agent, Controller};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Writes round `r` of a changing data set: some files keep their content,
/// some change, one returns to the content of three rounds ago (so an
/// upload deduplicates against chunks of a forgotten snapshot, F12).
fn mutate(src: &Path, r: u64) {
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..8u64 {
        let seed = if i < 3 { 1000 + i } else { r * 100 + i };
        let len = 70_000 + (i as usize) * 37_000;
        let dir = if i % 3 == 0 { src.join("sub/deeper") } else { src.to_owned() };
        fs::write(dir.join(format!("f{i}")), bytes(seed, len)).unwrap();
    }
    fs::write(src.join("sub/reverted"), bytes(r.saturating_sub(3) * 7 + 1, 300_000)).unwrap();
    let _ = fs::remove_file(src.join(format!("gone-{}", r.wrapping_sub(1))));
    fs::write(src.join(format!("gone-{r}")), bytes(r + 55, 90_000)).unwrap();
}

fn snapshot_with_retries(agent: &Agent) -> (String, u32) {
    let mut failures = 0;
    loop {
        let out = agent.snapshot_raw();
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let v = json(text.lines().next().unwrap());
            return (v["id"].as_str().unwrap().to_owned(), failures);
        }
        failures += 1;
        assert!(failures < 6, "snapshot keeps failing: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn restore_describe(ctl: &Controller, tmp: &Path, id: &str, src: &Path, n: usize) -> Vec<String> {
    let dest = tmp.join(format!("restore-{n}"));
    let out = ctl.restore(id, Some(src), &dest);
    assert!(out.status.success(), "restore {id}: {}", String::from_utf8_lossy(&out.stderr));
    let d = describe(&dest, false);
    fs::remove_dir_all(&dest).unwrap();
    d
}

/// F12, F13, F14: `gc` with no grace period runs again and again while the
/// agent snapshots changing data, its older snapshots are forgotten, and an
/// incremental reuses chunks of forgotten snapshots. Every snapshot that
/// commits restores identical, and at the end `verify --all` passes and the
/// kept snapshots still restore identical.
#[test]
fn f12_f14_gc_concurrent_with_uploads_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "web");
    agent.add_dataset("www", &[&src], &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let (runs, removed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let gc = {
        let (stop, runs, removed) = (stop.clone(), runs.clone(), removed.clone());
        let dir = ctl.dir.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut c = Command::new(pulih_e2e::bin("pulih-controller"));
                c.args(["gc", "--grace", "0s", "--json", "--data-dir"]).arg(&dir);
                let v = json(&ok(&mut c));
                runs.fetch_add(1, Ordering::Relaxed);
                removed.fetch_add(
                    v["trees_removed"].as_u64().unwrap() + v["chunks_removed"].as_u64().unwrap(),
                    Ordering::Relaxed,
                );
            }
        })
    };

    // A second agent snapshots the same data at the same time: the store
    // shares its blobs physically, so its uploads find blobs "already
    // stored" that the first agent's forgotten snapshots left for GC.
    let db = ctl.enroll(tmp.path(), "db");
    db.add_dataset("mirror", &[&src], &[]);

    let rounds = 12u64;
    let mut kept: Vec<(String, Vec<String>)> = Vec::new();
    let mut retries = 0;
    for r in 0..rounds {
        mutate(&src, r);
        let expected = describe(&src, false);
        let ((id, failed), (db_id, db_failed)) = std::thread::scope(|s| {
            let other = s.spawn(|| snapshot_with_retries(&db));
            let mine = snapshot_with_retries(&agent);
            (mine, other.join().unwrap())
        });
        retries += failed + db_failed;
        assert_eq!(restore_describe(&ctl, tmp.path(), &id, &src, r as usize), expected, "round {r}");
        assert_eq!(restore_describe(&ctl, tmp.path(), &db_id, &src, 1000 + r as usize), expected, "round {r} (db)");
        // The second agent keeps only its latest snapshot.
        if r > 0 {
            let all = ctl.snapshots();
            for s in all.iter().filter(|s| s["agent"] == "db" && s["id"] != db_id.as_str()) {
                ok(&mut ctl.cmd(&["forget", s["id"].as_str().unwrap()]));
            }
        }
        kept.push((id, expected));
        // Keep the last two; forget the rest (their data becomes garbage).
        if kept.len() > 2 {
            let (old, _) = kept.remove(0);
            ok(&mut ctl.cmd(&["forget", &old]));
        }
    }
    stop.store(true, Ordering::Relaxed);
    gc.join().unwrap();
    ok(&mut ctl.cmd(&["gc", "--grace", "0s"]));
    let runs = runs.load(Ordering::Relaxed);
    let removed = removed.load(Ordering::Relaxed);
    eprintln!(
        "{rounds} rounds, {runs} gc runs beside the uploads, {removed} blobs removed, {retries} snapshot retries"
    );
    assert!(runs >= rounds, "gc ran only {runs} times");
    assert!(removed > 0, "nothing was ever collected");

    let v = run(&mut ctl.cmd(&["verify", "--all"]));
    assert!(v.status.success(), "verify: {}", String::from_utf8_lossy(&v.stdout));
    assert_eq!(ctl.snapshots().len(), 3);
    for (i, (id, expected)) in kept.iter().enumerate() {
        assert_eq!(&restore_describe(&ctl, tmp.path(), id, &src, 100 + i), expected);
    }
}

/// Replaces the [[retention]] tables of controller.toml.
fn set_retention(ctl: &Controller, rules: &str) {
    let path = ctl.dir.join("controller.toml");
    let text = fs::read_to_string(&path).unwrap();
    let head = text.split("[[retention]]").next().unwrap();
    let head = head.rsplit_once("\n# Retensi").map_or(head, |(h, _)| h);
    fs::write(&path, format!("{head}\n{rules}")).unwrap();
}

#[test]
fn retention_dry_run_equals_the_real_run() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let ctl = Controller::start(tmp.path());
    let web = ctl.enroll(tmp.path(), "web");
    web.add_dataset("www", &[&src], &[]);
    let mut ids = Vec::new();
    for r in 0..5 {
        mutate(&src, r);
        ids.push(web.snapshot().id);
    }
    set_retention(&ctl, "[[retention]]\nagent = \"web\"\ndataset = \"*\"\nkeep_last = 2\nkeep_daily = 1\n");

    let dry = json(&ok(&mut ctl.cmd(&["prune", "--dry-run", "--json"])));
    let planned: Vec<String> =
        dry["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(planned.len(), 3, "{dry:#}");
    assert_eq!(planned.iter().collect::<std::collections::HashSet<_>>(), ids[..3].iter().collect());
    let decisions = dry["datasets"][0]["decisions"].as_array().unwrap();
    let newest = &decisions[0];
    assert_eq!(newest["id"], ids[4].as_str());
    let reasons: Vec<&str> = newest["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(reasons.contains(&"last 2") && reasons.iter().any(|r| r.starts_with("daily ")), "{reasons:?}");
    assert_eq!(decisions[2]["reasons"][0], "no rule keeps it");
    assert_eq!(ctl.snapshots().len(), 5, "a dry run changes nothing");
    let human = ok(&mut ctl.cmd(&["prune", "--dry-run"]));
    assert!(human.contains("would be removed") && human.contains("no rule keeps it"), "{human}");

    let real = json(&ok(&mut ctl.cmd(&["prune", "--json"])));
    assert_eq!(real["removed"], dry["removed"], "the real run removes exactly what the dry run showed");
    let left: Vec<String> = ctl.snapshots().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(left, ids[3..].to_vec());
    assert!(real["gc"]["chunks_removed"].is_u64());
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());

    // The only snapshot of a dataset survives any policy; `forget` removes it.
    set_retention(&ctl, "[[retention]]\nagent = \"*\"\ndataset = \"*\"\nkeep_within = \"0s\"\n");
    ok(&mut ctl.cmd(&["prune"]));
    assert_eq!(ctl.snapshots().len(), 1);
    ok(&mut ctl.cmd(&["forget", &ids[4]]));
    assert!(ctl.snapshots().is_empty());

    // Every real prune and forget is in the audit log (dry runs are not).
    let db = rusqlite::Connection::open(ctl.dir.join("catalog.db")).unwrap();
    let actions: Vec<String> = db
        .prepare("SELECT action FROM audit_log WHERE action IN ('prune', 'forget', 'gc') ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(actions, ["prune", "prune", "forget"], "{actions:?}");
}

/// F22: a flipped byte in a stored chunk is found by scrub (exit 2, naming
/// the blob and the snapshot); `snapshots` and `verify` show the snapshot
/// damaged; the agent's next snapshot resends the chunk and repairs it.
#[test]
fn f22_flipped_chunk_found_by_scrub_and_repaired_from_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "web");
    agent.add_dataset("www", &[&src], &[]);
    mutate(&src, 0);
    let first = agent.snapshot().id;
    let clean = run(&mut ctl.cmd(&["scrub"]));
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stderr));

    let victim = pulih_e2e::stored::largest_chunk(&ctl.dir);
    let blob = victim.id.clone();
    victim.flip();
    let out = run(&mut ctl.cmd(&["scrub", "--json", "--rate", "100MiB"]));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["damage"][0]["id"], blob.as_str());
    assert_eq!(r["damage"][0]["state"], "damaged");
    assert_eq!(r["damage"][0]["snapshots"][0], first.as_str());
    let human = String::from_utf8_lossy(&run(&mut ctl.cmd(&["scrub"])).stdout).into_owned();
    assert!(human.contains(&blob) && human.contains(&first), "{human}");
    assert_eq!(ctl.snapshots()[0]["state"], "damaged");
    let v = run(&mut ctl.cmd(&["verify", "--all"]));
    assert_eq!(v.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&v.stdout).contains("MARKED DAMAGED"));

    // Self-healing: the agent still has the content. Its next connection
    // is told which chunk is damaged (ReportOk), finds it through the change
    // cache and resends it first, so the snapshot commits at once instead of
    // being refused and retried without the cache.
    let out = ok(&mut agent.cmd(&["snapshot", "--json"]));
    let o = json(out.lines().next().unwrap());
    assert_eq!(o["attempts"], 1, "repaired before the commit: {o}");
    assert_eq!(o["bytes_read"], 0, "nothing else was read: {o}");
    let second = o["id"].as_str().unwrap().to_owned();
    let damage = json(&ok(&mut ctl.cmd(&["damage", "--json"])));
    assert_eq!(damage[0]["state"], "repaired", "{damage:#}");
    let snaps = ctl.snapshots();
    assert!(snaps.iter().all(|s| s["state"] == "ok"), "{snaps:#?}");
    assert_eq!(run(&mut ctl.cmd(&["scrub"])).status.code(), Some(0));
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());
    let dest = tmp.path().join("r");
    assert!(ctl.restore(&first, Some(&src), &dest).status.success());
    pulih_e2e::assert_same_tree(&src, &dest);
    assert_ne!(first, second);
}

/// A damaged tree cannot be asked of an agent: scrub records it `lost` and
/// its snapshot stays marked damaged (never silently good).
#[test]
fn unrepairable_tree_marks_its_snapshots_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "web");
    agent.add_dataset("www", &[&src], &[]);
    mutate(&src, 0);
    let id = agent.snapshot().id;
    let root = ctl.snapshots()[0]["root_tree"].as_str().unwrap().to_owned();
    pulih_e2e::stored::stored_blob(&ctl.dir, true, &root).flip();
    let out = run(&mut ctl.cmd(&["scrub", "--json"]));
    assert_eq!(out.status.code(), Some(2));
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!((r["damage"][0]["kind"].as_str(), r["damage"][0]["state"].as_str()), (Some("tree"), Some("lost")));
    assert_eq!(r["damaged_snapshots"][0], id.as_str());
    // Scrubbing again keeps it damaged.
    assert_eq!(run(&mut ctl.cmd(&["scrub"])).status.code(), Some(2));
    assert_eq!(ctl.snapshots()[0]["state"], "damaged");
    assert_eq!(run(&mut ctl.cmd(&["verify", "--all"])).status.code(), Some(2));
    // GC refuses to guess what an unreadable reachable tree references.
    let gc = run(&mut ctl.cmd(&["gc", "--grace", "0s"]));
    assert!(!gc.status.success());
    assert!(String::from_utf8_lossy(&gc.stderr).contains("cannot be read"), "{}", String::from_utf8_lossy(&gc.stderr));
}

fn remove_catalog(dir: &Path) {
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = fs::remove_file(dir.join(f));
    }
}

/// F7: with catalog.db lost, `rebuild-catalog` recovers every committed
/// snapshot (same ids, roots and counts) and the agents' certificates
/// (revoked ones stay revoked); verify passes and the agent connects again.
#[test]
fn f7_catalog_rebuilt_from_the_store_matches_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut ctl = Controller::start(tmp.path());
    let web = ctl.enroll(tmp.path(), "web");
    web.add_dataset("www", &[&src], &[]);
    let db = ctl.enroll(tmp.path(), "db");
    db.add_dataset("dump", &[&src.join("sub")], &[]);
    for r in 0..3 {
        mutate(&src, r);
        web.snapshot();
        db.snapshot();
    }
    ok(&mut ctl.cmd(&["revoke-agent", "db"]));
    let key = |s: &serde_json::Value| {
        ["id", "agent", "dataset", "root_tree", "files", "bytes", "started_ns", "host", "parent"]
            .map(|k| s[k].to_string())
            .join(" ")
    };
    let before: Vec<String> = ctl.snapshots().iter().map(key).collect();
    assert_eq!(before.len(), 6);

    let refused = run(&mut ctl.cmd(&["rebuild-catalog"]));
    assert!(!refused.status.success(), "must refuse while serve runs or a catalog exists");
    assert!(ctl.stop());
    let refused = run(&mut ctl.cmd(&["rebuild-catalog"]));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    remove_catalog(&ctl.dir);
    let r = json(&ok(&mut ctl.cmd(&["rebuild-catalog", "--json"])));
    assert_eq!(r["snapshots"], 6, "{r:#}");
    assert!(r["damaged"].as_array().unwrap().is_empty());
    let after: Vec<String> = ctl.snapshots().iter().map(key).collect();
    assert_eq!(after, before);
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());
    let agents = json(&ok(&mut ctl.cmd(&["agents", "--json"])));
    let status = |n: &str| agents.as_array().unwrap().iter().find(|a| a["name"] == n).unwrap()["status"].clone();
    assert_eq!((status("web"), status("db")), ("active".into(), "revoked".into()));

    // --force moves the rebuilt catalog aside and rebuilds again.
    let r = json(&ok(&mut ctl.cmd(&["rebuild-catalog", "--force", "--json"])));
    assert!(Path::new(r["moved_aside"].as_str().unwrap()).exists());

    ctl.serve();
    mutate(&src, 9);
    web.snapshot();
    let refused = db.snapshot_raw();
    assert!(!refused.status.success(), "a revoked agent must stay refused after a rebuild");
    assert_eq!(ctl.snapshots().len(), 7);
}

/// F5: garbage collection on a full disk stops with a clear error or
/// finishes, and either way every catalog row has its file and verify
/// passes. Needs permission to mount a small tmpfs (skipped otherwise).
#[test]
fn f5_disk_full_during_gc_leaves_store_and_catalog_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED f5_disk_full_during_gc: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let src = tmp.path().join("src");
    let mut ctl = Controller::start(&mnt);
    let agent = ctl.enroll(tmp.path(), "web");
    agent.add_dataset("www", &[&src], &[]);
    let mut ids = Vec::new();
    for r in 0..4 {
        mutate(&src, r);
        ids.push(agent.snapshot().id);
    }
    ok(&mut ctl.cmd(&["forget", &ids[0], &ids[1]]));
    ctl.stop();
    // Fill the disk to the last byte.
    let mut filler = fs::File::create(mnt.join("filler")).unwrap();
    let block = vec![0x55u8; 64 * 1024];
    use std::io::Write;
    while filler.write_all(&block).is_ok() {}
    let _ = filler.write_all(&block[..1]);
    let full = filler.metadata().unwrap().len();
    drop(filler);

    // Give GC a little more room each time until it completes: the
    // attempts fail at different steps (opening, mid-sweep) or succeed.
    let mut failures = Vec::new();
    for room_kib in [4u64, 16, 24, 32, 40, 48, 64, 128] {
        fs::OpenOptions::new().write(true).open(mnt.join("filler")).unwrap().set_len(full - room_kib * 1024).unwrap();
        let out = run(&mut ctl.cmd(&["gc", "--grace", "0s"]));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("gc with {room_kib} KiB free: {} {}", out.status, err.lines().last().unwrap_or(""));
        if out.status.success() {
            break;
        }
        assert!(err.contains("consistent") || err.contains("nothing changed"), "{err}");
        failures.push(room_kib);
    }
    assert!(!failures.is_empty(), "the disk was never full enough to stop GC");
    // Consistency whatever happened: every row has its file, verify passes.
    fs::remove_file(mnt.join("filler")).unwrap();
    for tree in [false, true] {
        for b in pulih_e2e::stored::stored_blobs(&ctl.dir, tree) {
            let len = fs::metadata(&b.path).map_or(0, |m| m.len());
            let kind = if tree { "tree" } else { "chunk" };
            let in_trash = ctl.dir.join("store/gc-trash").join(format!("{kind}-{}", b.id)).exists();
            assert!(len >= b.offset + b.len || in_trash, "row without its bytes: {b:?}");
        }
    }
    ok(&mut ctl.cmd(&["gc", "--grace", "0s"]));
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());
    assert_eq!(ctl.snapshots().len(), 2);
}

/// The scrub scheduled inside `serve` (`[scrub] interval`) runs on its own
/// connection, finds a flipped byte, marks the snapshot, and stops cleanly
/// with the server.
#[test]
fn f22_scheduled_scrub_inside_serve_finds_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut ctl = Controller::init(tmp.path());
    let cfg = ctl.dir.join("controller.toml");
    let text = fs::read_to_string(&cfg).unwrap().replace("interval = \"7d\"", "interval = \"1s\"");
    fs::write(&cfg, text).unwrap();
    ctl.serve();
    let agent = ctl.enroll(tmp.path(), "web");
    agent.add_dataset("www", &[&src], &[]);
    mutate(&src, 0);
    agent.snapshot();
    pulih_e2e::stored::largest_chunk(&ctl.dir).flip();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let damage = json(&ok(&mut ctl.cmd(&["damage", "--json"])));
        if !damage.as_array().unwrap().is_empty() && ctl.snapshots()[0]["state"] == "damaged" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the scheduled scrub found nothing: {}", ctl.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(ctl.log().contains("scheduled scrub found damage"), "{}", ctl.log());
    // Audited as the scheduler's action, with what it found.
    let rows = json(&ok(&mut ctl.cmd(&["audit", "list", "--limit", "1000", "--json"])));
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["actor"] == "scheduler"
            && r["action"] == "scrub"
            && r["detail"].as_str().unwrap().contains("\"damaged\":1")),
        "{rows:#}"
    );
    assert!(ctl.stop(), "serve must stop cleanly with its scrub thread");
}

/// A controller with agent `web` and one snapshot of dataset `www` (from
/// `src`), stopped: returns them and the snapshot's id.
fn stopped_after_one_snapshot(tmp: &Path) -> (Controller, Agent, PathBuf, String) {
    let src = tmp.join("src");
    let mut ctl = Controller::start(tmp);
    let web = ctl.enroll(tmp, "web");
    web.add_dataset("www", &[&src], &[]);
    mutate(&src, 0);
    let first = web.snapshot().id;
    assert!(ctl.stop());
    (ctl, web, src, first)
}

/// F18: `catalog.db` replaced by an older copy while the controller was
/// stopped. The controller was killed right after the later snapshot, so
/// only the witness written at commit knows of it: `serve` refuses the
/// older catalog with an actionable message until an operator accepts it
/// on the record (`accept-catalog`, audited). Accepting loses nothing but
/// the snapshots made after the copy: the store and the old catalog still
/// verify, the agent's next snapshot (whose change cache names blobs the
/// old catalog does not know) is refused at commit, retried without the
/// cache, and restores identical to the source.
#[test]
fn f18_catalog_rolled_back_to_an_older_copy_is_refused_until_accepted_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, web, src, first) = stopped_after_one_snapshot(tmp.path());
    let old = tmp.path().join("catalog-copy");
    fs::create_dir_all(&old).unwrap();
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        if ctl.dir.join(f).exists() {
            fs::copy(ctl.dir.join(f), old.join(f)).unwrap();
        }
    }
    ctl.serve();
    mutate(&src, 1);
    let lost = web.snapshot().id;

    ctl.kill();
    remove_catalog(&ctl.dir);
    for e in fs::read_dir(&old).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), ctl.dir.join(e.file_name())).unwrap();
    }
    let refused = run(&mut ctl.cmd(&["serve"]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "serve must refuse an older catalog: {err}");
    assert!(err.contains("older than this data directory") && err.contains("snapshot commit"), "{err}");
    assert!(err.contains("accept-catalog"), "the message says what to do: {err}");
    // Still refused on a second try: nothing was changed by the refusal.
    assert!(!run(&mut ctl.cmd(&["serve"])).status.success());
    // Commands that change the catalog or the store refuse it too: a GC
    // working from the older copy could delete what the newest one needs.
    let gc = run(&mut ctl.cmd(&["gc", "--grace", "0s"]));
    assert!(!gc.status.success() && String::from_utf8_lossy(&gc.stderr).contains("older than this data directory"));
    // An explicit decision, with a reason, in the audit log.
    let accepted = ok(&mut ctl.cmd(&["accept-catalog", "--reason", "newest catalog lost with the disk"]));
    assert!(accepted.contains("Accepted"), "{accepted}");
    assert!(ok(&mut ctl.cmd(&["accept-catalog", "--reason", "again"])).contains("nothing to accept"));
    let rows = json(&ok(&mut ctl.cmd(&["audit", "list", "--limit", "1000", "--json"])));
    let row = rows.as_array().unwrap().iter().find(|r| r["action"] == "accept-catalog").expect("audited");
    assert!(row["detail"].as_str().unwrap().contains("newest catalog lost with the disk"), "{row}");
    ctl.serve();
    let ids: Vec<String> = ctl.snapshots().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, [first], "the old catalog lists what it listed when copied (not {lost})");
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());

    mutate(&src, 2);
    let (next, _failures) = snapshot_with_retries(&web);
    let dest = tmp.path().join("restored");
    let out = ctl.restore(&next, Some(&src), &dest);
    assert!(out.status.success(), "restore {next}: {}", String::from_utf8_lossy(&out.stderr));
    pulih_e2e::assert_same_tree(&src, &dest);
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());
    // The agent's snapshot named the lost one as its parent: that is
    // recorded too, per dataset.
    let rows = rollback_rows(&ctl);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0]["detail"].as_str().unwrap().contains(&lost), "{:?}", rows[0]);
}

fn rollback_rows(ctl: &Controller) -> Vec<serde_json::Value> {
    let rows = json(&ok(&mut ctl.cmd(&["audit", "list", "--limit", "1000", "--json"])));
    rows.as_array().unwrap().iter().filter(|r| r["action"] == "rollback-detected").cloned().collect()
}

/// F18 when the whole data directory (catalog, store and the catalog's
/// witness together) is put back from an older copy: nothing at the DRC
/// disagrees, so the agent's memory is the evidence. Its next snapshot
/// names the last one it committed, which the catalog does not know while
/// it knows older ones of the dataset: the commit goes through (the data is
/// safer stored than not), and the audit log and the server's log say that
/// the DRC lost the snapshots after the copy. Forgetting a snapshot is not
/// taken for a rollback.
#[test]
fn f18_whole_data_directory_put_back_from_an_older_copy_is_detected_by_the_agents_next_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, web, src, first) = stopped_after_one_snapshot(tmp.path());
    let copy = tmp.path().join("drc-copy");
    let cp = |from: &Path, to: &Path| {
        let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
        assert!(st.success(), "cp -a {} {}", from.display(), to.display());
    };
    cp(&ctl.dir, &copy);
    ctl.serve();
    mutate(&src, 1);
    let lost = web.snapshot().id;
    assert!(ctl.stop());
    fs::remove_dir_all(&ctl.dir).unwrap();
    cp(&copy, &ctl.dir);
    // Catalog, store and witness agree: serve starts.
    ctl.serve();
    let ids: Vec<String> = ctl.snapshots().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, std::slice::from_ref(&first));
    assert!(rollback_rows(&ctl).is_empty());

    mutate(&src, 2);
    // Without its change cache (as on the retry after a `MissingReference`)
    // the agent still names its last commit, from `www.last.json`.
    let pack = web.state.join("cache/www.pack");
    assert!(pack.exists() && web.state.join("cache/www.last.json").exists());
    fs::remove_file(&pack).unwrap();
    let (next, _failures) = snapshot_with_retries(&web);
    let rows = rollback_rows(&ctl);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let detail = json(rows[0]["detail"].as_str().unwrap());
    assert_eq!(detail["parent_unknown"], lost.as_str(), "{detail}");
    assert_eq!(detail["newest_known"], first.as_str(), "{detail}");
    assert_eq!(detail["snapshot"], next.as_str(), "{detail}");
    assert_eq!(rows[0]["target"], "web/www");
    assert!(ctl.log().contains("looks restored from an older copy"), "{}", ctl.log());
    let dest = tmp.path().join("restored");
    let out = ctl.restore(&next, Some(&src), &dest);
    assert!(out.status.success(), "restore {next}: {}", String::from_utf8_lossy(&out.stderr));
    pulih_e2e::assert_same_tree(&src, &dest);
    assert!(run(&mut ctl.cmd(&["audit", "verify"])).status.success());

    // The next snapshot follows a known one: nothing more. Nor after its
    // parent was forgotten on purpose.
    mutate(&src, 3);
    let after = web.snapshot().id;
    ok(&mut ctl.cmd(&["forget", &after]));
    mutate(&src, 4);
    web.snapshot();
    assert_eq!(rollback_rows(&ctl).len(), 1);
}
