//! `agent.toml`: what the agent protects and where it sends it.
//!
//! Parsed with unknown keys refused, then validated as a whole (every
//! problem reported at once) and resolved into a [`Settings`] the rest of
//! the agent uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use pulih_core::{AgentName, DatasetName};
use serde::Deserialize;
use time::UtcOffset;

use crate::hooks::Hook;
use crate::schedule::Schedule;
use pulih_core::units::{parse_duration, parse_size};

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub agent: AgentSection,
    pub controller: ControllerSection,
    #[serde(default)]
    pub upload: UploadSection,
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub dataset: Vec<DatasetSection>,
    #[serde(default)]
    pub standby: StandbySection,
}

/// `[standby]`: this agent also receives restores and runs declared actions
/// for failover, failback and drills (jobs it asks the controller for).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandbySection {
    /// Whether `pulih-agent run` asks the controller for standby jobs.
    pub enabled: bool,
    /// Directory restores go below (destinations are relative to it).
    pub root: PathBuf,
    /// How often to ask for work (duration).
    pub poll_interval: String,
    /// Longest run of one action (duration).
    pub action_timeout: String,
    /// NAME = command line or [program, args...]: the only commands a job may run.
    pub actions: std::collections::BTreeMap<String, toml::Value>,
}

impl Default for StandbySection {
    fn default() -> Self {
        Self {
            enabled: false,
            root: PathBuf::from("/srv/pulih"),
            poll_interval: "5s".into(),
            action_timeout: "10m".into(),
            actions: Default::default(),
        }
    }
}

/// Datasets a standby agent protects since a failover (written by the
/// agent itself in its state directory, merged into the configuration).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyDatasets {
    #[serde(default)]
    pub dataset: Vec<StandbyDataset>,
}

/// One protected-after-failover dataset.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StandbyDataset {
    pub name: String,
    pub path: PathBuf,
    /// `continuous` or a schedule such as `every 15m`.
    pub mode: String,
}

/// Name of the file of [`StandbyDatasets`] in the state directory.
pub const STANDBY_DATASETS_FILE: &str = "standby-datasets.toml";

impl StandbyDatasets {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STANDBY_DATASETS_FILE)
    }

    /// Reads the file; a missing file is an empty list.
    pub fn load(state_dir: &Path) -> Result<Self> {
        let p = Self::path(state_dir);
        match std::fs::read_to_string(&p) {
            Ok(t) => toml::from_str(&t).with_context(|| format!("invalid {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        use std::io::Write;
        let p = Self::path(state_dir);
        let tmp = p.with_extension("toml.tmp");
        let text = format!(
            "# Ditulis oleh pulih-agent (failover) / written by pulih-agent after a failover; do not edit.\n{}",
            toml::to_string(self)?
        );
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p).with_context(|| format!("replacing {}", p.display()))?;
        Ok(())
    }

    fn sections(&self) -> Vec<DatasetSection> {
        self.dataset
            .iter()
            .map(|d| {
                let continuous = d.mode == "continuous";
                DatasetSection {
                    name: d.name.clone(),
                    paths: vec![d.path.clone()],
                    exclude: Vec::new(),
                    small_chunks: None,
                    schedule: (!continuous).then(|| d.mode.clone()),
                    continuous,
                    debounce: None,
                    rescan_interval: None,
                    rpo_target: None,
                    pre_hook: None,
                    post_hook: None,
                    hook_timeout: None,
                }
            })
            .collect()
    }
}

/// The resolved `[standby]` section.
#[derive(Debug, Clone)]
pub struct Standby {
    pub root: PathBuf,
    pub poll_interval: Duration,
    pub action_timeout: Duration,
    pub actions: std::collections::BTreeMap<String, Hook>,
    /// Names of the datasets that came from [`StandbyDatasets`].
    pub protected: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Name this agent is enrolled under.
    pub name: String,
    /// Directory for the key, certificates and the change cache.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// HOST:PORT of the controller.
    pub address: String,
    /// Name in the controller's certificate; defaults to the host of `address`.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSection {
    /// zstd level, 1 (fastest) to 19.
    pub compression_level: i32,
    /// Threads that read, chunk, hash and compress; 0 = one per core.
    pub threads: usize,
    /// Bytes per second sent to the controller, as a size ("20MiB"); "0" = unlimited.
    pub bandwidth_limit: String,
}

impl Default for UploadSection {
    fn default() -> Self {
        Self { compression_level: 1, threads: 0, bandwidth_limit: "0".into() }
    }
}

/// How `pulih-agent run` behaves as a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// First wait (a duration) before retrying when the controller is unreachable.
    pub retry_min: String,
    /// Longest wait between retries (the backoff doubles up to this).
    pub retry_max: String,
    /// How long SIGTERM may take: an upload in progress is finished or abandoned within it.
    pub shutdown_timeout: String,
    /// Renew the agent's certificate when less than this is left.
    pub renew_before: String,
    /// UTC offset of calendar schedules ("+07:00"); default: the machine's at startup.
    pub utc_offset: Option<String>,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            retry_min: "5s".into(),
            retry_max: "10m".into(),
            shutdown_timeout: "30s".into(),
            renew_before: "30d".into(),
            utc_offset: None,
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// IP:PORT to serve /metrics on; loopback by default.
    pub listen: String,
    /// Whether to serve metrics at all.
    pub enabled: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into(), enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Dataset name (a-z, 0-9, '-', '_', '.').
    pub name: String,
    /// Absolute paths to protect.
    pub paths: Vec<PathBuf>,
    /// Glob patterns to leave out. A pattern without `/` matches an entry's
    /// name at any depth (`*.tmp`); a trailing `/` means directories only
    /// (`cache/`, `var/cache/`); a pattern starting with `/` matches the
    /// absolute path (`/srv/x/tmp`); any other pattern containing `/` matches
    /// the path relative to the dataset path the entry is under (`logs/*.gz`
    /// matches `<dataset path>/logs/a.gz` only, not deeper). `*` and `?`
    /// never match `/`; `**` matches any number of directories.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Files cut into small chunks (16-256 KiB instead of 64 KiB-1 MiB):
    /// files rewritten in place in small pages, where a page rewrite then
    /// re-sends about 64 KiB instead of about 256 KiB. Same pattern syntax as
    /// `exclude`. Unset: [`DEFAULT_SMALL_CHUNKS`]; `[]` turns it off.
    pub small_chunks: Option<Vec<String>>,
    /// When to snapshot: an interval ("15m") or a calendar expression
    /// ("daily 01:30"); see [`crate::schedule`].
    pub schedule: Option<String>,
    /// Watch the paths and snapshot what changed, shortly after it changed.
    #[serde(default)]
    pub continuous: bool,
    /// Continuous mode: quiet time after a change before the snapshot starts (a duration).
    pub debounce: Option<String>,
    /// Continuous mode: a full rescan at this interval, in case a change was missed.
    pub rescan_interval: Option<String>,
    /// Recovery point objective: how old the DRC copy may get (a duration).
    pub rpo_target: Option<String>,
    /// Command before each snapshot: a string (run with /bin/sh -c) or an array (argv, no shell).
    pub pre_hook: Option<toml::Value>,
    /// Command after each snapshot, also after a failed one; same forms as `pre_hook`.
    pub post_hook: Option<toml::Value>,
    /// Longest time one hook may run (a duration).
    pub hook_timeout: Option<String>,
}

