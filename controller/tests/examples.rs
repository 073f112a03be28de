//! `deploy/`: the example configuration is one the controller accepts, and
//! `deploy/install.sh` installs into a staging root without touching an
//! existing configuration.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pulih_controller::config::{self, ControllerConfig, DEFAULT_LISTEN};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

fn deploy(name: &str) -> PathBuf {
    Path::new(DEPLOY).join(name)
}

#[test]
fn controller_example_loads_and_validates() {
    let path = deploy("controller.toml.example");
    let cfg = ControllerConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    cfg.validate().unwrap();
    assert_eq!(cfg.controller.listen, DEFAULT_LISTEN);
}

#[test]
fn controller_example_has_the_keys_and_values_init_writes() {
    let example: toml::Table =
        toml::from_str(&std::fs::read_to_string(deploy("controller.toml.example")).unwrap()).expect("example parses");
    let written: toml::Table =
        toml::from_str(&config::template("drc", DEFAULT_LISTEN, config::DEFAULT_API_LISTEN)).unwrap();
    assert_eq!(example, written, "deploy/controller.toml.example and config::template() disagree");
}

#[test]
fn controller_example_explains_every_key_in_both_languages() {
    let text = std::fs::read_to_string(deploy("controller.toml.example")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        assert!(
            i >= 2 && lines[i - 1].starts_with("# ") && lines[i - 2].starts_with("# "),
            "controller.toml.example:{}: `{line}` needs an Indonesian and an English comment line above it",
            i + 1
        );
    }
}

