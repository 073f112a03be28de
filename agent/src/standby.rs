//! The standby role: with `[standby] enabled = true`, `pulih-agent run` asks
//! the controller for jobs on its own thread, over its normal mTLS
//! connection (the agent connects out; nothing connects in to an agency).
//!
//! What a job may make this host do is decided here, not by the controller:
//! * restores go below `[standby] root` (a relative path, no `..`, no
//!   symlinked component) or onto the path of one of this agent's own
//!   datasets (failback); never to an absolute path the controller names;
//!   the writer is the shared one of [`pulih_core::restore`], every tree and
//!   chunk rehashed before use;
//! * an action is a name looked up in `[standby.actions]` of agent.toml;
//!   the controller may pass only `PULIH_*` environment variables;
//! * protect/unprotect edit only `standby-datasets.toml` in the state
//!   directory (merged into the datasets at load), never agent.toml.

use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pulih_core::codec;
use pulih_core::formats::MAX_TREE_LEN;
use pulih_core::protocol::{Destination, JobSpec, Message};
use pulih_core::restore::{self, BlobSource, SourceError};
use pulih_core::restored;
use pulih_core::{ChunkId, DatasetName, TreeId};
use tracing::{info, warn};

use crate::config::{Settings, StandbyDataset, StandbyDatasets};
use crate::conn::Conn;
use crate::{enroll, hooks, snapshot};

/// What the standby thread tells the daemon's control loop.
#[derive(Debug)]
pub enum StandbyEvent {
    /// The job now running (for `status`), or `None` when idle.
    Current(Option<String>),
    /// The last job's outcome, for `status`.
    Finished(String),
    /// The standby datasets changed: reload the configuration.
    Reload,
}

/// Most output of an action kept in the job's result.
const ACTION_OUTPUT: usize = 4096;

/// Runs the standby loop until `cancel` is set.
pub fn run_loop(config_path: PathBuf, cancel: Arc<AtomicBool>, notify: impl Fn(StandbyEvent)) {
    let mut failures = 0u32;
    while !cancel.load(Ordering::Relaxed) {
        let (wait, ok) = match poll_once(&config_path, &cancel, &notify) {
            Ok(Some(interval)) => (interval, true),
            Ok(None) => (Duration::ZERO, true),
            Err(e) => {
                failures += 1;
                warn!(error = %pulih_core::report::chain(e.as_ref()), "standby: cannot ask the controller for work");
                (Duration::from_secs(5 * u64::from(failures.min(12))), false)
            }
        };
        if ok {
            failures = 0;
        }
        let until = Instant::now() + wait;
        while Instant::now() < until && !cancel.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Asks once; runs the job if there is one. `Some(interval)`: nothing to
/// do, wait; `None`: a job ran, ask again at once.
fn poll_once(config_path: &Path, cancel: &AtomicBool, notify: &impl Fn(StandbyEvent)) -> Result<Option<Duration>> {
    let settings = Settings::load(config_path)?;
    let Some(standby) = settings.standby.clone() else {
        return Ok(Some(Duration::from_secs(5)));
    };
    let tls = Arc::new(enroll::client_config(&settings)?);
    let mut conn = Conn::connect(&settings.address, &settings.server_name, tls.clone())?;
    conn.hello()?;
    conn.send(&Message::JobPoll)?;
    let (id, spec) = match conn.recv()? {
        Message::JobNone => {
            conn.close();
            return Ok(Some(standby.poll_interval));
        }
        Message::JobOffer { id, spec } => (id, spec),
        other => bail!("unexpected answer to job-poll: {}", other.name()),
    };
    let what = format!("job {id}: {}", describe(&spec));
    info!(job = id, kind = spec.kind(), "standby job started");
    notify(StandbyEvent::Current(Some(what.clone())));
    let result = run_job(&settings, &spec, &mut conn, tls, cancel, notify);
    let (ok, message, detail) = match result {
        Ok((msg, detail)) => (true, msg, detail),
        Err(e) => (false, pulih_core::report::chain(e.as_ref()), serde_json::json!({})),
    };
    if ok {
        info!(job = id, %message, "standby job done");
    } else {
        warn!(job = id, error = %message, "standby job failed");
    }
    notify(StandbyEvent::Current(None));
    notify(StandbyEvent::Finished(format!("{what}: {}", if ok { "ok" } else { &message })));
    let message: String = message.chars().take(4000).collect();
    conn.send(&Message::JobDone { id, ok, message, detail: detail.to_string() })?;
    match conn.recv()? {
        Message::JobAck => {}
        other => bail!("unexpected answer to job-done: {}", other.name()),
    }
    conn.close();
    Ok(None)
}

fn describe(spec: &JobSpec) -> String {
    match spec {
        JobSpec::Restore { snapshot, destination, only_changed, .. } => format!(
            "restore {} to {}{}",
            snapshot.short(),
            match destination {
                Destination::BelowRoot(p) => format!("<root>/{p}"),
                Destination::DatasetPath(d) => format!("the path of dataset {d}"),
            },
            if *only_changed { " (only changed)" } else { "" }
        ),
        JobSpec::RunAction { name, .. } => format!("action {name}"),
        JobSpec::SnapshotNow { dataset } => format!("snapshot of {dataset}"),
        JobSpec::Protect { dataset, .. } => format!("protect {dataset}"),
        JobSpec::Unprotect { dataset } => format!("unprotect {dataset}"),
        JobSpec::Verify { snapshot, destination, .. } => format!(
            "verify {} at {}",
            snapshot.short(),
            match destination {
                Destination::BelowRoot(p) => format!("<root>/{p}"),
                Destination::DatasetPath(d) => format!("the path of dataset {d}"),
            }
        ),
    }
}

/// A relative path below the standby root: normal components only.
fn relative(rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("destination {rel:?} must be a relative path below [standby] root without '..' or '.'");
    }
    Ok(p.to_owned())
}

/// Creates `root/rel` directory by directory, refusing a component that is
/// a symlink (a planted link must not move the restore elsewhere).
fn below_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating [standby] root {}", root.display()))?;
    let mut at = root.to_owned();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory (a symlink is never followed)", at.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).with_context(|| format!("creating {}", at.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("checking {}", at.display())),
        }
    }
    Ok(at)
}