/// Files that get small chunks unless a dataset sets `small_chunks`:
/// database and disk-image files, which are rewritten in place a page at a
/// time. PostgreSQL's relation files have no extension; they live in
/// `base/<db oid>/` and `global/` of the data directory.
pub const DEFAULT_SMALL_CHUNKS: &[&str] = &[
    // SQLite, dBase/FoxPro, Access, Firebird/InterBase
    "*.db",
    "*.sqlite",
    "*.sqlite3",
    "*.db3",
    "*.dbf",
    "*.DBF",
    "*.cdx",
    "*.CDX",
    "*.mdb",
    "*.accdb",
    "*.fdb",
    "*.gdb",
    // MySQL/MariaDB (InnoDB, MyISAM, Aria)
    "*.ibd",
    "ibdata*",
    "*.MYD",
    "*.MYI",
    "*.MAD",
    "*.MAI",
    // SQL Server
    "*.mdf",
    "*.ndf",
    "*.ldf",
    // PostgreSQL relation files
    "**/base/*/[0-9]*",
    "**/global/[0-9]*",
    // disk images
    "*.qcow2",
    "*.vmdk",
    "*.vdi",
    "*.vhd",
    "*.vhdx",
    "*.img",
];

/// Defaults of the per-dataset durations.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// A dataset ready to snapshot.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: DatasetName,
    pub paths: Vec<PathBuf>,
    pub exclude: PathPatterns,
    /// Files cut with [`pulih_core::chunker::Profile::Small`].
    pub small_chunks: PathPatterns,
    /// None with `continuous = false`: manual snapshots only.
    pub schedule: Option<Schedule>,
    pub continuous: bool,
    pub debounce: Duration,
    pub rescan_interval: Duration,
    pub rpo_target: Option<Duration>,
    pub pre_hook: Option<Hook>,
    pub post_hook: Option<Hook>,
    pub hook_timeout: Duration,
}

impl Dataset {
    /// How the dataset is triggered, for status and the controller:
    /// "daily 01:30", "continuous", "continuous + 15m" or "manual".
    pub fn mode(&self) -> String {
        match (self.continuous, &self.schedule) {
            (true, Some(s)) => format!("continuous + {s}"),
            (true, None) => "continuous".into(),
            (false, Some(s)) => s.to_string(),
            (false, None) => "manual".into(),
        }
    }
}

/// Resolved `[daemon]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub shutdown_timeout: Duration,
    pub renew_before: Duration,
    /// Offset calendar schedules are read in.
    pub utc_offset: UtcOffset,
}

/// The machine's UTC offset, read once: the first call (from `main`, while
/// the process has one thread, which reading the local offset requires)
/// fixes it for the life of the process, so a reload uses the same value.
/// UTC, with a warning, when it cannot be read.
pub fn local_offset() -> UtcOffset {
    static OFFSET: OnceLock<UtcOffset> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        UtcOffset::current_local_offset().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the local UTC offset; using UTC for calendar schedules (set [daemon] utc_offset)");
            UtcOffset::UTC
        })
    })
}

/// Parses "+07:00", "-03:30", "+0700", "Z" or "UTC".
fn parse_offset(text: &str) -> Result<UtcOffset, String> {
    let bad = || "expected an offset such as \"+07:00\" (WIB), \"+08:00\" (WITA) or \"+09:00\" (WIT)".to_string();
    let t = text.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return Ok(UtcOffset::UTC);
    }
    let sign = match t.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(bad()),
    };
    let digits: String = t[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || t[1..].len() - digits.len() > 1 {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (digits[..2].parse().map_err(|_| bad())?, digits[2..].parse().map_err(|_| bad())?);
    // Real offsets run from -12:00 to +14:00.
    if m > 59 || h > 14 {
        return Err(bad());
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())
}

/// Reads a hook: a non-empty string or a non-empty array of strings.
fn parse_hook(v: &toml::Value) -> Result<Hook, String> {
    const EXPECTED: &str =
        "expected a command line (run with /bin/sh -c) or an array of strings (program and arguments, no shell)";
    match v {
        toml::Value::String(s) if !s.trim().is_empty() => Ok(Hook::Shell(s.clone())),
        toml::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned).ok_or_else(|| format!("{EXPECTED}; {x} is not a string")))
            .collect::<Result<Vec<_>, _>>()
            .map(Hook::Argv),
        _ => Err(format!("{EXPECTED}, not {v}")),
    }
}

