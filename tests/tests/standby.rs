//! Delta restore, the standby role, failover and failback, end to end with
//! the real binaries over real TLS on loopback.

use std::fs;
use std::path::Path;
use std::time::Duration;

use pulih_e2e::{assert_same_tree, bytes, ok, run, wait_until, Agent, Controller};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn write_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    fs::write(dir.join("a.txt"), bytes(1, 3000)).unwrap();
    fs::write(dir.join("b.bin"), bytes(2, 300_000)).unwrap();
    fs::write(dir.join("sub/c.dat"), bytes(3, 50_000)).unwrap();
    fs::write(dir.join("sub/deeper/d"), bytes(4, 10)).unwrap();
    fs::write(dir.join("same-size"), bytes(5, 4096)).unwrap();
    // Several chunks: the standby fetches them pipelined.
    fs::write(dir.join("sub/big.bin"), bytes(6, 6 << 20)).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
}

/// `restore --only-changed` writes only the files that differ, leaves the
/// others, keeps extras without `--delete` and removes them with it; the
/// result equals the snapshot.
#[test]
fn delta_restore_writes_only_changed_files() {
    let base = tempfile::tempdir().unwrap();
    let ctl = Controller::start(base.path());
    let a = ctl.enroll(base.path(), "prim");
    let src = base.path().join("data");
    write_tree(&src);
    a.add_dataset("www", &[&src], &[]);
    let snap = a.snapshot().id;
    let dest = base.path().join("dest");
    let o = ctl.restore(&snap, Some(&src), &dest);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Three files differ: same size other content, other size, missing.
    fs::write(dest.join("same-size"), bytes(99, 4096)).unwrap();
    fs::write(dest.join("sub/c.dat"), b"short").unwrap();
    fs::remove_file(dest.join("sub/deeper/d")).unwrap();
    fs::write(dest.join("extra.txt"), b"x").unwrap();
    fs::create_dir_all(dest.join("extra-dir/inner")).unwrap();
    fs::write(dest.join("extra-dir/inner/y"), b"y").unwrap();

    let delta = |extra: &[&str]| -> Value {
        let mut c = ctl.cmd(&["restore", &snap, "--json", "--only-changed", "--path", src.to_str().unwrap()]);
        c.args(extra).arg(&dest);
        json(&ok(&mut c))
    };
    let r = delta(&[]);
    let st = &r["stats"];
    assert_eq!(st["files"], 3, "{r}");
    assert_eq!(st["unchanged"], 3, "{r}");
    assert_eq!(st["deleted"], 0, "{r}");
    assert!(dest.join("extra.txt").exists(), "removed an extra without --delete");
    let r = delta(&["--delete"]);
    let st = &r["stats"];
    assert_eq!((st["files"].as_u64(), st["unchanged"].as_u64()), (Some(0), Some(6)), "{r}");
    assert_eq!(st["deleted"], 4, "extra.txt, extra-dir, inner, y: {r}");
    assert_same_tree(&src, &dest);

    // --delete alone is refused (it would empty nothing safely).
    let o = run(ctl.cmd(&["restore", &snap, "--delete"]).arg(base.path().join("x")));
    assert!(!o.status.success());
}

const ACTION: &str = r#"["sh", "-c", "echo \"$PULIH_SYSTEM\" > \"$PULIH_STANDBY_ROOT/started-$PULIH_AGENT\""]"#;

fn enable_standby(a: &Agent, root: &Path) {
    a.append_config(&format!(
        "[standby]\nenabled = true\nroot = {:?}\npoll_interval = \"300ms\"\naction_timeout = \"30s\"\n\n[standby.actions]\nstart = {ACTION}\n",
        root.to_str().unwrap()
    ));
}

fn system_file(ctl: &Controller) {
    let dir = ctl.dir.join("systems");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("web.toml"),
        r#"
[system]
name = "web"
title = "Website Pemkot"
opd = "Diskominfotik"
data_class = "pokok"
tier = 1
rpo_target = "1h"
rto_target = "1h"

[[dataset]]
agent = "prim"
dataset = "www"

[restore]
standby = "sb"
path = "web"

[[activation]]
name = "start the service"
agent_action = "start"

[[teardown]]
name = "stop the service"
command = "true"
"#,
    )
    .unwrap();
}

/// The latest snapshot of `agent`/`dataset` restored into a fresh directory.
fn latest_restored(ctl: &Controller, agent: &str, dataset: &str, into: &Path) -> bool {
    let snaps = ctl.snapshots();
    let Some(s) = snaps.iter().rev().find(|s| s["agent"] == agent && s["dataset"] == dataset) else { return false };
    let _ = fs::remove_dir_all(into);
    let path = into.parent().unwrap().join("sb-root/web/www");
    ctl.restore(s["id"].as_str().unwrap(), Some(&path), into).status.success()
}

