//! `deploy/agent.toml.example` is a configuration the agent accepts, with
//! every key present and each one explained in Bahasa Indonesia and English;
//! `deploy/pulih-agent.service` passes `systemd-analyze verify` and is
//! hardened (exposure at most 2.5).

use std::path::{Path, PathBuf};
use std::process::Command;

use pulih_agent::config::Settings;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.toml.example");

fn example() -> String {
    std::fs::read_to_string(EXAMPLE).unwrap_or_else(|e| panic!("reading {EXAMPLE}: {e}"))
}

#[test]
fn agent_example_parses() {
    let s = Settings::parse(&example()).unwrap_or_else(|e| panic!("{EXAMPLE}: {e:#}"));
    assert_eq!(s.state_dir, Path::new("/var/lib/pulih-agent"));
    assert_eq!(s.datasets.len(), 1);
    let d = &s.datasets[0];
    assert_eq!(d.name.as_str(), "simpeg");
    assert_eq!(d.paths, [Path::new("/srv/simpeg/data"), Path::new("/etc/simpeg")]);
    assert!(d.exclude.matches(Path::new("/srv/simpeg/data/x.tmp"), "x.tmp".as_ref(), false));
    assert!(d.exclude.matches(Path::new("/srv/simpeg/data/cache"), "cache".as_ref(), true));
    assert!(!d.exclude.matches(Path::new("/srv/simpeg/data/pegawai.db"), "pegawai.db".as_ref(), false));
    assert_eq!(d.mode(), "continuous + daily 01:30");
    assert!(d.pre_hook.is_some() && d.post_hook.is_some());
    assert_eq!(s.metrics, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn agent_example_has_every_key() {
    let v: toml::Table = toml::from_str(&example()).unwrap();
    for (section, keys) in [
        ("agent", &["name", "state_dir"][..]),
        ("controller", &["address", "server_name"][..]),
        ("upload", &["compression_level", "threads", "bandwidth_limit"][..]),
        ("daemon", &["retry_min", "retry_max", "shutdown_timeout", "renew_before", "utc_offset"][..]),
        ("metrics", &["listen", "enabled"][..]),
    ] {
        let t = v[section].as_table().unwrap_or_else(|| panic!("[{section}] missing"));
        for k in keys {
            assert!(t.contains_key(*k), "{section}.{k} missing from {EXAMPLE}");
        }
    }
    let ds = v["dataset"].as_array().expect("[[dataset]] missing");
    for k in [
        "name",
        "paths",
        "exclude",
        "schedule",
        "continuous",
        "debounce",
        "rescan_interval",
        "rpo_target",
        "pre_hook",
        "post_hook",
        "hook_timeout",
    ] {
        assert!(ds[0].as_table().unwrap().contains_key(k), "dataset.{k} missing from {EXAMPLE}");
    }
}

#[test]
fn agent_example_explains_every_key_in_both_languages() {
    let text = example();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        assert!(
            i >= 2 && lines[i - 1].starts_with("# ") && lines[i - 2].starts_with("# "),
            "{EXAMPLE}:{}: `{line}` needs an Indonesian and an English comment line above it",
            i + 1
        );
    }
}

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/pulih-agent.service");

/// `systemd-analyze`, or None when it is missing and that is allowed
/// (outside CI, unless PULIH_REQUIRE_SYSTEMD=1): `.ci/run` installs it.
fn systemd_analyze() -> Option<Command> {
    let present = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    let required = std::env::var_os("CI").is_some() || std::env::var("PULIH_REQUIRE_SYSTEMD").is_ok_and(|v| v == "1");
    match (present, required) {
        (true, _) => Some(Command::new("systemd-analyze")),
        (false, true) => {
            panic!("systemd-analyze is missing (apt-get install systemd); CI or PULIH_REQUIRE_SYSTEMD=1 requires it")
        }
        (false, false) => {
            println!("skipped: systemd-analyze is missing (apt-get install systemd)");
            None
        }
    }
}

/// A copy of the unit whose ExecStart= points at the built binary, since
/// `systemd-analyze verify` checks that the program exists.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pulih-agent")).parent().unwrap();
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/pulih-agent run "), "ExecStart= changed");
    let path = dir.join("pulih-agent.service");
    std::fs::write(&path, text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()))).unwrap();
    path
}

#[test]
fn agent_unit_verifies() {
    let Some(mut verify) = systemd_analyze() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(tmp.path());
    let out = verify.arg("verify").arg(&unit).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {}:\n{}",
        unit.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn agent_unit_is_hardened() {
    let Some(mut analyze) = systemd_analyze() else { return };
    let out = analyze.args(["security", "--offline=yes", "--no-pager", UNIT]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let level: f64 = line.rsplit_once(": ").unwrap().1.split_whitespace().next().unwrap().parse().unwrap();
    assert!(level <= 2.5, "pulih-agent.service exposure {level} > 2.5:\n{text}");
    // The properties the design relies on, beyond the score.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=60s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=pulih-agent",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/pulih-agent",
        "ProtectHome=read-only",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_DAC_READ_SEARCH",
        "AmbientCapabilities=CAP_DAC_READ_SEARCH",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing from {UNIT}");
    }
    let writable: Vec<&str> = unit.lines().filter(|l| l.starts_with("ReadWritePaths=")).collect();
    assert_eq!(writable, ["ReadWritePaths=/var/lib/pulih-agent"], "only the state directory is writable");
}
