//! Protected systems: what a drill, a failover and the DR plan are about.
//!
//! A *system* ("SIMPEG — BKPSDM", "Website Pemkot") groups one or more
//! agent datasets and carries what the regulation asks to be known about it:
//! owning agency (OPD), the person responsible (penanggung jawab sistem,
//! Pasal 19), data class (data pokok / data transaksional, Pasal 8),
//! priority tier, dependencies, RPO and RTO targets, where it is restored,
//! health checks, activation and teardown steps.
//!
//! Systems are defined by the DR coordinator in one TOML file per system in
//! the controller's systems directory (`[systems] dir`, default
//! `<data dir>/systems`). [`Systems::load`] reads and validates all of them
//! at once; every problem names its file, line and key. Nothing here runs
//! anything: the drill and failover code executes what these types describe.
//!
//! Commands in checks and steps run on the controller host (the DRC), never
//! on an agent: an agent only runs *actions* its own sysadmin declared in
//! its `agent.toml`, named here by [`StepRun::AgentAction`]. So the
//! controller cannot be used to run arbitrary commands on agency servers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pulih_core::hooks::Hook;
use pulih_core::names::{AgentName, DatasetName};
use pulih_core::units::parse_duration;
use serde::Deserialize;
use toml::Spanned;

/// Default timeout of a health check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default timeout of an activation or teardown step.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest accepted timeout of any check or step (a day): a typo like "60d"
/// should not park a drill for two months.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Why the systems could not be loaded. Every variant names the file and,
/// where there is one, the line and key, so the coordinator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum SystemsError {
    #[error("cannot read the systems directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Syntax or an unknown/mistyped key (the message carries line and column).
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value that parses but is not acceptable.
    #[error("{}:{line}: {key}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, key: String, message: String },
    #[error("system {name:?} is defined twice: in {} and in {}", first.display(), second.display())]
    Duplicate { name: String, first: PathBuf, second: PathBuf },
    #[error("{}:{line}: system.depends_on: {name:?} is not a defined system", path.display())]
    UnknownDependency { path: PathBuf, line: usize, name: String },
    #[error("systems depend on each other in a cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
    #[error("dataset {agent}/{dataset} belongs to both system {first:?} and system {second:?}")]
    DatasetTwice { agent: String, dataset: String, first: String, second: String },
    #[error("several problems:\n  {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Many(Vec<SystemsError>),
}

/// A system's identifier: same alphabet as agent and dataset names (it
/// appears in paths, metric labels and URLs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SystemName(String);

impl SystemName {
    pub fn new(s: &str) -> Result<Self, String> {
        // Reuse the one definition of a safe name.
        DatasetName::new(s).map(|_| Self(s.to_owned())).map_err(|_| {
            format!("invalid system name {s:?}: use 1-63 characters a-z, 0-9, '-', '_' or '.', starting with a letter or digit")
        })
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SystemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SystemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Data class of Pasal 8 of the regulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Data pokok: master data other systems rely on.
    Pokok,
    /// Data transaksional: records of day-to-day transactions.
    Transaksional,
}

/// The person responsible for the system (penanggung jawab sistem).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub name: String,
    #[serde(default)]
    pub position: Option<String>,
    #[serde(default)]
    pub contact: Option<String>,
}

/// One dataset of the system and where it goes inside the restore target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    pub agent: AgentName,
    pub dataset: DatasetName,
    /// Directory below the system's restore location (default: the dataset name).
    pub subdir: String,
}

/// Where drills and failovers restore the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestorePlace {
    /// A fresh directory on the controller host, removed after the drill.
    Sandbox,
    /// An agent in standby role; `path` is below the root that agent allows.
    Standby { agent: AgentName, path: PathBuf },
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A command on the controller host; passes on exit status 0.
    Command(Hook),
    /// An HTTP(S) GET; passes on `expect_status` and, if set, a body
    /// containing `expect_body`.
    Http { url: String, expect_status: u16, expect_body: Option<String> },
    /// An action declared in the target agent's own `agent.toml`.
    AgentAction(String),
}