/// Failover onto a standby agent restores the system there, runs its
/// activation action there, and the standby then protects the data; failback
/// brings what changed at the DRC back to the primary with a delta restore.
#[test]
fn f35_failover_to_a_standby_and_failback_round_trip_the_outage_data() {
    let base = tempfile::tempdir().unwrap();
    let ctl = Controller::start(base.path());
    let prim = ctl.enroll(base.path(), "prim");
    let src = base.path().join("prim-data");
    write_tree(&src);
    prim.add_dataset("www", &[&src], &[]);
    prim.snapshot();
    let sb = ctl.enroll(base.path(), "sb");
    let sb_root = base.path().join("sb-root");
    enable_standby(&sb, &sb_root);
    let sb_daemon = sb.start_daemon();
    system_file(&ctl);

    // A job for an agent that never asks expires with a clear message.
    let o = run(&mut ctl.cmd(&["failover", "web", "--to", "nobody", "--pickup-timeout", "2s", "--json"]));
    let r = json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(r["outcome"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("agent nobody has not asked for work"), "{r}");

    let o = run(&mut ctl.cmd(&["failover", "web", "--json"]));
    let r = json(&String::from_utf8_lossy(&o.stdout));
    assert!(o.status.success(), "{r}\n{}", sb_daemon.log());
    assert_eq!(r["outcome"], "succeeded", "{r}");
    assert!(r["rto_achieved_secs"].as_i64().is_some() && r["rpo_achieved_secs"].as_i64().is_some(), "{r}");
    let restored = sb_root.join("web/www");
    assert_same_tree(&src, &restored);
    assert_eq!(fs::read_to_string(sb_root.join("started-sb")).unwrap().trim(), "web", "activation action");
    let state: Value = json(&ok(&mut ctl.cmd(&["failovers", "--json"])));
    assert_eq!(state[0]["target_agent"], "sb");

    // The standby protects the data from its new place.
    fs::write(restored.join("written-during-outage.txt"), b"new order 42").unwrap();
    let check = base.path().join("check");
    assert!(
        wait_until(Duration::from_secs(60), || {
            latest_restored(&ctl, "sb", "www", &check) && check.join("written-during-outage.txt").exists()
        }),
        "a file written at the standby never reached the DRC:\n{}",
        sb_daemon.log()
    );

    // Changes during the outage: one added (above), one modified, one deleted.
    fs::write(restored.join("a.txt"), b"changed at the DRC").unwrap();
    fs::remove_file(restored.join("sub/c.dat")).unwrap();

    // The rebuilt primary runs pulih-agent with [standby] enabled.
    enable_standby(&prim, &base.path().join("prim-root"));
    let prim_daemon = prim.start_daemon();
    let o = run(&mut ctl.cmd(&["failback", "web", "--to", "prim", "--json"]));
    let r = json(&String::from_utf8_lossy(&o.stdout));
    assert!(o.status.success(), "{r}\n{}\n{}", sb_daemon.log(), prim_daemon.log());
    assert_eq!(r["outcome"], "succeeded", "{r}");
    assert_same_tree(&restored, &src);
    assert!(!src.join("sub/c.dat").exists(), "a file deleted at the DRC came back");
    assert_eq!(fs::read(src.join("written-during-outage.txt")).unwrap(), b"new order 42");
    assert!(base.path().join("prim-root/started-prim").exists(), "activation at the primary");

    // Files written by the delta restores: the two changed files (added,
    // modified) in the first sync, nothing in the final one.
    let jobs = json(&ok(&mut ctl.cmd(&["jobs", "--agent", "prim", "--json"])));
    let written: Vec<u64> = jobs
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|j| j["kind"] == "restore")
        .map(|j| j["result"]["stats"]["files"].as_u64().unwrap())
        .collect();
    assert_eq!(written, vec![2, 0], "{jobs:#}");
    let deleted = jobs.as_array().unwrap().iter().rev().find(|j| j["kind"] == "restore").unwrap()["result"]["stats"]
        ["deleted"]
        .as_u64();
    assert_eq!(deleted, Some(1));

    // The standby no longer protects the system; it runs at the primary.
    let protected = fs::read_to_string(sb.state.join("standby-datasets.toml")).unwrap();
    assert!(!protected.contains("www"), "{protected}");
    let rows = json(&ok(&mut ctl.cmd(&["failovers", "--json"])));
    assert_eq!(rows[0]["kind"], "failback");
    assert_eq!(rows[0]["target_agent"], "prim");

    // The same record over the API: pulihctl as an auditor (read-only).
    let auditor = ctl.api_token("inspektorat", "auditor");
    let listed = json(&ok(&mut ctl.pulihctl(&auditor, &["--json", "failovers"])));
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(listed[0]["outcome"], "succeeded");
    let o = run(&mut ctl.pulihctl(&auditor, &["failback", "web", "--to", "prim"]));
    assert!(!o.status.success(), "an auditor may not fail back");
}