fn install(args: &[&str], root: &Path, bin_dir: &Path) -> Output {
    let out = Command::new("bash")
        .arg(deploy("install.sh"))
        .args(args)
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(bin_dir)
        .env_remove("PREFIX")
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "install.sh {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[test]
fn install_script_installs_under_a_staging_root_and_keeps_configs() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pulih-controller")).parent().unwrap().to_owned();
    if !bin_dir.join("pulih-agent").exists() {
        println!(
            "skipped: {} is missing (cargo build -p pulih-agent builds it)",
            bin_dir.join("pulih-agent").display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    // A dry run changes nothing, not even the root directory.
    let dry_root = tmp.path().join("dry");
    let out = install(&["--controller", "--agent", "--dry-run"], &dry_root, &bin_dir);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[dry-run]"));
    assert!(!dry_root.exists(), "--dry-run created {}", dry_root.display());

    let root = tmp.path().join("root");
    let out = install(&["--controller", "--agent"], &root, &bin_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Skipping creation of user pulih because of --root"), "{stdout}");
    assert!(stdout.contains("pulih-controller init --data-dir /var/lib/pulih --name"), "{stdout}");
    assert!(stdout.contains("Skipping creation of user pulih-agent because of --root"), "{stdout}");
    assert!(stdout.contains("systemctl enable --now pulih-agent\n"), "{stdout}");
    assert!(!stdout.contains("pulih-agent-snapshot"), "{stdout}");

    let r = |p: &str| root.join(p.trim_start_matches('/'));
    for (path, want) in [
        ("/usr/local/bin/pulih-controller", 0o755),
        ("/usr/local/bin/pulih-agent", 0o755),
        ("/etc/pulih", 0o755),
        ("/etc/pulih/controller.toml.example", 0o644),
        ("/etc/pulih/agent.toml.example", 0o644),
        ("/var/lib/pulih", 0o700),
        ("/var/lib/pulih-agent", 0o700),
        ("/etc/systemd/system/pulih-controller.service", 0o644),
        ("/etc/systemd/system/pulih-agent.service", 0o644),
    ] {
        assert_eq!(mode(&r(path)), want, "mode of {path}: {:o}", mode(&r(path)));
    }
    for unit in ["pulih-controller.service", "pulih-agent.service"] {
        assert_eq!(
            std::fs::read(r(&format!("/etc/systemd/system/{unit}"))).unwrap(),
            std::fs::read(deploy(unit)).unwrap(),
            "{unit} differs from deploy/{unit}"
        );
    }
    assert_eq!(
        std::fs::metadata(r("/usr/local/bin/pulih-controller")).unwrap().len(),
        std::fs::metadata(bin_dir.join("pulih-controller")).unwrap().len()
    );
    // Man pages (one per command and visible subcommand) and completions,
    // generated by the installed binaries themselves.
    for page in [
        "pulih-controller.1",
        "pulih-controller-serve.1",
        "pulih-agent.1",
        "pulih-agent-snapshot.1",
        "pulihctl.1",
        "pulihctl-restore.1",
    ] {
        let path = format!("/usr/local/share/man/man1/{page}");
        assert_eq!(mode(&r(&path)), 0o644, "{path}");
        let text = std::fs::read_to_string(r(&path)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{path} is not a man page:\n{text}");
    }
    let pages = std::fs::read_dir(r("/usr/local/share/man/man1")).unwrap().count();
    assert!(pages > 10, "only {pages} man pages");
    assert!(!r("/usr/local/share/man/man1/pulih-agent-generate.1").exists(), "the hidden subcommand got a page");
    for b in ["pulih-controller", "pulih-agent", "pulihctl"] {
        for (path, needle) in [
            (format!("/usr/local/share/bash-completion/completions/{b}"), "complete -F"),
            (format!("/usr/local/share/zsh/site-functions/_{b}"), "#compdef"),
            (format!("/usr/local/share/fish/vendor_completions.d/{b}.fish"), "complete -c"),
        ] {
            let text = std::fs::read_to_string(r(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(text.contains(needle) && text.contains(b), "{path}:\n{text}");
        }
    }
    let bash = std::fs::read_to_string(r("/usr/local/share/bash-completion/completions/pulih-agent")).unwrap();
    assert!(bash.contains("snapshot") && bash.contains("--config"), "{bash}");

    // enroll writes agent.toml and init writes controller.toml: never the installer.
    assert!(!r("/etc/pulih/agent.toml").exists());
    assert!(!r("/var/lib/pulih/controller.toml").exists());

    // Again, over an existing (edited) installation.
    let agent_toml = r("/etc/pulih/agent.toml");
    let controller_toml = r("/var/lib/pulih/controller.toml");
    std::fs::write(&agent_toml, "# edited by the sysadmin\n[agent]\nname = \"web\"\n").unwrap();
    std::fs::write(&controller_toml, "# edited by the coordinator\n").unwrap();
    std::fs::write(r("/etc/pulih/agent.toml.example"), "# edited\n").unwrap();
    let out = install(&["--controller", "--agent"], &root, &bin_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/etc/pulih/agent.toml exists, left unchanged"), "{stdout}");
    assert!(stdout.contains("/var/lib/pulih/controller.toml exists, left unchanged"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&agent_toml).unwrap(), "# edited by the sysadmin\n[agent]\nname = \"web\"\n");
    assert_eq!(std::fs::read_to_string(&controller_toml).unwrap(), "# edited by the coordinator\n");
    // The example is reference material and is refreshed.
    assert_eq!(
        std::fs::read(r("/etc/pulih/agent.toml.example")).unwrap(),
        std::fs::read(deploy("agent.toml.example")).unwrap()
    );
    assert_eq!(mode(&r("/var/lib/pulih-agent")), 0o700);
    assert!(!r("/etc/systemd/system/pulih-agent-snapshot.timer").exists());

    // An installation that still has the timer of earlier versions is told to remove it.
    std::fs::write(r("/etc/systemd/system/pulih-agent-snapshot.timer"), "[Timer]\n").unwrap();
    let out = install(&["--agent"], &root, &bin_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("systemctl disable --now pulih-agent-snapshot.timer"), "{stdout}");
}

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

/// A copy of `deploy/<unit>` in `dir` whose ExecStart= points at the built
/// binary, since `systemd-analyze verify` checks that the program exists.
fn unit_with_built_binary(unit: &str, dir: &Path) -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pulih-controller")).parent().unwrap();
    let text = std::fs::read_to_string(deploy(unit)).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/"), "{unit}: ExecStart= is not in /usr/local/bin");
    let path = dir.join(unit);
    std::fs::write(&path, text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()))).unwrap();
    path
}

/// The overall exposure `systemd-analyze security --offline=yes` gives `unit`.
pub fn exposure(mut analyze: Command, unit: &Path) -> f64 {
    let out = analyze.args(["security", "--offline=yes", "--no-pager"]).arg(unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level for {}:\n{text}", unit.display()));
    let after = line.rsplit_once(": ").unwrap().1;
    after.split_whitespace().next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn controller_unit_verifies_and_is_hardened() {
    let Some(mut verify) = systemd_analyze() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary("pulih-controller.service", tmp.path());
    let out = verify.arg("verify").arg(&unit).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {}:\n{}",
        unit.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let level = exposure(systemd_analyze().unwrap(), &unit);
    assert!(level <= 2.0, "pulih-controller.service exposure {level} > 2.0");
}

/// Metric names the controller does not export yet: they come with the
/// scrub work and with drills. Everything else an alert or a dashboard
/// uses must be a name `metrics.rs` exports.
const FUTURE_METRICS: [&str; 1] = ["pulih_drill_overdue"];

/// `pulih_...` names used in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .match_indices("pulih_")
        .map(|(i, _)| text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn exported_metrics() -> String {
    let dir = tempfile::tempdir().unwrap();
    let cat = pulih_controller::catalog::Catalog::create(&dir.path().join("c.db"), "t").unwrap();
    let m = pulih_controller::metrics::Metrics::new();
    m.api_request("/x", "GET", 200);
    let mut text = m.render(&cat).unwrap();
    // Labelled gauges appear only with data; their names are constants.
    for name in [
        pulih_controller::metrics::DATASET_LAG,
        pulih_controller::metrics::DATASET_RPO_TARGET,
        pulih_controller::metrics::DATASET_LAST_SNAPSHOT,
        pulih_controller::metrics::DATASET_SNAPSHOTS,
        pulih_controller::metrics::AGENT_LAST_CONTACT,
        pulih_controller::metrics::AGENT_CERT_EXPIRY,
        pulih_controller::metrics::AGENT_ACTIVE,
    ] {
        text.push_str(name);
        text.push('\n');
    }
    text
}

#[test]
fn alert_rules_and_dashboard_use_exported_metric_names() {
    let exported = metric_names(&exported_metrics());
    for file in ["prometheus/pulih-alerts.yml", "grafana/pulih.json"] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} names no metric");
        for name in used {
            assert!(
                exported.contains(&name) || FUTURE_METRICS.contains(&name.as_str()),
                "{file} uses {name}, which the controller does not export"
            );
        }
    }
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(deploy("grafana/pulih.json")).unwrap())
        .expect("dashboard is JSON");
    assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
}

/// `promtool check rules` on the shipped alert rules, when promtool is
/// installed (.ci/run installs it).
#[test]
fn alert_rules_pass_promtool() {
    let out =
        match Command::new("promtool").arg("check").arg("rules").arg(deploy("prometheus/pulih-alerts.yml")).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("promtool not installed: alert rules not checked here (.ci/run installs it)");
                return;
            }
            Err(e) => panic!("running promtool: {e}"),
        };
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
