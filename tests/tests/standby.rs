//! Delta restore, the standby role, failover and failback, end to end with
//! the real binaries over real TLS on loopback.

use std::fs;
use std::path::{Path, PathBuf};
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

/// A controller, a primary `prim` with dataset `www` (one snapshot taken)
/// and an enrolled agent `sb` whose standby root will be `sb-root`.
fn primary_and_standby(base: &Path) -> (Controller, Agent, PathBuf, Agent, PathBuf) {
    let ctl = Controller::start(base);
    let prim = ctl.enroll(base, "prim");
    let src = base.join("prim-data");
    write_tree(&src);
    prim.add_dataset("www", &[&src], &[]);
    prim.snapshot();
    let sb = ctl.enroll(base, "sb");
    (ctl, prim, src, sb, base.join("sb-root"))
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
    let (ctl, prim, src, sb, sb_root) = primary_and_standby(base.path());
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

/// (kind, name, outcome, output) of every step of a drill.
fn drill_steps(show: &Value) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (s(&v["kind"]), s(&v["name"]), s(&v["outcome"]), s(&v["output"])))
        .collect()
}

/// A drill onto a standby agent: the agent restores the system below its
/// root, re-reads the copy on its own host against the snapshot's chunk
/// hashes (a `verify` job), and runs the actions the system names as health
/// checks there, with `PULIH_RESTORE_DIR` pointing at the copy on that host.
/// An action the agent does not declare fails the drill with the reason.
#[test]
fn drill_onto_a_standby_agent_verifies_on_that_host_and_runs_its_actions() {
    let base = tempfile::tempdir().unwrap();
    let (ctl, _prim, src, sb, sb_root) = primary_and_standby(base.path());
    // The check reads a restored file where the agent says the copy is.
    sb.append_config(&format!(
        "[standby]\nenabled = true\nroot = {:?}\npoll_interval = \"300ms\"\naction_timeout = \"30s\"\n\n[standby.actions]\n\
         check = [\"sh\", \"-c\", \"test $(wc -c < \\\"$PULIH_RESTORE_DIR/www/sub/deeper/d\\\") = 10 && echo copy at $PULIH_RESTORE_DIR\"]\n",
        sb_root.to_str().unwrap()
    ));
    // `check` reports the standby role: a root yet to be made is a warning,
    // an action whose program is missing is a problem.
    let out = ok(&mut sb.cmd(&["check", "--lang", "en"]));
    assert!(out.contains("WARNING [standby] root") && out.contains("does not exist yet"), "{out}");
    sb.append_config("bad = [\"/nonexistent/pulih-action\"]\n");
    let o = run(&mut sb.cmd(&["check", "--lang", "en"]));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && text.contains("[standby.actions] bad: \"/nonexistent/pulih-action\" not found"),
        "{text}"
    );
    let cfg = fs::read_to_string(&sb.config).unwrap().replace("bad = [\"/nonexistent/pulih-action\"]\n", "");
    fs::write(&sb.config, cfg).unwrap();
    let sb_daemon = sb.start_daemon();
    let system = |check: &str| {
        let dir = ctl.dir.join("systems");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("web.toml"),
            format!(
                "[system]\nname = \"web\"\ntitle = \"Website Pemkot\"\nopd = \"Diskominfotik\"\ndata_class = \"pokok\"\n\
                 tier = 1\nrpo_target = \"1h\"\nrto_target = \"1h\"\n\n[[dataset]]\nagent = \"prim\"\ndataset = \"www\"\n\n\
                 [restore]\nstandby = \"sb\"\npath = \"drill/web\"\n\n[[health_check]]\nname = \"berkas terbaca\"\n\
                 agent_action = {check:?}\ntimeout = \"30s\"\n"
            ),
        )
        .unwrap();
    };
    system("check");
    let token = ctl.api_token("koordinator", "coordinator");

    let (code, show, _) = ctl.drill_run(&token, &["web"]);
    let steps = drill_steps(&show);
    assert_eq!(code, 0, "{show:#}\n{}", sb_daemon.log());
    assert_eq!(show["drill"]["outcome"], "passed", "{show:#}");
    let copy = sb_root.join("drill/web/www");
    assert_same_tree(&src, &copy);
    let verify = steps.iter().find(|s| s.0 == "verify").unwrap_or_else(|| panic!("{steps:?}"));
    assert_eq!(verify.2, "passed", "{steps:?}");
    assert!(verify.3.starts_with("6 file(s)") && verify.3.contains("re-read"), "{steps:?}");
    let check = steps.iter().find(|s| s.0 == "check").unwrap_or_else(|| panic!("{steps:?}"));
    assert_eq!(check.2, "passed", "{steps:?}");
    assert!(check.3.contains(&format!("copy at {}", sb_root.join("drill/web").display())), "{steps:?}");
    // The re-read ran on the standby, as its own job.
    let jobs = json(&ok(&mut ctl.cmd(&["jobs", "--agent", "sb", "--json"])));
    let v = jobs.as_array().unwrap().iter().find(|j| j["kind"] == "verify").unwrap_or_else(|| panic!("{jobs:#}"));
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["result"]["checked"]["files"], 6, "{v}");
    assert_eq!(v["created_by"], "drill", "{v}");

    // An action the standby's agent.toml does not declare: the drill fails and says why.
    system("not-declared");
    let (code, show, _) = ctl.drill_run(&token, &["web"]);
    assert_ne!(code, 0, "{show:#}");
    assert_eq!(show["drill"]["outcome"], "failed", "{show:#}");
    let steps = drill_steps(&show);
    let check = steps.iter().find(|s| s.0 == "check").unwrap_or_else(|| panic!("{steps:?}"));
    assert_eq!(check.2, "failed", "{steps:?}");
    assert!(check.3.contains("not declared in [standby.actions]"), "{steps:?}");
}
