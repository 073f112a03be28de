//! `deploy/agent.toml.example` is a configuration the agent accepts, with
//! every key present and each one explained in Bahasa Indonesia and English.

use std::path::Path;

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
    assert!(d.exclude.excludes(Path::new("/srv/simpeg/data/x.tmp"), "x.tmp".as_ref(), false));
    assert!(d.exclude.excludes(Path::new("/srv/simpeg/data/cache"), "cache".as_ref(), true));
    assert!(!d.exclude.excludes(Path::new("/srv/simpeg/data/pegawai.db"), "pegawai.db".as_ref(), false));
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