/// `root/rel`, which must exist, directory by directory, none a symlink.
fn existing_below_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut at = root.to_owned();
    for c in rel.components() {
        at.push(c);
        let m = std::fs::symlink_metadata(&at).with_context(|| format!("checking {}", at.display()))?;
        if !m.is_dir() {
            bail!("{} is not a directory (a symlink is never followed)", at.display());
        }
    }
    Ok(at)
}

/// Where a restore or verify job works: below the standby root (created
/// when `create`, never through a symlink), or a dataset's single path.
fn destination_path(settings: &Settings, root: &Path, destination: &Destination, create: bool) -> Result<PathBuf> {
    Ok(match destination {
        Destination::BelowRoot(rel) if create => below_root(root, &relative(rel)?)?,
        Destination::BelowRoot(rel) => existing_below_root(root, &relative(rel)?)?,
        Destination::DatasetPath(name) => {
            let ds = settings
                .datasets
                .iter()
                .find(|d| d.name.as_str() == name)
                .ok_or_else(|| anyhow!("this agent has no dataset {name:?} to restore onto"))?;
            match ds.paths.as_slice() {
                [p] => p.clone(),
                _ => bail!("dataset {name} has {} paths; failback restores onto a single path", ds.paths.len()),
            }
        }
    })
}

