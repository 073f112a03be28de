//! The agent binary's command line: bad input gets a clear error.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pulih-agent"))
}

#[test]
fn unknown_config_key_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[agent]\nname = \"web\"\nstate_dir = \"/tmp/x\"\ncolour = \"blue\"\n[controller]\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = agent().args(["snapshot", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour") && err.contains("agent.toml"), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let out = agent().args(["snapshot", "--config", "/nonexistent/agent.toml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/agent.toml"), "{err}");
}

#[test]
fn config_without_datasets_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[agent]\nname = \"web\"\nstate_dir = \"/tmp/x\"\n[controller]\naddress = \"127.0.0.1:1\"\n")
        .unwrap();
    let out = agent().args(["snapshot", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[[dataset]]"));
}

#[test]
fn enroll_refuses_a_bad_fingerprint_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["enroll", "--controller", "127.0.0.1:1", "--token", "t", "--fingerprint", "nope", "--name", "web"])
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .arg("--config")
        .arg(dir.path().join("a.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fingerprint"));
    assert!(!dir.path().join("a.toml").exists(), "nothing written on failure");
}
