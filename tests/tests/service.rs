//! The agent as a service (`pulih-agent run`), end to end with the real
//! binaries: continuous replication, outages, hooks, signals, metrics,
//! status and certificate renewal.

use std::fs;
use std::path::Path;
use std::time::Duration;

use pulih_e2e::*;
use rustix::process::Signal;

const WAIT: Duration = Duration::from_secs(30);

/// Snapshots of `dataset` at the controller, oldest first.
fn snaps_of(c: &Controller, dataset: &str) -> Vec<serde_json::Value> {
    c.snapshots().into_iter().filter(|s| s["dataset"] == dataset).collect()
}

fn daemon_settings(metrics_port: u16) -> String {
    format!("[daemon]\nretry_min = \"500ms\"\nretry_max = \"2s\"\nshutdown_timeout = \"10s\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n")
}

fn restore_and_compare(c: &Controller, snapshot: &str, src: &Path, base: &Path, tag: &str) {
    let dest = base.join(format!("restored-{tag}"));
    let out = c.restore(snapshot, Some(src), &dest);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(src, &dest);
}

#[test]
fn continuous_change_reaches_the_controller_and_only_the_change_is_read() {
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "cont");
    let src = base.path().join("data");
    for d in 0..20 {
        let dir = src.join(format!("dir{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            fs::write(dir.join(format!("f{f}")), bytes(d * 100 + f, 2000)).unwrap();
        }
    }
    a.add_dataset_with("www", &[&src], "continuous = true\ndebounce = \"200ms\"\nrpo_target = \"5m\"");
    a.append_config(&daemon_settings(free_port()));
    let mut d = a.start_daemon();
    assert!(wait_until(WAIT, || snaps_of(&c, "www").len() == 1), "first full snapshot; log:\n{}", d.log());
    let first = snaps_of(&c, "www").remove(0);
    assert_eq!(first["files"], 400);

    fs::write(src.join("dir07/f3"), b"changed content").unwrap();
    assert!(wait_until(WAIT, || snaps_of(&c, "www").len() == 2), "change replicated; log:\n{}", d.log());
    let second = snaps_of(&c, "www").remove(1);
    // Work proportional to the change: one file read, 19 directories
    // taken from the parent unread, yet the snapshot counts everything.
    assert_eq!(second["bytes_read"], 15, "{second}");
    assert_eq!(second["files"], 400, "{second}");
    restore_and_compare(&c, second["id"].as_str().unwrap(), &src, base.path(), "1");

    // Creating a directory tree and removing a file are changes too.
    fs::create_dir_all(src.join("new/sub")).unwrap();
    fs::write(src.join("new/sub/x"), b"x").unwrap();
    fs::remove_file(src.join("dir00/f0")).unwrap();
    assert!(
        wait_until(WAIT, || snaps_of(&c, "www").last().is_some_and(|s| s["files"] == 400)
            && snaps_of(&c, "www").len() >= 3),
        "log:\n{}",
        d.log()
    );
    let last = snaps_of(&c, "www").pop().unwrap();
    restore_and_compare(&c, last["id"].as_str().unwrap(), &src, base.path(), "2");

    // The status command shows the dataset, in both languages.
    let id = ok(&mut a.cmd(&["status", "--lang", "id"]));
    assert!(id.contains("www"), "{id}");
    let en = ok(&mut a.cmd(&["status", "--lang", "en"]));
    assert!(en.contains("www") && en != id, "{en}");
    d.signal(Signal::TERM);
    assert!(wait_until(WAIT, || d.exited().is_some()), "stops on SIGTERM");
    assert!(d.exited().unwrap().success());
}