fn run_job(
    settings: &Settings,
    spec: &JobSpec,
    conn: &mut Conn,
    tls: Arc<rustls::ClientConfig>,
    cancel: &AtomicBool,
    notify: &impl Fn(StandbyEvent),
) -> Result<(String, serde_json::Value)> {
    let standby = settings.standby.as_ref().ok_or_else(|| anyhow!("[standby] is not enabled"))?;
    std::fs::create_dir_all(&standby.root)
        .with_context(|| format!("creating [standby] root {}", standby.root.display()))?;
    match spec {
        JobSpec::Restore { root, destination, only_changed, delete, .. } => {
            let dest = destination_path(settings, &standby.root, destination, true)?;
            let opts = restore::Options { only_changed: *only_changed, delete: *delete };
            let t0 = Instant::now();
            let stats = restore::restore(&mut JobSource::new(conn), root, &[], &dest, opts)
                .with_context(|| format!("restoring into {}", dest.display()))?;
            let secs = t0.elapsed().as_secs_f64();
            Ok((
                format!(
                    "restored into {}: {} file(s) written, {} unchanged, {} deleted, {} bytes",
                    dest.display(),
                    stats.files,
                    stats.unchanged,
                    stats.deleted,
                    stats.bytes
                ),
                serde_json::json!({ "stats": stats, "seconds": secs, "destination": dest }),
            ))
        }
        JobSpec::RunAction { name, env } => {
            let hook = standby.actions.get(name).ok_or_else(|| {
                anyhow!("action {name:?} is not declared in [standby.actions] of this agent's agent.toml")
            })?;
            for (k, _) in env {
                let ok = k.starts_with("PULIH_")
                    && k.len() > 6
                    && k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    bail!("environment variable {k:?} refused: a job may set only PULIH_* variables");
                }
            }
            let mut vars: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            vars.push(("PULIH_AGENT", settings.agent.to_string()));
            vars.push(("PULIH_STANDBY_ROOT", standby.root.display().to_string()));
            // Where the job's system was restored, as a path on this host.
            // (Empty at a failback: the data went to the dataset's own path.)
            if let Some((_, rel)) = env.iter().find(|(k, v)| k == "PULIH_RESTORE_PATH" && !v.is_empty()) {
                vars.retain(|(k, _)| *k != "PULIH_RESTORE_DIR");
                vars.push(("PULIH_RESTORE_DIR", standby.root.join(relative(rel)?).display().to_string()));
            }
            let o = hooks::run(hook, &vars, standby.action_timeout, cancel);
            let tail: String = {
                let chars: Vec<char> = o.output.chars().collect();
                chars[chars.len().saturating_sub(ACTION_OUTPUT)..].iter().collect()
            };
            let detail = serde_json::json!({ "status": o.status, "output": tail, "seconds": o.duration.as_secs_f64() });
            if !o.success {
                bail!("action {name} failed ({}): {}", o.status, tail.trim());
            }
            Ok((format!("action {name}: {}", o.status), detail))
        }
        JobSpec::SnapshotNow { dataset } => {
            let ds = settings
                .datasets
                .iter()
                .find(|d| d.name.as_str() == dataset)
                .ok_or_else(|| anyhow!("this agent has no dataset {dataset:?}"))?;
            let cancel = Arc::new(AtomicBool::new(false));
            let opts = snapshot::Options { progress_bar: false, dirty: None, cancel, throttle: None };
            // The daemon's own (scheduled or continuous) snapshot of the
            // dataset may hold its lock: wait for it rather than fail.
            let until = Instant::now() + Duration::from_secs(600);
            let o = loop {
                match snapshot::run(settings, ds, tls.clone(), &opts) {
                    Err(e) if e.to_string().contains("is already running") && Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    r => break r?,
                }
            };
            Ok((
                format!("snapshot {} of {dataset}", &o.id[..12.min(o.id.len())]),
                serde_json::json!({ "snapshot": o.id, "started_ns": o.started_ns, "files": o.files }),
            ))
        }
        JobSpec::Protect { dataset, relative_path, mode } => {
            DatasetName::new(dataset).map_err(|e| anyhow!("dataset name {dataset:?}: {e}"))?;
            if mode != "continuous" {
                crate::schedule::Schedule::parse(mode).map_err(|e| anyhow!("mode {mode:?}: {e}"))?;
            }
            let path = below_root(&standby.root, &relative(relative_path)?)?;
            if settings.datasets.iter().any(|d| d.name.as_str() == dataset && !standby.protected.contains(dataset)) {
                bail!("dataset {dataset} is already configured in agent.toml");
            }
            let mut file = StandbyDatasets::load(&settings.state_dir)?;
            file.dataset.retain(|d| d.name != *dataset);
            file.dataset.push(StandbyDataset { name: dataset.clone(), path: path.clone(), mode: mode.clone() });
            file.save(&settings.state_dir)?;
            notify(StandbyEvent::Reload);
            Ok((format!("protecting {} as dataset {dataset} ({mode})", path.display()), serde_json::json!({})))
        }
        JobSpec::Verify { root, destination, .. } => {
            let dest = destination_path(settings, &standby.root, destination, false)?;
            let t0 = Instant::now();
            let checked = restored::check(&mut JobSource::new(conn), root, &[], &dest);
            let secs = t0.elapsed().as_secs_f64();
            let detail = serde_json::json!({ "checked": checked, "seconds": secs, "destination": dest });
            if checked.problem_count > 0 {
                // The listed problems travel in the message; the detail is
                // not kept for a failed job.
                bail!(
                    "{} difference(s) from the snapshot in {}:\n{}",
                    checked.problem_count,
                    dest.display(),
                    checked.problems.join("\n")
                );
            }
            Ok((
                format!(
                    "verified {}: {} file(s), {} bytes re-read and match the snapshot",
                    dest.display(),
                    checked.files,
                    checked.bytes
                ),
                detail,
            ))
        }
        JobSpec::Unprotect { dataset } => {
            let mut file = StandbyDatasets::load(&settings.state_dir)?;
            let before = file.dataset.len();
            file.dataset.retain(|d| d.name != *dataset);
            if file.dataset.len() == before {
                bail!("dataset {dataset} was not protected by a standby job (agent.toml datasets are the sysadmin's)");
            }
            file.save(&settings.state_dir)?;
            notify(StandbyEvent::Reload);
            Ok((format!("no longer protecting dataset {dataset}"), serde_json::json!({})))
        }
    }
}