/// Compiled path patterns (`exclude`, `small_chunks`): see
/// [`DatasetSection::exclude`] for the syntax.
#[derive(Debug, Clone, Default)]
pub struct PathPatterns {
    names: Sets,
    absolute: Sets,
    relative: Sets,
}

/// Patterns of one kind: for every entry, and for directories only.
#[derive(Debug, Clone, Default)]
struct Sets {
    any: GlobSet,
    dirs: GlobSet,
}

impl Sets {
    fn is_match(&self, p: impl AsRef<Path>, is_dir: bool) -> bool {
        let p = p.as_ref();
        self.any.is_match(p) || (is_dir && self.dirs.is_match(p))
    }
}

impl PathPatterns {
    /// `key` names the setting in error messages.
    fn compile(key: &str, patterns: &[String]) -> Result<Self, String> {
        struct Builders {
            any: GlobSetBuilder,
            dirs: GlobSetBuilder,
        }
        let new = || Builders { any: GlobSetBuilder::new(), dirs: GlobSetBuilder::new() };
        let (mut names, mut absolute, mut relative) = (new(), new(), new());
        for p in patterns {
            let (body, dirs_only) = match p.strip_suffix('/') {
                Some(b) => (b, true),
                None => (p.as_str(), false),
            };
            if body.is_empty() || body == "/" {
                return Err(format!("{key} pattern {p:?}: matches nothing"));
            }
            let kind = if body.starts_with('/') {
                &mut absolute
            } else if body.contains('/') {
                &mut relative
            } else {
                &mut names
            };
            let glob = GlobBuilder::new(body)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("{key} pattern {p:?}: {e}"))?;
            if dirs_only {
                kind.dirs.add(glob);
            } else {
                kind.any.add(glob);
            }
        }
        let b = |g: Builders| -> Result<Sets, String> {
            let f = |s: GlobSetBuilder| s.build().map_err(|e| e.to_string());
            Ok(Sets { any: f(g.any)?, dirs: f(g.dirs)? })
        };
        Ok(Self { names: b(names)?, absolute: b(absolute)?, relative: b(relative)? })
    }

    /// Whether the entry at the absolute `path` matches; `relative` is its
    /// path relative to the dataset path it is under (empty for a dataset
    /// path itself, which only name and absolute patterns can match).
    pub fn matches(&self, path: &Path, relative: &Path, is_dir: bool) -> bool {
        let name = path.file_name().unwrap_or(path.as_os_str());
        self.names.is_match(name, is_dir)
            || self.absolute.is_match(path, is_dir)
            || self.relative.is_match(relative, is_dir)
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent: AgentName,
    pub state_dir: PathBuf,
    pub address: String,
    pub server_name: String,
    pub compression_level: i32,
    pub threads: usize,
    /// Bytes per second for uploads; None = unlimited.
    pub bandwidth_limit: Option<u64>,
    pub daemon: DaemonSettings,
    /// Address of the metrics endpoint; None when disabled.
    pub metrics: Option<SocketAddr>,
    pub datasets: Vec<Dataset>,
    /// `None` unless `[standby] enabled = true`.
    pub standby: Option<Standby>,
}