#[test]
fn controller_stopped_and_restarted_mid_stream_is_caught_up() {
    let base = tempfile::tempdir().unwrap();
    let mut c = Controller::start(base.path());
    let a = c.enroll(base.path(), "outage");
    let src = base.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"before").unwrap();
    a.add_dataset_with("db", &[&src], "continuous = true\ndebounce = \"100ms\"");
    a.append_config(&daemon_settings(free_port()));
    let d = a.start_daemon();
    assert!(wait_until(WAIT, || snaps_of(&c, "db").len() == 1), "log:\n{}", d.log());

    assert!(c.stop());
    for i in 0..30 {
        fs::write(src.join(format!("during-{i}")), bytes(i, 50_000)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::write(src.join("a"), b"after").unwrap();
    // The agent fails and backs off meanwhile.
    assert!(wait_until(WAIT, || d.log().contains("will retry")), "log:\n{}", d.log());
    c.serve();
    assert!(
        wait_until(Duration::from_secs(60), || snaps_of(&c, "db").last().is_some_and(|s| s["files"] == 31)),
        "caught up after the outage; log:\n{}",
        d.log()
    );
    let snaps = snaps_of(&c, "db");
    // At most one pending snapshot per dataset: the outage did not queue
    // one snapshot per change.
    assert!(snaps.len() <= 3, "{} snapshots", snaps.len());
    restore_and_compare(&c, snaps.last().unwrap()["id"].as_str().unwrap(), &src, base.path(), "c");
    ok(&mut c.cmd(&["verify", "--all"]));
}

#[test]
fn pre_hook_failure_skips_the_snapshot_and_reports_it() {
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "hooks");
    let src = base.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"x").unwrap();
    let marker = base.path().join("post-ran");
    let port = free_port();
    a.add_dataset_with(
        "pg",
        &[&src],
        &format!(
            "schedule = \"1h\"\npre_hook = \"echo dump failed: disk full >&2; exit 3\"\npost_hook = \"echo $PULIH_PHASE $PULIH_RESULT $PULIH_DATASET > {}\"\nhook_timeout = \"10s\"",
            marker.display()
        ),
    );
    a.append_config(&daemon_settings(port));
    let d = a.start_daemon();
    assert!(wait_until(WAIT, || fs::read_to_string(&marker).is_ok()), "post-hook ran; log:\n{}", d.log());
    assert_eq!(fs::read_to_string(&marker).unwrap().trim(), "post skipped pg");
    assert!(snaps_of(&c, "pg").is_empty(), "no snapshot after a failed pre-hook");
    let status = || ok(&mut a.cmd(&["status", "--lang", "en"]));
    assert!(wait_until(WAIT, || status().contains("dump failed: disk full")), "the reason is shown: {}", status());
    let (code, metrics) = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.lines().any(|l| l.starts_with("pulih_agent_errors_total") && l.contains("pre_hook")), "{metrics}");
}

#[test]
fn sigterm_during_an_upload_leaves_nothing_partial() {
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "term");
    let src = base.path().join("data");
    fs::create_dir_all(&src).unwrap();
    for i in 0..16 {
        fs::write(src.join(format!("big{i}")), bytes(1000 + i, 1 << 20)).unwrap();
    }
    // 16 MiB of incompressible data at 2 MiB/s: the upload is surely
    // running when the signal comes.
    a.add_dataset_with("bulk", &[&src], "schedule = \"1h\"");
    let text = fs::read_to_string(&a.config).unwrap();
    assert!(text.contains("# bandwidth_limit = \"0\""), "template changed: {text}");
    fs::write(&a.config, text.replace("# bandwidth_limit = \"0\"", "bandwidth_limit = \"2MiB\"")).unwrap();
    a.append_config(&daemon_settings(free_port()));
    let mut d = a.start_daemon();
    assert!(wait_until(WAIT, || d.log().contains("starting snapshot")), "log:\n{}", d.log());
    std::thread::sleep(Duration::from_millis(1500));
    d.signal(Signal::TERM);
    assert!(wait_until(Duration::from_secs(15), || d.exited().is_some()), "stops within its shutdown timeout");
    assert!(d.exited().unwrap().success(), "log:\n{}", d.log());
    assert!(snaps_of(&c, "bulk").is_empty(), "nothing committed");
    ok(&mut c.cmd(&["verify", "--all"]));
    // The next run completes.
    let s = a.snapshot();
    assert_eq!(s.files, 16);
}