/// Chunks asked per `FetchChunks` (the controller's limit).
const FETCH_BATCH: usize = 64;
/// Batches in flight: enough to hide the round trip, bounded memory.
const FETCH_WINDOW: usize = 2;

/// The job connection as a blob source. The controller serves only blobs
/// of this job's snapshot; the writer rehashes whatever arrives. Chunks the
/// writer announces are requested ahead, in order, a bounded window at a
/// time, so a long link's round trip is not paid per chunk.
struct JobSource<'a> {
    conn: &'a mut Conn,
    /// Announced and not yet requested.
    wanted: VecDeque<ChunkId>,
    /// Requested, answers pending, in order.
    inflight: VecDeque<ChunkId>,
    batches: VecDeque<usize>,
}

impl<'a> JobSource<'a> {
    fn new(conn: &'a mut Conn) -> Self {
        Self { conn, wanted: VecDeque::new(), inflight: VecDeque::new(), batches: VecDeque::new() }
    }

    fn top_up(&mut self) -> Result<(), SourceError> {
        while self.batches.len() < FETCH_WINDOW && !self.wanted.is_empty() {
            let n = self.wanted.len().min(FETCH_BATCH);
            let ids: Vec<ChunkId> = self.wanted.drain(..n).collect();
            self.inflight.extend(ids.iter().copied());
            self.batches.push_back(n);
            self.conn.send(&Message::FetchChunks { ids })?;
        }
        Ok(())
    }

    /// Reads the next pending answer.
    fn next_answer(&mut self) -> Result<(ChunkId, Vec<u8>), SourceError> {
        let want = self.inflight.pop_front().ok_or("no chunk requested")?;
        if let Some(b) = self.batches.front_mut() {
            *b -= 1;
            if *b == 0 {
                self.batches.pop_front();
            }
        }
        match self.conn.recv()? {
            Message::ChunkData { id, data, .. } if id == want => Ok((id, data)),
            other => Err(format!("expected chunk {want}, got {}", other.name()).into()),
        }
    }
}

