//! Continuous mode when the watcher loses events: the kernel's inotify
//! queue overflows, the agent says so (log and metrics), walks everything,
//! and no change is lost.
//!
//! The queue size is a system-wide setting read when an inotify instance is
//! created, so this test lowers it only while the agent starts, and lives
//! in a test binary of its own (cargo runs test binaries one at a time).

use std::fs;
use std::time::Duration;

use pulih_e2e::*;

const QUEUE: &str = "/proc/sys/fs/inotify/max_queued_events";

#[test]
fn watcher_overflow_falls_back_to_a_rescan_and_loses_no_change() {
    let original = match fs::read_to_string(QUEUE) {
        Ok(v) if fs::write(QUEUE, v.trim()).is_ok() => v.trim().to_owned(),
        _ => {
            assert!(std::env::var_os("CI").is_none(), "CI must run this test as root (it sets {QUEUE})");
            eprintln!("SKIPPED: cannot write {QUEUE} (needs root); the overflow fallback is not tested here");
            return;
        }
    };
    let base = tempfile::tempdir().unwrap();
    let c = Controller::start(base.path());
    let a = c.enroll(base.path(), "ovf");
    let src = base.path().join("data");
    fs::create_dir_all(src.join("burst")).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let port = free_port();
    a.add_dataset_with("q", &[&src], "continuous = true\ndebounce = \"300ms\"");
    a.append_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    fs::write(QUEUE, "8").unwrap();
    let d = a.start_daemon();
    let started = wait_until(Duration::from_secs(20), || d.log().contains("pulih-agent running"));
    fs::write(QUEUE, &original).unwrap();
    assert!(started, "log:\n{}", d.log());
    let snaps = || -> Vec<serde_json::Value> { c.snapshots().into_iter().filter(|s| s["dataset"] == "q").collect() };
    assert!(wait_until(Duration::from_secs(30), || snaps().len() == 1), "log:\n{}", d.log());

    // Far more events than the queue holds, faster than they can be read.
    for i in 0..3000 {
        fs::write(src.join("burst").join(format!("f{i}")), i.to_string()).unwrap();
    }
    // A snapshot that started during the burst may list every file yet hold
    // the directory's mtime from before the last one; the change after it
    // brings another snapshot. Wait for one that started after the burst.
    let burst_end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    assert!(
        wait_until(Duration::from_secs(60), || snaps()
            .last()
            .is_some_and(|s| s["files"] == 3001 && s["started_ns"].as_i64().unwrap_or(0) > burst_end)),
        "every file reached the controller; log:\n{}",
        d.log()
    );
    assert!(d.log().contains("may have missed changes"), "the fallback is logged:\n{}", d.log());
    let (_, metrics) = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("pulih_agent_watcher_fallbacks_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let last = snaps().pop().unwrap();
    let dest = base.path().join("restored");
    let out = c.restore(last["id"].as_str().unwrap(), Some(&src), &dest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&src, &dest);
}
