//! End to end: storage operations over the API and `pulihctl` (prune,
//! forget, gc, scrub, damage), the prune and GC scheduled inside `serve`,
//! and the local `audit list` / `audit verify`, with the real binaries.

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use pulih_e2e::{bytes, ok, run, Agent, Controller};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(ctl: &Controller, token: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(&mut ctl.pulihctl(token, &a));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Round `r` of a data set: one file that changes every round (so each
/// snapshot has chunks of its own) and one that never does.
fn round(src: &Path, r: u64) {
    fs::create_dir_all(src).unwrap();
    fs::write(src.join("stable.bin"), bytes(9999, 150_000)).unwrap();
    fs::write(src.join("changing.bin"), bytes(r + 1, 400_000)).unwrap();
}

/// Replaces the [[retention]] tables of controller.toml.
fn set_retention(ctl: &Controller, rules: &str) {
    ctl.edit_config(|text| {
        let head = text.split("[[retention]]").next().unwrap().to_owned();
        let head = head.rsplit_once("\n# Retensi").map_or(head.clone(), |(h, _)| h.to_owned());
        format!("{head}\n{rules}")
    });
}

/// A controller with `[gc] grace = "0s"` (so GC frees at once), `n`
/// snapshots of a changing data set, and a coordinator token.
fn setup(base: &Path, n: u64, edit: impl FnOnce(String) -> String) -> (Controller, Agent, Vec<String>, String) {
    let src = base.join("src");
    let mut ctl = Controller::init(base);
    ctl.edit_config(|t| edit(t.replace("grace = \"24h\"", "grace = \"0s\"")));
    ctl.serve();
    let agent = ctl.enroll(base, "web-pemkot");
    agent.add_dataset("web", &[&src], &[]);
    let ids = (0..n)
        .map(|r| {
            round(&src, r);
            agent.snapshot().id
        })
        .collect();
    let coord = ctl.api_token("coord", "coordinator");
    (ctl, agent, ids, coord)
}

fn audit_rows(ctl: &Controller) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(&mut ctl.cmd(&["audit", "list", "--limit", "1000", "--json"])))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Retention over the API: the dry run shows exactly what the real run
/// removes, with reasons; then forget + gc through pulihctl free the blobs
/// of the forgotten snapshots and `verify --all` still passes.
#[test]
fn prune_forget_gc_over_pulihctl() {
    let tmp = tempfile::tempdir().unwrap();
    // The scheduled prune and GC (daily by default) stay out of the way.
    let (ctl, _agent, ids, coord) = setup(tmp.path(), 5, |t| t);
    set_retention(&ctl, "[[retention]]\nagent = \"*\"\ndataset = \"*\"\nkeep_last = 2\n");
    let auditor = ctl.api_token("aud", "auditor");

    let dry = json_of(&ctl, &coord, &["prune", "--dry-run"]);
    let planned: Vec<&str> = dry["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        planned.iter().copied().collect::<std::collections::HashSet<_>>(),
        ids[..3].iter().map(String::as_str).collect()
    );
    let decisions = dry["datasets"][0]["decisions"].as_array().unwrap();
    assert_eq!(decisions[0]["id"], ids[4].as_str());
    assert_eq!(decisions[0]["reasons"][0], "last 2");
    assert_eq!(decisions[4]["keep"], false);
    assert_eq!(decisions[4]["reasons"][0], "no rule keeps it");
    assert!(dry["gc"].is_null());
    assert_eq!(ctl.snapshots().len(), 5, "a dry run changes nothing");
    let human = ok(&mut ctl.pulihctl(&coord, &["prune", "--dry-run"]));
    assert!(human.contains("would be removed (dry run)") && human.contains("no rule keeps it"), "{human}");
    // An auditor may look at nothing of this kind.
    let o = run(&mut ctl.pulihctl(&auditor, &["prune", "--dry-run"]));
    assert!(stderr(&o).contains("role auditor may not"), "{}", stderr(&o));

    let real = json_of(&ctl, &coord, &["prune"]);
    assert_eq!(real["removed"], dry["removed"], "the real run removes exactly what the dry run showed");
    assert_eq!(real["datasets"], dry["datasets"], "with the same decisions and reasons");
    let left: Vec<String> = ctl.snapshots().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(left, ids[3..].to_vec());

    // Forget one more through pulihctl (by prefix), then collect.
    let stored_before = pulih_e2e::stored::store_bytes(&ctl.dir);
    let out = ok(&mut ctl.pulihctl(&coord, &["forget", &ids[3][..10]]));
    assert!(out.contains("1 snapshot(s) forgotten") && out.contains(&ids[3][..12]), "{out}");
    let o = run(&mut ctl.pulihctl(&coord, &["forget", &ids[3]]));
    assert_eq!(o.status.code(), Some(1), "forgotten twice");
    assert!(stderr(&o).contains("HTTP 404"), "{}", stderr(&o));
    // Touch times have whole seconds: even with no grace, a blob touched in
    // the GC's own second is kept. Let the uploads' second pass.
    std::thread::sleep(Duration::from_millis(1100));
    let gc = json_of(&ctl, &coord, &["gc"]);
    // Each forgotten snapshot had one chunk-set of its own (changing.bin).
    assert!(gc["chunks_removed"].as_u64().unwrap() >= 4, "{gc:#}");
    assert!(gc["bytes_removed"].as_u64().unwrap() >= 4 * 300_000, "{gc:#}");
    assert!(pulih_e2e::stored::store_bytes(&ctl.dir) < stored_before - 1_000_000);
    let human = ok(&mut ctl.pulihctl(&coord, &["gc"]));
    assert!(human.contains("removed 0 tree(s) and 0 chunk(s)"), "nothing left to free: {human}");
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());
    let v = json_of(&ctl, &coord, &["verify", "--all"]);
    assert_eq!((v["snapshots"].as_u64(), v["damage"].as_array().unwrap().len()), (Some(1), 0));

    // Audited with the caller; the dry run is not.
    let rows = audit_rows(&ctl);
    let by = |action: &str| rows.iter().filter(|r| r["action"] == action && r["actor"] == "token:coord").count();
    assert_eq!(by("prune"), 1, "{rows:#?}");
    assert_eq!(by("forget"), 2, "the failed second forget is recorded too");
    assert_eq!(by("gc"), 2);
    let (_, m) = ctl.http("GET", "/metrics", None, None);
    let m = m.as_str().unwrap();
    assert!(m.contains("pulih_prune_last_removed_snapshots 3"), "{m}");
    assert!(m.contains("pulih_prune_last_finished_timestamp_seconds 1"), "{m}");
}