/// A health check: proves the restored system works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    pub timeout: Duration,
}

/// How an activation or teardown step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepRun {
    /// A command on the controller host.
    Command(Hook),
    /// An action declared in the target agent's own `agent.toml`.
    AgentAction(String),
}

/// An activation or teardown step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub run: StepRun,
    pub timeout: Duration,
}

/// An alternate procedure (NIST SP 800-34 "alternate procedures"): how the
/// service goes on, or is recovered, when the normal procedure cannot be
/// used. Documentation for people only; Pulih never runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    pub name: String,
    /// What people do, in full.
    pub description: String,
    /// A command they may run, shown as written.
    pub command: Option<String>,
}

/// A protected system, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub name: SystemName,
    /// Human title, e.g. "SIMPEG — BKPSDM".
    pub title: String,
    /// Owning agency (perangkat daerah).
    pub opd: String,
    pub owner: Option<Owner>,
    pub data_class: DataClass,
    /// Priority: 1 is restored first.
    pub tier: u8,
    pub depends_on: Vec<SystemName>,
    pub rpo_target: Duration,
    pub rto_target: Duration,
    /// How often a drill is due; `None` means drills are on demand only.
    pub drill_every: Option<Duration>,
    pub datasets: Vec<DatasetRef>,
    pub restore: RestorePlace,
    pub health_checks: Vec<Check>,
    pub activation: Vec<Step>,
    pub teardown: Vec<Step>,
    /// Alternate procedures (`[[alternative]]`), for the DR plan; may be none.
    pub alternatives: Vec<Alternative>,
    /// The file it was read from.
    pub source: PathBuf,
}

/// Every defined system, validated together (dependencies resolve, no
/// cycles, no dataset in two systems).
#[derive(Debug, Clone, Default)]
pub struct Systems {
    by_name: BTreeMap<SystemName, System>,
}