impl Settings {
    /// Reads, validates and resolves a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading configuration {}", path.display()))?;
        let raw: RawConfig =
            toml::from_str(&text).with_context(|| format!("invalid configuration {}", path.display()))?;
        // Datasets protected since a failover live in the state directory,
        // written by the agent, so agent.toml stays the sysadmin's own.
        let extra = if raw.standby.enabled && raw.agent.state_dir.is_absolute() {
            StandbyDatasets::load(&raw.agent.state_dir)?
        } else {
            StandbyDatasets::default()
        };
        Self::resolve(raw, &extra).with_context(|| format!("invalid configuration {}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self> {
        Self::resolve(toml::from_str(text)?, &StandbyDatasets::default())
    }

    fn resolve(mut raw: RawConfig, extra: &StandbyDatasets) -> Result<Self> {
        let protected: Vec<String> = extra.dataset.iter().map(|d| d.name.clone()).collect();
        raw.dataset.extend(extra.sections());
        let mut problems = Vec::new();
        let agent = AgentName::new(&raw.agent.name).map_err(|e| problems.push(format!("agent.name: {e}"))).ok();
        if !raw.agent.state_dir.is_absolute() {
            problems.push(format!("agent.state_dir {:?} must be an absolute path", raw.agent.state_dir));
        }
        let host = raw
            .controller
            .address
            .rsplit_once(':')
            .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p.parse::<u16>()));
        let server_name = match (&host, &raw.controller.server_name) {
            (Some((_, Err(_))), _) | (None, _) => {
                problems.push(format!("controller.address {:?} must be HOST:PORT", raw.controller.address));
                String::new()
            }
            (_, Some(n)) => n.clone(),
            (Some((h, Ok(_))), None) => h.clone(),
        };
        if !(1..=19).contains(&raw.upload.compression_level) {
            problems.push(format!("upload.compression_level {} must be 1 to 19", raw.upload.compression_level));
        }
        // A duration key: the problem names the key and the text.
        let mut duration = |at: &str, text: &str, default: Duration, positive: bool| -> Duration {
            match parse_duration(text) {
                Ok(d) if positive && d.is_zero() => {
                    problems.push(format!("{at} {text:?}: must be more than 0"));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{at} {text:?}: {e}"));
                    default
                }
            }
        };
        let daemon_raw = &raw.daemon;
        // The fallback values never reach Settings: a problem means an error.
        let retry_min = duration("daemon.retry_min", &daemon_raw.retry_min, Duration::ZERO, true);
        let retry_max = duration("daemon.retry_max", &daemon_raw.retry_max, Duration::ZERO, true);
        let shutdown_timeout = duration("daemon.shutdown_timeout", &daemon_raw.shutdown_timeout, Duration::ZERO, true);
        let renew_before = duration("daemon.renew_before", &daemon_raw.renew_before, Duration::ZERO, true);
        let mut dataset_durations = Vec::new();
        for (i, d) in raw.dataset.iter().enumerate() {
            let at = format!("dataset[{i}] {:?}", d.name);
            let mut get = |key: &str, v: &Option<String>, default: Duration, positive: bool| match v {
                Some(text) => duration(&format!("{at}: {key}"), text, default, positive),
                None => default,
            };
            let debounce = get("debounce", &d.debounce, DEFAULT_DEBOUNCE, false);
            let rescan = get("rescan_interval", &d.rescan_interval, DEFAULT_RESCAN_INTERVAL, true);
            let hook_timeout = get("hook_timeout", &d.hook_timeout, DEFAULT_HOOK_TIMEOUT, true);
            let rpo = d.rpo_target.as_ref().map(|_| get("rpo_target", &d.rpo_target, Duration::ZERO, true));
            dataset_durations.push((debounce, rescan, hook_timeout, rpo));
        }
        if retry_min > retry_max {
            problems.push(format!(
                "daemon.retry_min {:?} is longer than daemon.retry_max {:?}",
                daemon_raw.retry_min, daemon_raw.retry_max
            ));
        }
        let utc_offset = match &daemon_raw.utc_offset {
            None => local_offset(),
            Some(t) => parse_offset(t).unwrap_or_else(|e| {
                problems.push(format!("daemon.utc_offset {t:?}: {e}"));
                UtcOffset::UTC
            }),
        };
        let bandwidth_limit = match parse_size(&raw.upload.bandwidth_limit) {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(format!("upload.bandwidth_limit {:?}: {e}", raw.upload.bandwidth_limit));
                None
            }
        };
        let metrics = match raw.metrics.listen.parse::<SocketAddr>() {
            Ok(a) => raw.metrics.enabled.then_some(a),
            Err(_) => {
                problems.push(format!(
                    "metrics.listen {:?}: expected IP:PORT such as \"127.0.0.1:9464\" (a host name is not accepted)",
                    raw.metrics.listen
                ));
                None
            }
        };
        let mut datasets = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, d) in raw.dataset.iter().enumerate() {
            let at = format!("dataset[{i}] {:?}", d.name);
            let name = DatasetName::new(&d.name).map_err(|e| problems.push(format!("{at}: {e}"))).ok();
            if !seen.insert(d.name.clone()) {
                problems.push(format!("{at}: duplicate dataset name"));
            }
            if d.paths.is_empty() {
                problems.push(format!("{at}: paths is empty"));
            }
            for p in &d.paths {
                if !p.is_absolute() {
                    problems.push(format!("{at}: path {p:?} must be absolute"));
                }
            }
            for (a, pa) in d.paths.iter().enumerate() {
                for pb in d.paths.iter().skip(a + 1) {
                    if pa.starts_with(pb) || pb.starts_with(pa) {
                        problems.push(format!("{at}: paths {pa:?} and {pb:?} overlap"));
                    }
                }
            }
            let exclude =
                PathPatterns::compile("exclude", &d.exclude).map_err(|e| problems.push(format!("{at}: {e}"))).ok();
            let small =
                d.small_chunks.clone().unwrap_or_else(|| DEFAULT_SMALL_CHUNKS.iter().map(|p| p.to_string()).collect());
            let small_chunks =
                PathPatterns::compile("small_chunks", &small).map_err(|e| problems.push(format!("{at}: {e}"))).ok();
            let schedule = d
                .schedule
                .as_ref()
                .and_then(|t| Schedule::parse(t).map_err(|e| problems.push(format!("{at}: schedule {t:?}: {e}"))).ok());
            let mut hook = |key: &str, v: &Option<toml::Value>| {
                v.as_ref().and_then(|v| parse_hook(v).map_err(|e| problems.push(format!("{at}: {key}: {e}"))).ok())
            };
            let pre_hook = hook("pre_hook", &d.pre_hook);
            let post_hook = hook("post_hook", &d.post_hook);
            let (debounce, rescan_interval, hook_timeout, rpo_target) = dataset_durations[i];
            if let (Some(name), Some(exclude), Some(small_chunks)) = (name, exclude, small_chunks) {
                datasets.push(Dataset {
                    name,
                    paths: d.paths.clone(),
                    exclude,
                    small_chunks,
                    schedule,
                    continuous: d.continuous,
                    debounce,
                    rescan_interval,
                    rpo_target,
                    pre_hook,
                    post_hook,
                    hook_timeout,
                });
            }
        }
        let standby = if raw.standby.enabled {
            let st = &raw.standby;
            if !st.root.is_absolute() {
                problems.push(format!("standby.root {:?} must be an absolute path", st.root));
            }
            let poll_interval = parse_duration(&st.poll_interval).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                problems
                    .push(format!("standby.poll_interval {:?}: expected a duration such as \"5s\"", st.poll_interval))
            });
            let action_timeout = parse_duration(&st.action_timeout).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                problems.push(format!(
                    "standby.action_timeout {:?}: expected a duration such as \"10m\"",
                    st.action_timeout
                ))
            });
            let mut actions = std::collections::BTreeMap::new();
            for (name, v) in &st.actions {
                match parse_hook(v) {
                    Ok(h) => {
                        actions.insert(name.clone(), h);
                    }
                    Err(e) => problems.push(format!("standby.actions.{name}: {e}")),
                }
            }
            match (poll_interval, action_timeout) {
                (Ok(poll_interval), Ok(action_timeout)) => {
                    Some(Standby { root: st.root.clone(), poll_interval, action_timeout, actions, protected })
                }
                _ => None,
            }
        } else {
            if !raw.standby.actions.is_empty() {
                problems.push("standby.actions are declared but [standby] enabled is not true".into());
            }
            None
        };
        if !problems.is_empty() {
            bail!("{}", problems.join("\n  "));
        }
        let threads = if raw.upload.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            raw.upload.threads
        };
        Ok(Self {
            agent: agent.expect("validated"),
            state_dir: raw.agent.state_dir,
            address: raw.controller.address,
            server_name,
            compression_level: raw.upload.compression_level,
            threads,
            bandwidth_limit,
            daemon: DaemonSettings { retry_min, retry_max, shutdown_timeout, renew_before, utc_offset },
            metrics,
            datasets,
            standby,
        })
    }

    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("agent.key")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join("agent.pem")
    }
    pub fn ca_path(&self) -> PathBuf {
        self.state_dir.join("ca.pem")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }
}

