//! The controller binary's command line: bad input gets a clear error and
//! nothing existing is overwritten.

use std::process::Command;

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pulih-controller"))
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), b"data").unwrap();
    let out = ctl().args(["init", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(dir.path().join("precious")).unwrap(), b"data");
}

#[test]
fn commands_on_a_non_data_directory_explain() {
    let dir = tempfile::tempdir().unwrap();
    let out = ctl().args(["snapshots", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Pulih data directory"));
}

#[test]
fn bad_names_and_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("drc");
    assert!(ctl().args(["init", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&d).status().unwrap().success());
    let out = ctl().args(["enroll-agent", "../etc", "--data-dir"]).arg(&d).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid agent name"));
    let out = ctl().args(["restore", "zz", "/tmp/never", "--data-dir"]).arg(&d).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a snapshot id"));
    let out = ctl().args(["verify", "--data-dir"]).arg(&d).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
}

#[test]
fn wrong_config_key_stops_serve_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("drc");
    assert!(ctl().args(["init", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&d).status().unwrap().success());
    let cfg = d.join("controller.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("idle_timeout_secs", "idle_timeout_sec");
    std::fs::write(&cfg, text).unwrap();
    let out = ctl().args(["serve", "--data-dir"]).arg(&d).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("idle_timeout_sec") && err.contains("controller.toml"), "{err}");
}

#[test]
fn one_server_per_data_directory_and_admin_commands_leave_uploads_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("drc");
    // Port 0 for the API too: the default 7444 may be taken on a shared machine.
    let init =
        ctl().args(["init", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--data-dir"]).arg(&d).status();
    assert!(init.unwrap().success());
    // Killed on every exit of the test, a failed assertion included: a
    // server left behind would hold the test harness's output open.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // A leftover the first server removes once it holds the lock: written
    // before it starts, so a fast start cannot clean up before it exists.
    std::fs::write(d.join("store/tmp/marker-before"), b"x").unwrap();
    let first = KillOnDrop(
        ctl()
            .args(["serve", "--data-dir"])
            .arg(&d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Generous: CI machines are shared and sometimes slow.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Wait until the first server holds the lock (it removes leftovers after).
    while d.join("store/tmp/marker-before").exists() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = ctl().args(["serve", "--data-dir"]).arg(&d).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An upload's temporary file survives admin commands run beside the server.
    std::fs::write(d.join("store/tmp/in-flight"), b"x").unwrap();
    for args in [&["snapshots"][..], &["verify", "--all"], &["agents"]] {
        let st = ctl().args(args).arg("--data-dir").arg(&d).output().unwrap();
        assert!(st.status.success(), "{args:?}: {}", String::from_utf8_lossy(&st.stderr));
    }
    assert!(d.join("store/tmp/in-flight").exists());
    drop(first);
}