impl Systems {
    /// Reads every `*.toml` file of `dir`. A missing directory is an empty
    /// set (a fresh controller defines no systems yet).
    pub fn load(dir: &Path) -> Result<Self, SystemsError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(SystemsError::Dir { path: dir.to_owned(), source }),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SystemsError::Dir { path: dir.to_owned(), source })?;
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "toml") {
                files.push(path);
            }
        }
        files.sort();
        let mut parsed = Vec::new();
        for path in files {
            let text =
                std::fs::read_to_string(&path).map_err(|source| SystemsError::Read { path: path.clone(), source })?;
            parsed.push((path, text));
        }
        Self::from_texts(parsed.iter().map(|(p, t)| (p.as_path(), t.as_str())))
    }

    /// Validates already-read files: `(path for messages, contents)`.
    pub fn from_texts<'a>(files: impl IntoIterator<Item = (&'a Path, &'a str)>) -> Result<Self, SystemsError> {
        let mut problems = Vec::new();
        let mut by_name: BTreeMap<SystemName, System> = BTreeMap::new();
        let mut dep_lines: BTreeMap<SystemName, Vec<(usize, String)>> = BTreeMap::new();
        for (path, text) in files {
            match parse_file(path, text) {
                Ok((sys, deps)) => {
                    if let Some(first) = by_name.get(&sys.name) {
                        problems.push(SystemsError::Duplicate {
                            name: sys.name.to_string(),
                            first: first.source.clone(),
                            second: path.to_owned(),
                        });
                        continue;
                    }
                    dep_lines.insert(sys.name.clone(), deps);
                    by_name.insert(sys.name.clone(), sys);
                }
                Err(mut e) => problems.append(&mut e),
            }
        }
        for (name, deps) in &dep_lines {
            for (line, dep) in deps {
                if SystemName::new(dep).map_or(true, |d| !by_name.contains_key(&d)) {
                    problems.push(SystemsError::UnknownDependency {
                        path: by_name[name].source.clone(),
                        line: *line,
                        name: dep.clone(),
                    });
                }
            }
        }
        let mut owner_of: BTreeMap<(&str, &str), &SystemName> = BTreeMap::new();
        for sys in by_name.values() {
            for d in &sys.datasets {
                if let Some(first) = owner_of.insert((d.agent.as_str(), d.dataset.as_str()), &sys.name) {
                    if first != &sys.name {
                        problems.push(SystemsError::DatasetTwice {
                            agent: d.agent.to_string(),
                            dataset: d.dataset.to_string(),
                            first: first.to_string(),
                            second: sys.name.to_string(),
                        });
                    }
                }
            }
        }
        if problems.is_empty() {
            let systems = Self { by_name };
            systems.levels(None)?;
            return Ok(systems);
        }
        if problems.len() == 1 {
            Err(problems.pop().expect("one problem"))
        } else {
            Err(SystemsError::Many(problems))
        }
    }

    pub fn get(&self, name: &str) -> Option<&System> {
        SystemName::new(name).ok().and_then(|n| self.by_name.get(&n))
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Every system, by name.
    pub fn iter(&self) -> impl Iterator<Item = &System> {
        self.by_name.values()
    }

    /// The system a dataset belongs to.
    pub fn of_dataset(&self, agent: &str, dataset: &str) -> Option<&System> {
        self.by_name
            .values()
            .find(|s| s.datasets.iter().any(|d| d.agent.as_str() == agent && d.dataset.as_str() == dataset))
    }

    /// Systems in recovery order, as levels: every system's dependencies are
    /// in earlier levels, so the systems of one level can run in parallel.
    /// Within a level: by tier, then name. With `only`, the listed systems
    /// and nothing else (their order still respects dependencies between them).
    pub fn levels(&self, only: Option<&BTreeSet<SystemName>>) -> Result<Vec<Vec<&System>>, SystemsError> {
        let wanted = |n: &SystemName| only.is_none_or(|o| o.contains(n));
        let mut done: BTreeSet<&SystemName> = BTreeSet::new();
        let mut left: Vec<&System> = self.by_name.values().filter(|s| wanted(&s.name)).collect();
        let mut levels = Vec::new();
        while !left.is_empty() {
            let (mut ready, rest): (Vec<&System>, Vec<&System>) = left.into_iter().partition(|s| {
                s.depends_on.iter().all(|d| done.contains(d) || !wanted(d) || !self.by_name.contains_key(d))
            });
            if ready.is_empty() {
                return Err(SystemsError::Cycle { cycle: find_cycle(&rest) });
            }
            ready.sort_by(|a, b| (a.tier, &a.name).cmp(&(b.tier, &b.name)));
            done.extend(ready.iter().map(|s| &s.name));
            levels.push(ready);
            left = rest;
        }
        Ok(levels)
    }

    /// Recovery order flattened (the order of the DR plan's procedures).
    pub fn in_order(&self) -> Vec<&System> {
        self.levels(None).map(|l| l.into_iter().flatten().collect()).unwrap_or_default()
    }
}

/// One cycle among `stuck` (each of which waits for another of them).
fn find_cycle(stuck: &[&System]) -> Vec<String> {
    let names: BTreeSet<&SystemName> = stuck.iter().map(|s| &s.name).collect();
    let next = |n: &SystemName| -> Option<&SystemName> {
        stuck.iter().find(|s| &s.name == n).and_then(|s| s.depends_on.iter().find(|d| names.contains(d)))
    };
    let mut path: Vec<&SystemName> = vec![&stuck[0].name];
    while let Some(n) = next(path[path.len() - 1]) {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(n.to_string());
            return cycle;
        }
        path.push(n);
    }
    path.iter().map(|s| s.to_string()).collect()
}