/// The commented file `enroll` writes.
pub fn template(name: &str, state_dir: &Path, address: &str) -> String {
    format!(
        r#"# Konfigurasi agen Pulih / Pulih agent configuration.
# Kunci yang tidak dikenal ditolak / unknown keys are rejected.

[agent]
# Nama agen, sesuai sertifikatnya / the name this agent is enrolled under.
name = "{name}"
# Kunci, sertifikat dan cache perubahan / key, certificates and change cache.
state_dir = "{state}"

[controller]
# Alamat pengendali DRC (HOST:PORT) / address of the DRC controller.
address = "{address}"
# Nama di sertifikat pengendali; bawaan: HOST dari address
# Name in the controller's certificate; default: HOST of address.
# server_name = "drc.example.go.id"

[upload]
# Tingkat kompresi zstd 1-19 (1 tercepat) / zstd level 1-19 (1 is fastest).
compression_level = 1
# Thread baca/hash/kompresi; 0 = satu per inti / worker threads; 0 = one per core.
threads = 0
# Batas bandwidth unggah per detik ("20MiB", "500KiB"); "0" = tanpa batas.
# Upload bandwidth limit per second ("20MiB", "500KiB"); "0" = unlimited.
# bandwidth_limit = "0"

# Perilaku `pulih-agent run` sebagai layanan / how `pulih-agent run` behaves as a service.
# Durasi: "500ms", "30s", "15m", "1h30m", "7d" / durations: "500ms", "30s", "15m", "1h30m", "7d".
# [daemon]
# Jeda pertama dan terlama sebelum mencoba lagi saat pengendali tidak terjangkau.
# First and longest wait before retrying while the controller is unreachable.
# retry_min = "5s"
# retry_max = "10m"
# Batas waktu berhenti (SIGTERM); unggahan yang berjalan diselesaikan atau dibatalkan.
# Time allowed to stop (SIGTERM); an upload in progress is finished or abandoned.
# shutdown_timeout = "30s"
# Perbarui sertifikat agen bila sisa masa berlakunya kurang dari ini.
# Renew the agent's certificate when less than this is left.
# renew_before = "30d"
# Zona waktu jadwal kalender; bawaan: zona mesin saat mulai (WIB "+07:00", WITA "+08:00", WIT "+09:00").
# UTC offset of calendar schedules; default: the machine's at startup.
# utc_offset = "+07:00"

# Metrik Prometheus di /metrics / Prometheus metrics at /metrics.
# [metrics]
# Alamat IP:PORT; bawaan hanya loopback / IP:PORT; loopback only by default.
# listen = "127.0.0.1:9464"
# enabled = true

# Dataset yang dilindungi; tambahkan sesuai kebutuhan.
# Datasets to protect; add as many as needed.
#
# Pola exclude: tanpa "/" cocok dengan nama entri di kedalaman mana pun ("*.tmp").
# Exclude patterns: one without "/" matches an entry's name at any depth ("*.tmp").
# Akhiran "/" berarti hanya direktori ("cache/", "var/cache/").
# A trailing "/" means directories only ("cache/", "var/cache/").
# Pola berawalan "/" cocok dengan path absolut ("/srv/simpeg/data/tmp").
# A pattern starting with "/" matches the absolute path ("/srv/simpeg/data/tmp").
# Pola lain yang memuat "/" relatif terhadap path dataset tempat entri berada:
# "logs/*.gz" hanya cocok dengan <path dataset>/logs/a.gz, tidak lebih dalam.
# Any other pattern containing "/" is relative to the dataset path the entry is
# under: "logs/*.gz" matches <dataset path>/logs/a.gz only, not deeper.
# "*" dan "?" tidak pernah cocok dengan "/"; "**" cocok dengan direktori berapa pun.
# "*" and "?" never match "/"; "**" matches any number of directories.
#
# Pemicu / triggers: schedule = interval ("15m") atau kalender / or calendar
# ("hourly", "hourly :15", "daily 01:30", "weekly mon 02:00", "monthly 1 03:00"),
# dan/atau / and/or continuous = true (pantau perubahan / watch for changes).
# Tanpa keduanya hanya `pulih-agent snapshot` manual / with neither, manual snapshots only.
# debounce: jeda tenang setelah perubahan / quiet time after a change (bawaan / default "500ms").
# rescan_interval: pemindaian penuh berkala mode continuous / continuous mode's full rescan ("6h").
# rpo_target: umur maksimum salinan DRC / how old the DRC copy may get, e.g. "15m".
# small_chunks: pola berkas yang dipotong kecil (16-256 KiB), yaitu berkas basis data
# dan image disk yang ditulis ulang per halaman; sintaks sama dengan exclude.
# Files cut into small chunks (16-256 KiB): database and disk-image files rewritten
# page by page; same syntax as exclude. Bawaan / default: *.db, *.sqlite, *.dbf,
# *.ibd, *.mdf, berkas relasi PostgreSQL / PostgreSQL relation files, *.qcow2 dll./etc.
# (daftar lengkap / full list: docs/id/panduan-sysadmin.md); [] mematikannya / turns it off.
# pre_hook/post_hook: string (dijalankan /bin/sh -c) atau array argv tanpa shell;
# a string (run with /bin/sh -c) or an argv array without a shell. pre_hook gagal =
# snapshot dilewati; post_hook selalu dijalankan / a failed pre_hook skips the
# snapshot; post_hook always runs. hook_timeout: batas waktu tiap hook / per hook ("10m").
#
# [[dataset]]
# name = "simpeg"
# paths = ["/srv/simpeg/data", "/etc/simpeg"]
# exclude = ["*.tmp", "cache/", "logs/*.gz", "/srv/simpeg/data/tmp"]
# small_chunks = ["*.db", "**/base/*/[0-9]*"]
# continuous = true
# schedule = "daily 01:30"
# debounce = "500ms"
# rescan_interval = "6h"
# rpo_target = "15m"
# pre_hook = ["/usr/local/sbin/simpeg-db-start-backup"]
# post_hook = "/usr/local/sbin/simpeg-db-stop-backup"
# hook_timeout = "10m"
"#,
        state = state_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_with_a_dataset_appended() {
        let mut t = template("web", Path::new("/var/lib/pulih-agent"), "drc.example:7443");
        t.push_str("\n[[dataset]]\nname = \"simpeg\"\npaths = [\"/srv/simpeg\"]\nexclude = [\"*.tmp\", \"cache/\"]\n");
        let s = Settings::parse(&t).unwrap();
        assert_eq!(s.server_name, "drc.example");
        assert_eq!(s.datasets.len(), 1);
        let ex = &s.datasets[0].exclude;
        assert!(ex.matches(Path::new("/srv/simpeg/a.tmp"), Path::new("a.tmp"), false));
        assert!(ex.matches(Path::new("/srv/simpeg/cache"), Path::new("cache"), true));
        assert!(!ex.matches(Path::new("/srv/simpeg/cache"), Path::new("cache"), false));
        assert!(!ex.matches(Path::new("/srv/simpeg/a.txt"), Path::new("a.txt"), false));
    }

    /// Compiles `patterns` and asks about an entry of the dataset path
    /// `base`, at `rel` inside it.
    fn excluded(patterns: &[&str], base: &str, rel: &str, is_dir: bool) -> bool {
        let ex = PathPatterns::compile("exclude", &patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap();
        ex.matches(&Path::new(base).join(rel), Path::new(rel), is_dir)
    }

    #[test]
    fn exclude_without_slash_matches_a_name_at_any_depth() {
        for rel in ["a.tmp", "x/a.tmp", "x/y/z/.b.tmp"] {
            assert!(excluded(&["*.tmp"], "/srv/d", rel, false), "{rel}");
            assert!(excluded(&["*.tmp"], "/srv/d", rel, true), "{rel}");
        }
        assert!(!excluded(&["*.tmp"], "/srv/d", "a.tmp/b", false));
        assert!(!excluded(&["*.tmp"], "/srv/d", "A.TMP", false));
        assert!(excluded(&["build"], "/srv/d", "x/build", false));
        assert!(excluded(&["?.log"], "/srv/d", "x/a.log", false));
        // The dataset path's own components are not names of entries.
        assert!(!excluded(&["d"], "/srv/d", "a", false));
    }

    #[test]
    fn exclude_trailing_slash_means_directories_only() {
        assert!(excluded(&["cache/"], "/srv/d", "cache", true));
        assert!(excluded(&["cache/"], "/srv/d", "x/y/cache", true));
        assert!(!excluded(&["cache/"], "/srv/d", "cache", false));
        assert!(!excluded(&["cache/"], "/srv/d", "x/cache", false));
        // With a "/" inside, too (relative and absolute).
        assert!(excluded(&["var/cache/"], "/srv/d", "var/cache", true));
        assert!(!excluded(&["var/cache/"], "/srv/d", "var/cache", false));
        assert!(excluded(&["/srv/d/var/cache/"], "/srv/d", "var/cache", true));
        assert!(!excluded(&["/srv/d/var/cache/"], "/srv/d", "var/cache", false));
    }

    #[test]
    fn exclude_leading_slash_matches_the_absolute_path() {
        assert!(excluded(&["/srv/x/tmp"], "/srv/x", "tmp", true));
        assert!(excluded(&["/srv/x/tmp"], "/srv/x", "tmp", false));
        assert!(!excluded(&["/srv/x/tmp"], "/srv/x", "a/tmp", true));
        assert!(!excluded(&["/srv/x/tmp"], "/srv/y", "tmp", true));
        // The dataset path can be a prefix of the pattern or not.
        assert!(excluded(&["/srv/x/a/tmp"], "/srv/x/a", "tmp", false));
        assert!(excluded(&["/srv/*/tmp"], "/srv/x", "tmp", false));
    }

    #[test]
    fn exclude_relative_pattern_with_slash_is_anchored_at_the_dataset_path() {
        assert!(excluded(&["logs/*.gz"], "/srv/d", "logs/a.gz", false));
        assert!(excluded(&["logs/*.gz"], "/etc/other", "logs/a.gz", false));
        assert!(!excluded(&["logs/*.gz"], "/srv/d", "logs/old/a.gz", false));
        assert!(!excluded(&["logs/*.gz"], "/srv/d", "x/logs/a.gz", false));
        assert!(!excluded(&["logs/*.gz"], "/srv/d", "logs/a.txt", false));
        // Not matched against the absolute path.
        assert!(!excluded(&["d/logs/*.gz"], "/srv/d", "logs/a.gz", false));
    }

    #[test]
    fn exclude_star_and_question_mark_never_match_slash() {
        assert!(!excluded(&["/srv/app/*.log"], "/srv/app", "2024/x.log", false));
        assert!(excluded(&["/srv/app/*.log"], "/srv/app", "x.log", false));
        assert!(!excluded(&["a?b/c"], "/srv/d", "a/b/c", false));
        assert!(excluded(&["a?b/c"], "/srv/d", "a-b/c", false));
        assert!(!excluded(&["x/*"], "/srv/d", "x/y/z", false));
    }

    #[test]
    fn exclude_double_star_matches_any_number_of_directories() {
        for rel in ["logs/a.gz", "x/logs/a.gz", "x/y/logs/a.gz"] {
            assert!(excluded(&["**/logs/*.gz"], "/srv/d", rel, false), "{rel}");
        }
        for rel in ["build/a.o", "build/x/a.o", "build/x/y/a.o"] {
            assert!(excluded(&["build/**/*.o"], "/srv/d", rel, false), "{rel}");
        }
        assert!(!excluded(&["build/**/*.o"], "/srv/d", "src/build/a.o", false));
        assert!(excluded(&["/srv/**/tmp"], "/srv/d", "a/b/tmp", true));
        assert!(excluded(&["build/**"], "/srv/d", "build/x/y", false));
    }

    #[test]
    fn exclude_patterns_that_match_nothing_are_refused() {
        for p in ["", "/", "//"] {
            assert!(PathPatterns::compile("exclude", &[p.to_string()]).is_err(), "{p:?}");
        }
    }

    /// The default `small_chunks` select database and disk-image files
    /// (PostgreSQL's extensionless relation files by their place in the data
    /// directory) and nothing else; `[]` turns it off; a bad pattern is
    /// reported under its own key.
    #[test]
    fn small_chunks_default_to_database_and_image_files() {
        let dataset = |extra: &str| {
            let mut t = template("web", Path::new("/var/lib/pulih-agent"), "drc.example:7443");
            t.push_str(&format!("\n[[dataset]]\nname = \"db\"\npaths = [\"/srv/db\"]\n{extra}\n"));
            Settings::parse(&t)
        };
        let s = dataset("").unwrap();
        let small =
            |rel: &str| s.datasets[0].small_chunks.matches(&Path::new("/srv/db").join(rel), Path::new(rel), false);
        for rel in [
            "simpeg.db",
            "app/pegawai data.db",
            "x.sqlite3",
            "KEU2024.DBF",
            "mysql/simpeg/pegawai.ibd",
            "mysql/ibdata1",
            "mssql/SIMPEG.mdf",
            "postgresql/15/main/base/16384/2619",
            "main/base/1/1259_fsm",
            "main/global/1262",
            "vm/disk.qcow2",
        ] {
            assert!(small(rel), "{rel}");
        }
        for rel in [
            "a.txt",
            "media/foto.jpg",
            "logs/app.log",
            "main/base/PG_VERSION",
            "main/pg_wal/000000010000000000000001",
            "dbx",
        ] {
            assert!(!small(rel), "{rel}");
        }
        let off = dataset("small_chunks = []").unwrap();
        assert!(!off.datasets[0].small_chunks.matches(Path::new("/srv/db/a.db"), Path::new("a.db"), false));
        let err = dataset("small_chunks = [\"[bad\"]").unwrap_err().to_string();
        assert!(err.contains("small_chunks pattern \"[bad\""), "{err}");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let t = r#"
[agent]
name = "Bad Name"
state_dir = "relative"
[controller]
address = "nohost"
[upload]
compression_level = 99
[[dataset]]
name = "d"
paths = ["rel", "/a", "/a/b"]
exclude = ["[bad"]
"#;
        let err = format!("{:#}", Settings::parse(t).unwrap_err());
        for needle in [
            "agent.name",
            "state_dir",
            "HOST:PORT",
            "compression_level",
            "must be absolute",
            "overlap",
            "exclude pattern",
        ] {
            assert!(err.contains(needle), "missing {needle}: {err}");
        }
    }

    const MINIMAL: &str = "[agent]\nname = \"web\"\nstate_dir = \"/s\"\n[controller]\naddress = \"h:1\"\n";

    #[test]
    fn service_defaults() {
        let s = Settings::parse(&format!("{MINIMAL}[[dataset]]\nname = \"d\"\npaths = [\"/d\"]\n")).unwrap();
        assert_eq!(s.bandwidth_limit, None);
        assert_eq!(s.daemon.retry_min, Duration::from_secs(5));
        assert_eq!(s.daemon.retry_max, Duration::from_secs(600));
        assert_eq!(s.daemon.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.daemon.renew_before, Duration::from_secs(30 * 86400));
        assert_eq!(s.daemon.utc_offset, local_offset());
        assert_eq!(s.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let d = &s.datasets[0];
        assert_eq!((d.schedule, d.continuous, d.rpo_target), (None, false, None));
        assert_eq!(
            (d.debounce, d.rescan_interval, d.hook_timeout),
            (DEFAULT_DEBOUNCE, DEFAULT_RESCAN_INTERVAL, DEFAULT_HOOK_TIMEOUT)
        );
        assert_eq!((&d.pre_hook, &d.post_hook), (&None, &None));
        assert_eq!(d.mode(), "manual");
    }

    #[test]
    fn service_keys_resolve() {
        let t = format!(
            r#"{MINIMAL}
[upload]
bandwidth_limit = "20MiB"
[daemon]
retry_min = "1s"
retry_max = "1h"
shutdown_timeout = "45s"
renew_before = "7d"
utc_offset = "+08:00"
[metrics]
listen = "[::1]:9000"
enabled = false
[[dataset]]
name = "a"
paths = ["/a"]
schedule = "daily 01:30"
continuous = true
debounce = "0"
rescan_interval = "1h30m"
rpo_target = "5m"
pre_hook = "pg_backup_start > /tmp/x"
post_hook = ["/usr/bin/psql", "-c", "select pg_backup_stop()"]
hook_timeout = "2m"
[[dataset]]
name = "b"
paths = ["/b"]
continuous = true
[[dataset]]
name = "c"
paths = ["/c"]
schedule = "15m"
"#
        );
        let s = Settings::parse(&t).unwrap();
        assert_eq!(s.bandwidth_limit, Some(20 << 20));
        assert_eq!(
            s.daemon,
            DaemonSettings {
                retry_min: Duration::from_secs(1),
                retry_max: Duration::from_secs(3600),
                shutdown_timeout: Duration::from_secs(45),
                renew_before: Duration::from_secs(7 * 86400),
                utc_offset: UtcOffset::from_hms(8, 0, 0).unwrap(),
            }
        );
        assert_eq!(s.metrics, None);
        let a = &s.datasets[0];
        assert_eq!(a.schedule, Some(Schedule::parse("daily 01:30").unwrap()));
        assert!(a.continuous);
        assert_eq!(a.debounce, Duration::ZERO);
        assert_eq!(a.rescan_interval, Duration::from_secs(5400));
        assert_eq!(a.rpo_target, Some(Duration::from_secs(300)));
        assert_eq!(a.pre_hook, Some(Hook::Shell("pg_backup_start > /tmp/x".into())));
        assert_eq!(
            a.post_hook,
            Some(Hook::Argv(vec!["/usr/bin/psql".into(), "-c".into(), "select pg_backup_stop()".into()]))
        );
        assert_eq!(a.hook_timeout, Duration::from_secs(120));
        assert_eq!(a.mode(), "continuous + daily 01:30");
        assert_eq!(s.datasets[1].mode(), "continuous");
        assert_eq!(s.datasets[2].mode(), "15m");
    }

    #[test]
    fn service_problems_name_the_key_and_are_reported_together() {
        let t = format!(
            r#"{MINIMAL}
[upload]
bandwidth_limit = "20 megs"
[daemon]
retry_min = "1h"
retry_max = "5m"
shutdown_timeout = "0"
renew_before = "30 days"
utc_offset = "WIB"
[metrics]
listen = "localhost:9464"
[[dataset]]
name = "ok"
paths = ["/ok"]
[[dataset]]
name = "www"
paths = ["/www"]
schedule = "dayly 01:30"
debounce = "fast"
rescan_interval = "0s"
rpo_target = "5"
pre_hook = ""
post_hook = ["/bin/true", 3]
hook_timeout = "-1m"
"#
        );
        let err = format!("{:#}", Settings::parse(&t).unwrap_err());
        for needle in [
            "upload.bandwidth_limit \"20 megs\": expected a size",
            "daemon.retry_min \"1h\" is longer than daemon.retry_max \"5m\"",
            "daemon.shutdown_timeout \"0\": must be more than 0",
            "daemon.renew_before \"30 days\": expected a duration",
            "daemon.utc_offset \"WIB\": expected an offset",
            "metrics.listen \"localhost:9464\": expected IP:PORT",
            "dataset[1] \"www\": schedule \"dayly 01:30\": expected",
            "dataset[1] \"www\": debounce \"fast\": expected a duration",
            "dataset[1] \"www\": rescan_interval \"0s\": must be more than 0",
            "dataset[1] \"www\": rpo_target \"5\": expected a duration",
            "dataset[1] \"www\": pre_hook: expected a command line",
            "dataset[1] \"www\": post_hook: expected a command line",
            "dataset[1] \"www\": hook_timeout \"-1m\": expected a duration",
        ] {
            assert!(err.contains(needle), "missing {needle}:\n{err}");
        }
        assert!(!err.contains("dataset[0]"), "{err}");
    }

    #[test]
    fn utc_offsets_parse() {
        for (t, secs) in
            [("+07:00", 7 * 3600), ("+0800", 8 * 3600), ("-03:30", -(3 * 3600 + 1800)), ("UTC", 0), ("Z", 0)]
        {
            assert_eq!(parse_offset(t).map(|o| o.whole_seconds()), Ok(secs), "{t}");
        }
        for t in ["", "7", "+7", "+07", "+07:60", "+25:00", "+07::00", "WIB"] {
            assert!(parse_offset(t).is_err(), "{t:?}");
        }
    }

    #[test]
    fn template_with_every_commented_key_enabled_parses() {
        // Uncomment every "# key = value" line of the template: the keys
        // and values it documents are ones the agent accepts.
        let t = template("web", Path::new("/var/lib/pulih-agent"), "drc.example:7443");
        let on: String = t
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(r) if r.starts_with('[') || r.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) => r,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let s = Settings::parse(&on).unwrap_or_else(|e| panic!("{e:#}\n{on}"));
        assert_eq!(s.datasets.len(), 1);
        assert_eq!(s.datasets[0].mode(), "continuous + daily 01:30");
        assert!(s.datasets[0].pre_hook.is_some() && s.datasets[0].post_hook.is_some());
        assert_eq!(s.daemon.utc_offset, UtcOffset::from_hms(7, 0, 0).unwrap());
    }

    #[test]
    fn unknown_keys_are_named() {
        let t = template("web", Path::new("/s"), "h:1").replace("threads", "thread");
        let err = format!("{:#}", Settings::parse(&t).unwrap_err());
        assert!(err.contains("thread"), "{err}");
    }
}