/// F22 over the API: a scrub started with pulihctl finds a flipped byte,
/// `pulihctl damage` lists the blob and the snapshot. A second scrub while
/// one runs is refused (409), its progress is visible, and a slow scrub
/// stops with the server.
#[test]
fn f22_scrub_over_pulihctl_finds_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, _agent, ids, coord) = setup(tmp.path(), 1, |t| t);
    let auditor = ctl.api_token("aud", "auditor");

    // A slow scrub (1 KiB/s): it is still running while we look.
    let started = json_of(&ctl, &coord, &["scrub", "--rate", "1KiB"]);
    assert_eq!(started["current"]["started_by"], "token:coord", "{started:#}");
    let o = run(&mut ctl.pulihctl(&coord, &["scrub"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("a scrub is already running") && stderr(&o).contains("HTTP 409"), "{}", stderr(&o));
    assert!(pulih_e2e::wait_until(Duration::from_secs(20), || {
        let s = json_of(&ctl, &auditor, &["scrub", "status"]);
        s["current"]["blobs_checked"].as_u64() >= Some(1) && s["current"]["blobs_total"].as_u64() > Some(1)
    }));
    let human = ok(&mut ctl.pulihctl(&auditor, &["scrub", "status"]));
    assert!(
        human.contains("Running since") && human.contains("by token:coord") && human.contains("running"),
        "{human}"
    );
    // The server stops promptly, and with it the scrub.
    let t = Instant::now();
    assert!(ctl.stop(), "serve stops cleanly with a scrub running: {}", ctl.log());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    ctl.serve();
    let runs = json_of(&ctl, &auditor, &["scrub", "status"]);
    assert!(runs["current"].is_null());
    assert_eq!(runs["runs"][0]["outcome"], "failed", "{runs:#}");
    assert!(runs["runs"][0]["detail"].as_str().unwrap().contains("shutting down"), "{runs:#}");

    // A clean scrub, then a flipped byte.
    let o = run(&mut ctl.pulihctl(&coord, &["scrub", "--wait"]));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let victim = pulih_e2e::stored::largest_chunk(&ctl.dir);
    let blob = victim.id.clone();
    victim.flip();
    let o = run(&mut ctl.pulihctl(&coord, &["scrub", "--wait"]));
    assert_eq!(o.status.code(), Some(2), "damage found: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("damage"), "{}", stdout(&o));

    let table = ok(&mut ctl.pulihctl(&auditor, &["damage"]));
    assert!(table.contains(&blob) && table.contains("damaged") && table.contains(&ids[0][..12]), "{table}");
    let d = json_of(&ctl, &auditor, &["damage"]);
    assert_eq!(d["blobs"][0]["id"], blob.as_str());
    assert_eq!(d["blobs"][0]["kind"], "chunk");
    assert_eq!(d["snapshots"][0]["id"], ids[0].as_str());
    assert_eq!(d["snapshots"][0]["state"], "damaged");
    let (_, m) = ctl.http("GET", "/metrics", None, None);
    assert!(m.as_str().unwrap().contains(r#"pulih_store_damaged_blobs{state="damaged"} 1"#));
    let rows = audit_rows(&ctl);
    let scrubs: Vec<&Value> = rows.iter().filter(|r| r["action"] == "scrub" && r["actor"] == "token:coord").collect();
    // The slow one (stopped), the clean one, the one that found damage; the refused one is not an action.
    assert_eq!(scrubs.len(), 3, "{rows:#?}");
    assert!(scrubs[0]["result"].as_str().unwrap().contains("shutting down"));
    assert!(scrubs[2]["detail"].as_str().unwrap().contains("\"damaged\":1"), "{:?}", scrubs[2]);
}

/// `[prune]` and `[gc]` scheduled inside `serve`: with 2 s intervals they
/// apply the retention policy and free the forgotten snapshots' blobs on
/// their own, audited as `scheduler`, prune before GC; what is kept
/// verifies, and `serve` stops cleanly.
#[test]
fn scheduled_prune_and_gc_run_inside_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, _agent, ids, _coord) = setup(tmp.path(), 4, |t| t);
    ctl.stop();
    set_retention(&ctl, "[[retention]]\nagent = \"*\"\ndataset = \"*\"\nkeep_last = 1\n");
    ctl.edit_config(|t| t.replace("interval = \"1d\"", "interval = \"2s\""));
    let stored_before = pulih_e2e::stored::store_bytes(&ctl.dir);
    ctl.serve();
    let done = pulih_e2e::wait_until(Duration::from_secs(60), || {
        let rows = audit_rows(&ctl);
        let ok_gc_after_prune = rows
            .iter()
            .position(|r| r["actor"] == "scheduler" && r["action"] == "prune" && r["result"] == "ok")
            .is_some_and(|p| {
                rows[p..].iter().any(|r| r["actor"] == "scheduler" && r["action"] == "gc" && r["result"] == "ok")
            });
        ok_gc_after_prune && ctl.snapshots().len() == 1
    });
    assert!(done, "scheduled prune and gc did not run: {:#?}\n{}", audit_rows(&ctl), ctl.log());
    assert_eq!(ctl.snapshots()[0]["id"], ids[3].as_str());
    let rows = audit_rows(&ctl);
    let prune = rows.iter().find(|r| r["actor"] == "scheduler" && r["action"] == "prune").unwrap();
    let detail: Value = serde_json::from_str(prune["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["removed"].as_array().unwrap().len(), 3, "{detail}");
    // The GC that followed (perhaps the next one) freed the three snapshots' own chunks.
    assert!(pulih_e2e::wait_until(Duration::from_secs(20), || {
        pulih_e2e::stored::store_bytes(&ctl.dir) < stored_before - 900_000
    }));
    assert!(ctl.log().contains("scheduled prune done") && ctl.log().contains("scheduled garbage collection done"));
    let (_, m) = ctl.http("GET", "/metrics", None, None);
    let m = m.as_str().unwrap();
    assert!(m.contains("pulih_prune_last_finished_timestamp_seconds 1"), "{m}");
    let freed: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("pulih_gc_freed_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(freed >= 900_000, "{m}");
    assert!(ctl.stop(), "serve stops cleanly with its scheduler: {}", ctl.log());
    assert!(run(&mut ctl.cmd(&["verify", "--all"])).status.success());
    let o = run(&mut ctl.cmd(&["audit", "verify"]));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

/// The local `audit list` and `audit verify`: the table and JSON, and a
/// broken chain named by its first bad row with exit status 2.
#[test]
fn local_audit_list_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::init(tmp.path());
    for i in 0..4 {
        ctl.api_token(&format!("t{i}"), "auditor");
    }
    let table = ok(&mut ctl.cmd(&["audit", "list", "--limit", "2"]));
    assert_eq!(table.lines().count(), 3, "header and 2 rows: {table}");
    assert!(table.lines().nth(1).unwrap().trim_start().starts_with("1 ") && table.contains("config-change"), "{table}");
    let rows = audit_rows(&ctl);
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[4]["action"], "token-create");
    let after: Value = serde_json::from_str(&ok(&mut ctl.cmd(&["audit", "list", "--after", "3", "--json"]))).unwrap();
    assert_eq!(after.as_array().unwrap().iter().map(|r| r["seq"].as_i64().unwrap()).collect::<Vec<_>>(), [4, 5]);
    let out = ok(&mut ctl.cmd(&["audit", "verify"]));
    assert!(out.contains("Audit log intact: 5 row(s)"), "{out}");

    let db = rusqlite::Connection::open(ctl.dir.join("catalog.db")).unwrap();
    db.execute_batch("UPDATE audit_log SET target = 'someone-else' WHERE seq = 3").unwrap();
    drop(db);
    let o = run(&mut ctl.cmd(&["audit", "verify"]));
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("AUDIT LOG BROKEN at row 3: row 3 was edited"), "{}", stdout(&o));
    let v: Value = serde_json::from_str(&stdout(&run(&mut ctl.cmd(&["audit", "verify", "--json"])))).unwrap();
    assert_eq!((v["ok"].as_bool(), v["first_bad_seq"].as_i64()), (Some(false), Some(3)));
    let o = run(&mut ctl.cmd(&["audit", "list", "--limit", "0"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--limit must be at least 1"), "{}", stderr(&o));
}