// ---- the file format -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    system: RawSystem,
    #[serde(default, rename = "dataset")]
    datasets: Vec<RawDataset>,
    #[serde(default)]
    restore: Option<RawRestore>,
    #[serde(default, rename = "health_check")]
    health_checks: Vec<Spanned<RawCheck>>,
    #[serde(default)]
    activation: Vec<Spanned<RawStep>>,
    #[serde(default)]
    teardown: Vec<Spanned<RawStep>>,
    #[serde(default, rename = "alternative")]
    alternatives: Vec<Spanned<RawAlternative>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlternative {
    name: String,
    description: String,
    #[serde(default)]
    command: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    name: Spanned<String>,
    title: Spanned<String>,
    opd: Spanned<String>,
    #[serde(default)]
    owner: Option<Owner>,
    data_class: DataClass,
    tier: Spanned<i64>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    rpo_target: Spanned<String>,
    rto_target: Spanned<String>,
    #[serde(default)]
    drill_every: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    agent: Spanned<String>,
    dataset: Spanned<String>,
    #[serde(default)]
    subdir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    #[serde(default)]
    standby: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    #[serde(default)]
    command: Option<toml::Value>,
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    expect_status: Option<u16>,
    #[serde(default)]
    expect_body: Option<String>,
    #[serde(default)]
    agent_action: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    #[serde(default)]
    command: Option<toml::Value>,
    #[serde(default)]
    agent_action: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

/// Line (1-based) of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<SystemsError>,
}