#[test]
fn sighup_with_a_bad_config_keeps_the_old_one() {
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "hup");
    let src = base.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"1").unwrap();
    a.add_dataset_with("etc", &[&src], "continuous = true\ndebounce = \"100ms\"");
    a.append_config(&daemon_settings(free_port()));
    let mut d = a.start_daemon();
    assert!(wait_until(WAIT, || snaps_of(&c, "etc").len() == 1), "log:\n{}", d.log());

    let good = fs::read_to_string(&a.config).unwrap();
    fs::write(
        &a.config,
        format!("{good}\n[[dataset]]\nname = \"bad\"\npaths = [\"relative/path\"]\nschedul = \"1h\"\n"),
    )
    .unwrap();
    d.signal(Signal::HUP);
    assert!(wait_until(WAIT, || d.log().contains("new configuration refused")), "log:\n{}", d.log());
    assert!(d.log().contains("schedul"), "the reason names the bad key:\n{}", d.log());
    assert!(d.exited().is_none(), "still running");
    // The old configuration is in force: changes still replicate.
    fs::write(src.join("b"), b"2").unwrap();
    assert!(wait_until(WAIT, || snaps_of(&c, "etc").len() == 2), "log:\n{}", d.log());

    // A good new configuration is taken.
    let other = base.path().join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("o"), b"o").unwrap();
    fs::write(&a.config, format!("{good}\n[[dataset]]\nname = \"other\"\npaths = [{:?}]\ncontinuous = true\n", other))
        .unwrap();
    d.signal(Signal::HUP);
    assert!(wait_until(WAIT, || snaps_of(&c, "other").len() == 1), "log:\n{}", d.log());
}