impl BlobSource for JobSource<'_> {
    fn tree(&mut self, id: &TreeId) -> Result<Vec<u8>, SourceError> {
        // Answers come in order: collect what is still pending first.
        while !self.inflight.is_empty() {
            self.next_answer()?;
        }
        self.wanted.clear();
        self.conn.send(&Message::FetchTree { id: *id })?;
        match self.conn.recv()? {
            Message::TreeData { id: got, raw_len, data } if got == *id => {
                Ok(codec::decompress_exact(&data, raw_len.into(), MAX_TREE_LEN)?)
            }
            other => Err(format!("expected tree {id}, got {}", other.name()).into()),
        }
    }

    fn chunk(&mut self, id: &ChunkId, len: u32) -> Result<Vec<u8>, SourceError> {
        if self.inflight.front() != Some(id) {
            // Not what was announced next: drop the prediction.
            while !self.inflight.is_empty() {
                self.next_answer()?;
            }
            if self.wanted.front() != Some(id) {
                self.wanted.clear();
                self.wanted.push_back(*id);
            }
        }
        self.top_up()?;
        let (_, data) = self.next_answer()?;
        self.top_up()?;
        Ok(codec::decompress_exact(&data, len.into(), pulih_core::formats::MAX_CHUNK_LEN)?)
    }

    fn prefetch(&mut self, chunks: &[(ChunkId, u32)]) {
        self.wanted.extend(chunks.iter().map(|(id, _)| *id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[standby]` is validated, and datasets protected after a failover
    /// (state dir) are merged at load without touching agent.toml.
    #[test]
    fn standby_config_and_protected_datasets_merge_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let cfg = dir.path().join("agent.toml");
        let base = format!(
            "[agent]\nname = \"sb\"\nstate_dir = {:?}\n[controller]\naddress = \"127.0.0.1:1\"\n",
            state.to_str().unwrap()
        );
        std::fs::write(
            &cfg,
            format!("{base}[standby]\nenabled = true\nroot = \"/srv/x\"\n[standby.actions]\nstart = [\"true\"]\n"),
        )
        .unwrap();
        let s = Settings::load(&cfg).unwrap();
        let sb = s.standby.as_ref().unwrap();
        assert_eq!((sb.root.as_path(), sb.poll_interval), (Path::new("/srv/x"), Duration::from_secs(5)));
        assert!(sb.actions.contains_key("start") && s.datasets.is_empty());
        let file = StandbyDatasets {
            dataset: vec![StandbyDataset { name: "www".into(), path: "/srv/x/web".into(), mode: "continuous".into() }],
        };
        file.save(&state).unwrap();
        let s = Settings::load(&cfg).unwrap();
        assert_eq!(s.datasets.len(), 1);
        assert!(s.datasets[0].continuous);
        assert_eq!(s.standby.unwrap().protected, vec!["www".to_string()]);
        // Actions without the role, and a relative root, are refused.
        std::fs::write(&cfg, format!("{base}[standby]\nroot = \"rel\"\n[standby.actions]\nx = \"true\"\n")).unwrap();
        let e = format!("{:#}", Settings::load(&cfg).unwrap_err());
        assert!(e.contains("enabled is not true"), "{e}");
        std::fs::write(&cfg, format!("{base}[standby]\nenabled = true\nroot = \"rel\"\n")).unwrap();
        let e = format!("{:#}", Settings::load(&cfg).unwrap_err());
        assert!(e.contains("standby.root"), "{e}");
    }

    #[test]
    fn destinations_stay_below_the_root() {
        for bad in ["", "/etc", "../x", "a/../../b", "./a"] {
            assert!(relative(bad).is_err(), "{bad:?}");
        }
        assert_eq!(relative("www/data").unwrap(), PathBuf::from("www/data"));
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("evil")).unwrap();
        assert!(below_root(&root, Path::new("evil/x")).is_err());
        assert!(!dir.path().join("x").exists());
        assert_eq!(below_root(&root, Path::new("ok/x")).unwrap(), root.join("ok/x"));
        // A verify job reads only what exists, never through a symlink.
        assert_eq!(existing_below_root(&root, Path::new("ok/x")).unwrap(), root.join("ok/x"));
        let e = existing_below_root(&root, Path::new("evil/x")).unwrap_err();
        assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
        let e = existing_below_root(&root, Path::new("missing")).unwrap_err();
        assert!(format!("{e:#}").contains("checking"), "{e:#}");
    }
}