impl Ctx<'_> {
    fn bad(&mut self, span: std::ops::Range<usize>, key: &str, message: impl Into<String>) {
        self.problems.push(SystemsError::Invalid {
            path: self.path.to_owned(),
            line: line_of(self.text, span.start),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn duration(&mut self, v: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.bad(v.span(), key, "must be more than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.bad(v.span(), key, e);
                None
            }
        }
    }

    fn timeout(&mut self, v: &Option<String>, span: std::ops::Range<usize>, key: &str, default: Duration) -> Duration {
        let Some(text) = v else { return default };
        match parse_duration(text) {
            Ok(d) if d.is_zero() || d > MAX_TIMEOUT => {
                self.bad(span, key, format!("{text:?} must be more than zero and at most 24h"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.bad(span, key, e);
                default
            }
        }
    }

    fn text(&mut self, v: &Spanned<String>, key: &str) -> String {
        let s = v.get_ref().trim();
        if s.is_empty() {
            self.bad(v.span(), key, "must not be empty");
        }
        s.to_owned()
    }
}

/// A command as in `agent.toml` hooks: a string for `/bin/sh -c`, or an
/// array of program and arguments.
fn command(v: &toml::Value) -> Result<Hook, String> {
    match v {
        toml::Value::String(s) if !s.trim().is_empty() => Ok(Hook::Shell(s.clone())),
        toml::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned).ok_or_else(|| "every element must be a string".to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map(Hook::Argv),
        _ => Err("must be a non-empty string (run with /bin/sh -c) or a non-empty array [program, args...]".into()),
    }
}

fn action(name: &str) -> Result<String, String> {
    DatasetName::new(name)
        .map(|_| name.to_owned())
        .map_err(|_| format!("{name:?} is not a valid action name (a-z, 0-9, '-', '_', '.')"))
}

/// Parses one file; returns the system and its dependencies with their lines.
#[allow(clippy::type_complexity)]
fn parse_file(path: &Path, text: &str) -> Result<(System, Vec<(usize, String)>), Vec<SystemsError>> {
    let raw: RawFile = toml::from_str(text)
        .map_err(|e| vec![SystemsError::Parse { path: path.to_owned(), message: e.to_string() }])?;
    let mut cx = Ctx { path, text, problems: Vec::new() };
    let s = &raw.system;

    let name = match SystemName::new(s.name.get_ref()) {
        Ok(n) => Some(n),
        Err(e) => {
            cx.bad(s.name.span(), "system.name", e);
            None
        }
    };
    let title = cx.text(&s.title, "system.title");
    let opd = cx.text(&s.opd, "system.opd");
    let tier = match u8::try_from(*s.tier.get_ref()) {
        Ok(t) if (1..=9).contains(&t) => t,
        _ => {
            cx.bad(s.tier.span(), "system.tier", "must be 1 (most important) to 9");
            9
        }
    };
    if let Some(o) = &s.owner {
        if o.name.trim().is_empty() {
            cx.problems.push(SystemsError::Invalid {
                path: path.to_owned(),
                line: text.lines().position(|l| l.trim_start().starts_with("[system.owner]")).map_or(1, |i| i + 1),
                key: "system.owner.name".into(),
                message: "must not be empty (leave the whole [system.owner] table out instead)".into(),
            });
        }
    }
    let rpo = cx.duration(&s.rpo_target, "system.rpo_target");
    let rto = cx.duration(&s.rto_target, "system.rto_target");
    let drill_every = s.drill_every.as_ref().and_then(|d| cx.duration(d, "system.drill_every"));
    let mut deps = Vec::new();
    let mut depends_on = Vec::new();
    for d in &s.depends_on {
        match SystemName::new(d.get_ref()) {
            Ok(n) if Some(&n) == name.as_ref() => {
                cx.bad(d.span(), "system.depends_on", "a system cannot depend on itself")
            }
            Ok(n) => {
                deps.push((line_of(text, d.span().start), d.get_ref().clone()));
                depends_on.push(n);
            }
            Err(e) => cx.bad(d.span(), "system.depends_on", e),
        }
    }

    let mut datasets = Vec::new();
    let mut subdirs = BTreeSet::new();
    if raw.datasets.is_empty() {
        cx.problems.push(SystemsError::Invalid {
            path: path.to_owned(),
            line: 1,
            key: "dataset".into(),
            message: "a system needs at least one [[dataset]] (agent and dataset name)".into(),
        });
    }
    for d in &raw.datasets {
        let agent =
            AgentName::new(d.agent.get_ref()).map_err(|e| cx.bad(d.agent.span(), "dataset.agent", e.to_string()));
        let dataset = DatasetName::new(d.dataset.get_ref())
            .map_err(|e| cx.bad(d.dataset.span(), "dataset.dataset", e.to_string()));
        let subdir = match &d.subdir {
            Some(sd) => match DatasetName::new(sd.get_ref()) {
                Ok(_) => sd.get_ref().clone(),
                Err(_) => {
                    cx.bad(sd.span(), "dataset.subdir", "must be one plain directory name (a-z, 0-9, '-', '_', '.')");
                    continue;
                }
            },
            None => d.dataset.get_ref().clone(),
        };
        if let (Ok(agent), Ok(dataset)) = (agent, dataset) {
            if !subdirs.insert(subdir.clone()) {
                let span = d.subdir.as_ref().map_or(d.dataset.span(), |s| s.span());
                cx.bad(span, "dataset.subdir", format!("two datasets would be restored into {subdir:?}; set subdir"));
            }
            datasets.push(DatasetRef { agent, dataset, subdir });
        }
    }

    let restore = match &raw.restore {
        None => RestorePlace::Sandbox,
        Some(RawRestore { standby: None, path: None }) => RestorePlace::Sandbox,
        Some(RawRestore { standby: Some(agent), path: Some(p) }) => {
            let a = AgentName::new(agent.get_ref());
            let rel = Path::new(p.get_ref());
            let clean = !p.get_ref().is_empty()
                && rel.is_relative()
                && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if !clean {
                cx.bad(
                    p.span(),
                    "restore.path",
                    "must be a relative path below the standby agent's restore root, without '..'",
                );
            }
            match a {
                Ok(agent) if clean => RestorePlace::Standby { agent, path: rel.to_owned() },
                Ok(_) => RestorePlace::Sandbox,
                Err(e) => {
                    cx.bad(agent.span(), "restore.standby", e.to_string());
                    RestorePlace::Sandbox
                }
            }
        }
        Some(RawRestore { standby: Some(agent), path: None }) => {
            cx.bad(agent.span(), "restore.path", "restore.standby needs restore.path too");
            RestorePlace::Sandbox
        }
        Some(RawRestore { standby: None, path: Some(p) }) => {
            cx.bad(
                p.span(),
                "restore.standby",
                "restore.path needs restore.standby (the agent that receives restores)",
            );
            RestorePlace::Sandbox
        }
    };

    let mut health_checks = Vec::new();
    for c in &raw.health_checks {
        let span = c.span();
        let c = c.get_ref();
        let timeout = cx.timeout(&c.timeout, span.clone(), "health_check.timeout", DEFAULT_CHECK_TIMEOUT);
        let kind = match (&c.command, &c.http, &c.agent_action) {
            (Some(cmd), None, None) => command(cmd).map(CheckKind::Command),
            (None, Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    Err(format!("{url:?} must start with http:// or https://"))
                } else {
                    let status = c.expect_status.unwrap_or(200);
                    if (100..=599).contains(&status) {
                        Ok(CheckKind::Http {
                            url: url.clone(),
                            expect_status: status,
                            expect_body: c.expect_body.clone(),
                        })
                    } else {
                        Err(format!("expect_status {status} is not an HTTP status"))
                    }
                }
            }
            (None, None, Some(a)) => action(a).map(CheckKind::AgentAction),
            _ => Err("give exactly one of command, http or agent_action".into()),
        };
        if c.http.is_none() && (c.expect_status.is_some() || c.expect_body.is_some()) {
            cx.bad(
                span.clone(),
                "health_check.expect_status",
                "expect_status and expect_body only apply to http checks",
            );
        }
        if c.name.trim().is_empty() {
            cx.bad(span.clone(), "health_check.name", "must not be empty");
        }
        match kind {
            Ok(kind) => health_checks.push(Check { name: c.name.trim().to_owned(), kind, timeout }),
            Err(e) => cx.bad(span, "health_check", e),
        }
    }

    let mut steps = |list: &[Spanned<RawStep>], key: &str| {
        let mut out = Vec::new();
        for st in list {
            let span = st.span();
            let st = st.get_ref();
            let timeout = cx.timeout(&st.timeout, span.clone(), &format!("{key}.timeout"), DEFAULT_STEP_TIMEOUT);
            if st.name.trim().is_empty() {
                cx.bad(span.clone(), &format!("{key}.name"), "must not be empty");
            }
            let run = match (&st.command, &st.agent_action) {
                (Some(cmd), None) => command(cmd).map(StepRun::Command),
                (None, Some(a)) => action(a).map(StepRun::AgentAction),
                _ => Err("give exactly one of command or agent_action".into()),
            };
            match run {
                Ok(run) => out.push(Step { name: st.name.trim().to_owned(), run, timeout }),
                Err(e) => cx.bad(span, key, e),
            }
        }
        out
    };
    let activation = steps(&raw.activation, "activation");
    let teardown = steps(&raw.teardown, "teardown");

    let uses_agent = health_checks.iter().any(|c| matches!(c.kind, CheckKind::AgentAction(_)))
        || activation.iter().chain(&teardown).any(|s| matches!(s.run, StepRun::AgentAction(_)));
    if uses_agent && restore == RestorePlace::Sandbox {
        cx.problems.push(SystemsError::Invalid {
            path: path.to_owned(),
            line: 1,
            key: "restore.standby".into(),
            message: "agent_action needs a standby agent to run on; set [restore] standby and path".into(),
        });
    }

    let mut alternatives = Vec::new();
    for a in &raw.alternatives {
        let span = a.span();
        let a = a.get_ref();
        if a.name.trim().is_empty() {
            cx.bad(span.clone(), "alternative.name", "must not be empty");
        }
        if a.description.trim().is_empty() {
            cx.bad(span.clone(), "alternative.description", "must say what people do instead");
        }
        if a.command.as_ref().is_some_and(|c| c.trim().is_empty()) {
            cx.bad(span, "alternative.command", "must not be empty (leave it out instead)");
        }
        alternatives.push(Alternative {
            name: a.name.trim().to_owned(),
            description: a.description.trim().to_owned(),
            command: a.command.as_ref().map(|c| c.trim().to_owned()),
        });
    }

    if !cx.problems.is_empty() {
        return Err(cx.problems);
    }
    let (Some(name), Some(rpo_target), Some(rto_target)) = (name, rpo, rto) else {
        unreachable!("a missing value is always reported as a problem")
    };
    Ok((
        System {
            name,
            title,
            opd,
            owner: s.owner.clone(),
            data_class: s.data_class,
            tier,
            depends_on,
            rpo_target,
            rto_target,
            drill_every,
            datasets,
            restore,
            health_checks,
            activation,
            teardown,
            alternatives,
            source: path.to_owned(),
        },
        deps,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPEG: &str = r#"
[system]
name = "simpeg"
title = "SIMPEG — BKPSDM"
opd = "BKPSDM"
data_class = "transaksional"
tier = 1
depends_on = ["db-pusat"]
rpo_target = "15m"
rto_target = "4h"
drill_every = "90d"

[system.owner]
name = "Budi Santoso"
position = "Kepala Bidang Informasi Kepegawaian"
contact = "budi@example.go.id"

[[dataset]]
agent = "bkpsdm-app01"
dataset = "simpeg-db"
subdir = "db"

[[health_check]]
name = "basis data menjawab"
command = ["sh", "-c", "test -s \"$PULIH_RESTORE_DIR/db/PG_VERSION\""]
timeout = "2m"

[[health_check]]
name = "web"
http = "http://127.0.0.1:8080/health"
expect_body = "ok"

[[teardown]]
name = "hentikan"
command = "true"

[[alternative]]
name = "layanan manual"
description = "Bagian kepegawaian melayani dengan formulir kertas sampai SIMPEG pulih."
"#;

    const DB: &str = r#"
[system]
name = "db-pusat"
title = "Basis data pusat"
opd = "Diskominfotik"
data_class = "pokok"
tier = 1
rpo_target = "5m"
rto_target = "1h"

[[dataset]]
agent = "dc-db01"
dataset = "pg"
"#;

    fn load(files: &[(&str, &str)]) -> Result<Systems, SystemsError> {
        Systems::from_texts(files.iter().map(|(p, t)| (Path::new(*p), *t)))
    }

    #[test]
    fn a_valid_pair_loads_in_dependency_order() {
        let s = load(&[("simpeg.toml", SIMPEG), ("db.toml", DB)]).unwrap();
        let order: Vec<&str> = s.in_order().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["db-pusat", "simpeg"]);
        let simpeg = s.get("simpeg").unwrap();
        assert_eq!(simpeg.rpo_target, Duration::from_secs(900));
        assert_eq!(simpeg.drill_every, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(simpeg.datasets[0].subdir, "db");
        assert_eq!(simpeg.health_checks.len(), 2);
        assert_eq!(simpeg.health_checks[1].timeout, DEFAULT_CHECK_TIMEOUT);
        assert!(matches!(simpeg.health_checks[1].kind, CheckKind::Http { expect_status: 200, .. }));
        assert_eq!(simpeg.restore, RestorePlace::Sandbox);
        assert_eq!(simpeg.alternatives.len(), 1);
        assert_eq!(simpeg.alternatives[0].command, None);
        assert!(s.get("db-pusat").unwrap().alternatives.is_empty());
        assert_eq!(s.of_dataset("dc-db01", "pg").unwrap().name.as_str(), "db-pusat");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let bad = DB.replace("tier = 1", "tier = 1\nrto = \"1h\"");
        let e = load(&[("db.toml", &bad)]).unwrap_err().to_string();
        assert!(e.contains("db.toml") && e.contains("line 8") && e.contains("rto"), "{e}");
    }

    #[test]
    fn bad_values_name_their_line_and_key_all_at_once() {
        let bad = DB.replace("rpo_target = \"5m\"", "rpo_target = \"5 minutes\"").replace("tier = 1", "tier = 12");
        let e = load(&[("db.toml", &bad)]).unwrap_err().to_string();
        assert!(e.contains("db.toml:7: system.tier"), "{e}");
        assert!(e.contains("db.toml:8: system.rpo_target"), "{e}");
    }

    #[test]
    fn an_alternative_without_description_names_its_line() {
        let bad = format!("{DB}\n[[alternative]]\nname = \"manual\"\ndescription = \" \"\n");
        let line = bad.lines().position(|l| l == "[[alternative]]").unwrap() + 1;
        let e = load(&[("db.toml", &bad)]).unwrap_err().to_string();
        assert!(e.contains(&format!("db.toml:{line}: alternative.description")), "{e}");
    }

    #[test]
    fn missing_dependency_and_cycles_are_refused() {
        let e = load(&[("simpeg.toml", SIMPEG)]).unwrap_err().to_string();
        assert!(e.contains("simpeg.toml:8: system.depends_on: \"db-pusat\""), "{e}");
        let db = DB.replace("tier = 1", "tier = 1\ndepends_on = [\"simpeg\"]");
        let e = load(&[("simpeg.toml", SIMPEG), ("db.toml", &db)]).unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("simpeg") && e.contains("db-pusat"), "{e}");
    }

    #[test]
    fn a_dataset_belongs_to_one_system() {
        let other =
            DB.replace("db-pusat", "copy").replace("dc-db01", "bkpsdm-app01").replace("\"pg\"", "\"simpeg-db\"");
        let e = load(&[("simpeg.toml", SIMPEG), ("db.toml", DB), ("copy.toml", &other)]).unwrap_err().to_string();
        assert!(e.contains("bkpsdm-app01/simpeg-db"), "{e}");
    }

    #[test]
    fn standby_paths_are_confined_and_agent_actions_need_a_standby() {
        let up = format!("{DB}\n[restore]\nstandby = \"drc-sb01\"\npath = \"../etc\"\n");
        let e = load(&[("db.toml", &up)]).unwrap_err().to_string();
        assert!(e.contains("restore.path"), "{e}");
        let act = format!("{DB}\n[[activation]]\nname = \"start\"\nagent_action = \"start-pg\"\n");
        let e = load(&[("db.toml", &act)]).unwrap_err().to_string();
        assert!(e.contains("agent_action needs a standby"), "{e}");
        let ok = format!("{act}\n[restore]\nstandby = \"drc-sb01\"\npath = \"pg\"\n");
        let s = load(&[("db.toml", &ok)]).unwrap();
        assert!(
            matches!(&s.get("db-pusat").unwrap().restore, RestorePlace::Standby { path, .. } if path == Path::new("pg"))
        );
    }

    #[test]
    fn levels_let_independent_systems_run_together() {
        let web = DB.replace("db-pusat", "web").replace("dc-db01", "web01").replace("tier = 1", "tier = 2");
        let s = load(&[("simpeg.toml", SIMPEG), ("db.toml", DB), ("web.toml", &web)]).unwrap();
        let levels: Vec<Vec<&str>> =
            s.levels(None).unwrap().iter().map(|l| l.iter().map(|s| s.name.as_str()).collect()).collect();
        assert_eq!(levels, vec![vec!["db-pusat", "web"], vec!["simpeg"]]);
        let only: BTreeSet<SystemName> = [SystemName::new("simpeg").unwrap()].into();
        assert_eq!(s.levels(Some(&only)).unwrap().len(), 1);
    }

    #[test]
    fn a_missing_directory_is_no_systems() {
        let s = Systems::load(Path::new("/nonexistent/pulih/systems")).unwrap();
        assert!(s.is_empty());
    }
}