#[test]
fn metrics_endpoint_serves_the_documented_series() {
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "metrics");
    let src = base.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), bytes(1, 10_000)).unwrap();
    let port = free_port();
    a.add_dataset_with("m", &[&src], "continuous = true\nrpo_target = \"5m\"");
    a.append_config(&daemon_settings(port));
    let d = a.start_daemon();
    assert!(wait_until(WAIT, || snaps_of(&c, "m").len() == 1), "log:\n{}", d.log());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    // The agent updates its metrics just after the controller answered.
    let done = "pulih_agent_snapshots_total{dataset=\"m\",outcome=\"ok\"} 1";
    assert!(wait_until(WAIT, || http_get(addr, "/metrics").1.contains(done)), "log:\n{}", d.log());
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    for series in [
        "pulih_agent_last_success_timestamp_seconds{dataset=\"m\"}",
        "pulih_agent_data_timestamp_seconds{dataset=\"m\"}",
        "pulih_agent_replication_lag_seconds{dataset=\"m\"}",
        "pulih_agent_rpo_target_seconds{dataset=\"m\"} 300",
        "pulih_agent_bytes_read_total{dataset=\"m\"} 10000",
        "pulih_agent_bytes_sent_total{dataset=\"m\"}",
        "pulih_agent_chunks_deduplicated_total{dataset=\"m\"}",
        "pulih_agent_snapshot_duration_seconds_bucket{dataset=\"m\"",
        "pulih_agent_snapshots_total{dataset=\"m\",outcome=\"ok\"} 1",
        "pulih_agent_pending_changes{dataset=\"m\"}",
        "pulih_agent_certificate_expiry_timestamp_seconds",
        "pulih_agent_up 1",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    assert_eq!(http_get(addr, "/other").0, 404);
    // The controller knows the target the agent reported.
    let db = c.dir.join("catalog.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    let (rpo, sched): (i64, String) = conn
        .query_row("SELECT rpo_target_secs, schedule FROM datasets WHERE name = 'm'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rpo, sched.as_str()), (300, "continuous"));
}

#[test]
fn the_agent_renews_its_certificate_without_a_restart() {
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "renew");
    let src = base.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let before = fs::read(a.state.join("agent.pem")).unwrap();
    let key_before = fs::read(a.state.join("agent.key")).unwrap();
    a.add_dataset_with("r", &[&src], "continuous = true\ndebounce = \"100ms\"");
    // Certificates last 365 days: "renew 400 days before" renews now.
    a.append_config(&daemon_settings(free_port()).replace("[daemon]\n", "[daemon]\nrenew_before = \"400d\"\n"));
    let d = a.start_daemon();
    assert!(wait_until(WAIT, || d.log().contains("agent certificate renewed")), "log:\n{}", d.log());
    assert_ne!(fs::read(a.state.join("agent.pem")).unwrap(), before);
    assert_ne!(fs::read(a.state.join("agent.key")).unwrap(), key_before, "a new key was made");
    // The renewed certificate works: a change after the renewal replicates.
    fs::write(src.join("b"), b"b").unwrap();
    assert!(wait_until(WAIT, || snaps_of(&c, "r").last().is_some_and(|s| s["files"] == 2)), "log:\n{}", d.log());
    let conn = rusqlite::Connection::open(c.dir.join("catalog.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM certificates c JOIN agents a ON a.id = c.agent_id WHERE a.name = 'renew'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2, "one renewal, not one per check");
    // `check` passes with the renewed certificate.
    ok(&mut a.cmd(&["check", "--lang", "en"]));
}

#[test]
fn check_explains_problems() {
    let base = tempfile::tempdir().unwrap();
    let mut c = Controller::start(base.path());
    let a = c.enroll(base.path(), "chk");
    a.add_dataset_with("x", &[&base.path().join("missing")], "pre_hook = [\"/no/such/program\"]");
    c.stop();
    let out = run(&mut a.cmd(&["check", "--lang", "en"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot be read"), "{text}");
    assert!(text.contains("/no/such/program"), "{text}");
    assert!(text.contains("cannot be reached"), "{text}");
    let id = String::from_utf8_lossy(&run(&mut a.cmd(&["check", "--lang", "id"])).stdout).into_owned();
    assert!(id.contains("tidak dapat dihubungi"), "{id}");
}

#[test]
fn snapshots_taken_by_hand_count_in_the_service_status_and_metrics() {
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "byhand");
    let src = base.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), bytes(3, 5_000)).unwrap();
    // Neither scheduled nor continuous: only snapshots taken by hand.
    a.add_dataset_with("db", &[&src], "rpo_target = \"1h\"");
    let port = free_port();
    a.append_config(&daemon_settings(port));
    // The sysadmin's first snapshot, before the service is enabled.
    let first = a.snapshot();
    let mut d = a.start_daemon();
    // Empty until the service wrote its first status file.
    let status = || String::from_utf8_lossy(&run(&mut a.cmd(&["status", "--lang", "en"])).stdout).into_owned();
    assert!(wait_until(WAIT, || status().contains(&first.id)), "first snapshot in the status: {}", status());
    assert!(!status().contains("none yet"), "{}", status());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let lag = "pulih_agent_replication_lag_seconds{dataset=\"db\"}";
    assert!(wait_until(WAIT, || http_get(addr, "/metrics").1.contains(lag)), "lag metric; log:\n{}", d.log());
    // Another one by hand while the service runs: seen at its next refresh.
    fs::write(src.join("b"), bytes(4, 5_000)).unwrap();
    let second = a.snapshot();
    assert_ne!(first.id, second.id);
    assert!(wait_until(WAIT, || status().contains(&second.id)), "second snapshot in the status: {}", status());
    assert!(d.exited().is_none(), "log:\n{}", d.log());
}
