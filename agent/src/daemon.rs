//! `pulih-agent run`: the agent as a long-running service.
//!
//! One control loop owns all state; everything else talks to it through a
//! channel: the signal thread (SIGTERM, SIGINT, SIGHUP), the watchers of
//! continuous datasets, the snapshot threads (one per dataset at a time,
//! datasets in parallel), the certificate-renewal and report threads. On
//! every tick the loop decides, per dataset, whether a snapshot is due:
//!
//! * a **retry** after a failure, with exponential backoff and jitter
//!   (`retry_min` doubling up to `retry_max`); while backing off nothing
//!   else starts, so an outage never piles up more than one pending
//!   snapshot per dataset, and the catch-up resends only what the
//!   controller lacks;
//! * **continuous** mode: a full walk first (changes made while the agent
//!   was down have no events), then a snapshot of only the changed paths
//!   once they have been quiet for `debounce` (or, under a constant stream
//!   of writes, `MAX_DELAY_FACTOR` times that after the first change); a
//!   full walk again when the watcher may have lost events, and every
//!   `rescan_interval`;
//! * the **schedule**: an interval or a calendar time.
//!
//! Events that arrive while a snapshot runs belong to the next one: the
//! changed-path set is taken when a snapshot starts and given back if it
//! fails. SIGTERM abandons running snapshots (nothing partial is committed:
//! only a commit makes a snapshot exist) and waits at most
//! `shutdown_timeout`; SIGHUP reloads the configuration, and keeps the old
//! one when the new one is invalid.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pulih_core::protocol::{DatasetReport, Message};
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::config::{Dataset, Settings};
use crate::conn::{Conn, ConnError};
use crate::hooks::{self, Hook};
use crate::metrics::AgentMetrics;
use crate::snapshot::{self, Cancelled, Options, Outcome};
use crate::standby::StandbyEvent;
use crate::status::{DatasetStatus, LastCommit, StandbyStatus, StatusFile};
use crate::throttle::Throttle;
use crate::watch::{self, DatasetWatcher, WatchEvent};
use crate::{enroll, systemd};

/// Under continuous writes, snapshot at the latest this many debounce
/// periods after the first change.
const MAX_DELAY_FACTOR: u32 = 4;
/// Least time between two full walks forced by a broken watcher.
const DEGRADED_RESCAN: Duration = Duration::from_secs(300);
/// How often a lost watch is set up again.
const REWATCH_EVERY: Duration = Duration::from_secs(60);
/// How often the certificate's expiry is checked.
const RENEW_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Messages to the control loop.
enum Msg {
    Signal(i32),
    Watch(WatchEvent),
    Finished(Box<Finished>),
    Renewed(Result<i64, String>),
    Reported(Result<(), String>),
    Standby(StandbyEvent),
}

impl From<WatchEvent> for Msg {
    fn from(e: WatchEvent) -> Self {
        Msg::Watch(e)
    }
}

/// Why a snapshot did not commit.
enum Failure {
    /// The pre-hook failed; nothing was read.
    Skipped(String),
    Cancelled,
    Failed {
        kind: &'static str,
        message: String,
        temporary: bool,
    },
}

struct Finished {
    dataset: String,
    result: Result<Outcome, Failure>,
    /// The changed paths the run was given (to give back on failure);
    /// `None` for a full walk.
    dirty: Option<HashSet<PathBuf>>,
    full: bool,
    started: OffsetDateTime,
    took: Duration,
}

/// Per-dataset state of the loop.
struct DsState {
    ds: Arc<Dataset>,
    watcher: Option<DatasetWatcher>,
    /// When to try setting up a failed watch again.
    rewatch_at: Option<Instant>,
    dirty: HashSet<PathBuf>,
    first_change: Option<Instant>,
    last_change: Option<Instant>,
    need_full: bool,
    last_full: Option<Instant>,
    next_scheduled: Option<OffsetDateTime>,
    running: bool,
    failures: u32,
    retry_at: Option<Instant>,
    status: DatasetStatus,
}

impl DsState {
    fn new(ds: Dataset, old: Option<DatasetStatus>) -> Self {
        let mode = ds.mode();
        let mut status = old.unwrap_or_else(|| DatasetStatus { name: ds.name.to_string(), ..Default::default() });
        status.mode = mode;
        status.rpo_target_secs = ds.rpo_target.map(|d| d.as_secs());
        status.running = false;
        Self {
            need_full: ds.continuous,
            ds: Arc::new(ds),
            watcher: None,
            rewatch_at: None,
            dirty: HashSet::new(),
            first_change: None,
            last_change: None,
            last_full: None,
            next_scheduled: None,
            running: false,
            failures: 0,
            retry_at: None,
            status,
        }
    }

    /// Whether a snapshot should start now, and whether it walks everything.
    fn due(&self, now: Instant, wall: OffsetDateTime) -> Option<(bool, &'static str)> {
        if self.running {
            return None;
        }
        if let Some(at) = self.retry_at {
            return (now >= at).then_some((self.need_full || !self.ds.continuous, "retry after a failure"));
        }
        if self.ds.continuous {
            if self.need_full {
                return Some((true, "full walk (start, or the watcher may have lost events)"));
            }
            if self.watcher.is_none() && self.last_full.is_none_or(|t| now >= t + DEGRADED_RESCAN) {
                return Some((true, "full walk (no working watcher)"));
            }
            if self.last_full.is_some_and(|t| now >= t + self.ds.rescan_interval) {
                return Some((true, "periodic full rescan"));
            }
            if let (Some(first), Some(last)) = (self.first_change, self.last_change) {
                if now >= last + self.ds.debounce || now >= first + self.ds.debounce * MAX_DELAY_FACTOR {
                    return Some((false, "files changed"));
                }
            }
        }
        if self.next_scheduled.is_some_and(|t| wall >= t) {
            return Some((!self.ds.continuous, "schedule"));
        }
        None
    }
}

/// What the controller is told about a dataset.
pub fn report_of(ds: &Dataset) -> DatasetReport {
    DatasetReport {
        name: ds.name.to_string(),
        rpo_target_secs: ds.rpo_target.map_or(0, |d| d.as_secs().max(1)),
        schedule: ds.mode(),
    }
}

/// Backoff before retry `n` (1-based): `min` doubling up to `max`, with
/// ±20 % jitter so that agents cut off together do not return together.
fn backoff(n: u32, min: Duration, max: Duration) -> Duration {
    let base = min.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(max);
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b).map(|_| u16::from_le_bytes(b)).unwrap_or(32768);
    let factor = 0.8 + 0.4 * f64::from(r) / f64::from(u16::MAX);
    base.mul_f64(factor)
}

struct Daemon {
    config_path: PathBuf,
    settings: Arc<Settings>,
    tls: Arc<rustls::ClientConfig>,
    throttle: Option<Arc<Throttle>>,
    datasets: BTreeMap<String, DsState>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    cancel: Arc<AtomicBool>,
    metrics: Arc<AgentMetrics>,
    started_at: i64,
    renew_check_at: Instant,
    renewing: bool,
    report_at: Option<Instant>,
    report_failures: u32,
    standby: Option<StandbyStatus>,
    standby_thread: Option<std::thread::JoinHandle<()>>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<()> {
    let settings = Settings::load(config_path)?;
    let tls = Arc::new(enroll::client_config(&settings)?);
    let (tx, rx) = mpsc::channel();
    spawn_signal_thread(tx.clone())?;
    let metrics = AgentMetrics::new();
    let stop_metrics = Arc::new(AtomicBool::new(false));
    if let Some(addr) = settings.metrics {
        match TcpListener::bind(addr) {
            Ok(l) => {
                info!(%addr, "metrics at http://{addr}/metrics");
                crate::metrics::serve(l, metrics.clone(), stop_metrics.clone());
            }
            // Backups matter more than metrics: go on, loudly.
            Err(e) => error!(%addr, error = %e, "cannot serve metrics; continuing without them"),
        }
    }
    let old = StatusFile::load(&status_path(&settings)).ok();
    let mut d = Daemon {
        config_path: config_path.to_owned(),
        throttle: settings.bandwidth_limit.map(|b| Arc::new(Throttle::new(b))),
        settings: Arc::new(settings),
        tls,
        datasets: BTreeMap::new(),
        tx,
        rx,
        cancel: Arc::new(AtomicBool::new(false)),
        metrics,
        started_at: OffsetDateTime::now_utc().unix_timestamp(),
        renew_check_at: Instant::now(),
        renewing: false,
        report_at: Some(Instant::now()),
        report_failures: 0,
        standby: None,
        standby_thread: None,
    };
    d.install_datasets(old.map(|s| s.datasets).unwrap_or_default());
    d.start_standby();
    systemd::ready();
    info!(agent = %d.settings.agent, datasets = d.datasets.len(), "pulih-agent running");
    let r = d.main_loop();
    stop_metrics.store(true, Ordering::Relaxed);
    r
}

fn status_path(settings: &Settings) -> PathBuf {
    settings.state_dir.join(crate::status::FILE_NAME)
}

fn spawn_signal_thread(tx: Sender<Msg>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for s in signals.forever() {
            if tx.send(Msg::Signal(s)).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

impl Daemon {
    /// Takes the dataset's newest recorded commit ([`LastCommit`]) into
    /// `status` when it is newer than what `status` knows; returns whether
    /// it did.
    fn merge_last_commit(cache_dir: &Path, name: &str, status: &mut DatasetStatus) -> bool {
        match LastCommit::load(&LastCommit::path(cache_dir, name)) {
            Ok(Some(c)) => status.merge_commit(&c),
            Ok(None) => false,
            Err(e) => {
                warn!(dataset = %name, error = %e, "cannot read the record of the newest snapshot");
                false
            }
        }
    }

    /// Puts a snapshot the status knows of, but this process did not take,
    /// into the metrics.
    fn publish_known_commit(metrics: &AgentMetrics, name: &str, status: &DatasetStatus) {
        if let Some(t) = status.data_time {
            metrics.commit_seen(name, status.last_success_at.unwrap_or(t), t.saturating_mul(1_000_000_000));
        }
    }

    /// (Re)creates the per-dataset state from the settings, keeping what is
    /// known of datasets that stay.
    fn install_datasets(&mut self, mut previous: Vec<DatasetStatus>) {
        let mut old_states = std::mem::take(&mut self.datasets);
        let offset = self.settings.daemon.utc_offset;
        let now = OffsetDateTime::now_utc();
        for ds in self.settings.datasets.clone() {
            let name = ds.name.to_string();
            let kept = old_states.remove(&name);
            let status = kept
                .as_ref()
                .map(|k| k.status.clone())
                .or_else(|| previous.iter().position(|s| s.name == name).map(|i| previous.swap_remove(i)));
            let mut st = DsState::new(ds, status);
            // From the previous run's status file or a snapshot taken by
            // hand: the lag metric is there from the start, not only after
            // the next snapshot.
            Self::merge_last_commit(&self.settings.cache_dir(), &name, &mut st.status);
            Self::publish_known_commit(&self.metrics, &name, &st.status);
            if let Some(k) = kept {
                // Same dataset: keep its pending changes and run state.
                st.dirty = k.dirty;
                st.first_change = k.first_change;
                st.last_change = k.last_change;
                st.need_full = st.ds.continuous && (k.need_full || !k.ds.continuous || k.ds.paths != st.ds.paths);
                st.last_full = k.last_full;
                st.running = k.running;
                st.failures = k.failures;
                st.retry_at = k.retry_at;
            }
            let last_start = st.status.last_attempt_at.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
            st.next_scheduled = st.ds.schedule.as_ref().map(|s| s.next_after(now, last_start, offset));
            if st.ds.continuous {
                Self::start_watch(&self.tx, &self.metrics, &mut st);
            }
            if st.ds.schedule.is_none() && !st.ds.continuous {
                warn!(dataset = %name, "dataset has neither `schedule` nor `continuous = true`: `run` never snapshots it");
            }
            self.metrics.set_rpo_target(&name, st.ds.rpo_target.map_or(0, |d| d.as_secs()));
            self.datasets.insert(name, st);
        }
        // Datasets removed from the configuration: a running snapshot of
        // one finishes, its result is only logged.
        for (name, _) in old_states {
            info!(dataset = %name, "dataset removed from the configuration");
            self.metrics.forget_dataset(&name);
        }
        self.publish();
    }

    fn start_watch(tx: &Sender<Msg>, metrics: &AgentMetrics, st: &mut DsState) {
        match watch::watch::<Msg>(st.ds.name.as_str(), &st.ds.paths, tx.clone()) {
            Ok(w) => {
                st.watcher = Some(w);
                st.rewatch_at = None;
            }
            Err(reason) => {
                warn!(dataset = %st.ds.name, %reason, "cannot watch the dataset; falling back to full rescans");
                metrics.watcher_fallback(st.ds.name.as_str(), "watch_failed");
                st.watcher = None;
                st.rewatch_at = Some(Instant::now() + REWATCH_EVERY);
                st.need_full = true;
            }
        }
    }

    fn main_loop(&mut self) -> Result<()> {
        let tick = systemd::watchdog_interval().unwrap_or(Duration::from_secs(1)).min(Duration::from_millis(250));
        let mut last_publish = Instant::now();
        loop {
            match self.rx.recv_timeout(self.wait(tick)) {
                Ok(Msg::Signal(s)) if s == signal_hook::consts::SIGHUP => self.reload(),
                Ok(Msg::Signal(s)) => {
                    info!(signal = s, "stopping");
                    return self.shutdown();
                }
                Ok(Msg::Watch(ev)) => self.on_watch(ev),
                Ok(Msg::Finished(f)) => self.on_finished(*f),
                Ok(Msg::Renewed(r)) => self.on_renewed(r),
                Ok(Msg::Reported(r)) => self.on_reported(r),
                Ok(Msg::Standby(ev)) => self.on_standby(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
            }
            systemd::watchdog();
            self.start_due();
            self.housekeeping();
            if last_publish.elapsed() >= Duration::from_secs(10) {
                self.publish();
                last_publish = Instant::now();
            }
        }
    }

    /// How long the loop may sleep: at most `tick`, less when a debounce
    /// ends sooner (so a short debounce is kept exactly).
    fn wait(&self, tick: Duration) -> Duration {
        let now = Instant::now();
        self.datasets
            .values()
            .filter(|st| !st.running)
            .filter_map(|st| st.last_change.map(|t| (t + st.ds.debounce).saturating_duration_since(now)))
            .fold(tick, Duration::min)
            .max(Duration::from_millis(1))
    }

    fn on_watch(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Changed { dataset, paths } => {
                let Some(st) = self.datasets.get_mut(&dataset) else { return };
                let state_dir = &self.settings.state_dir;
                let now = Instant::now();
                let mut any = false;
                for p in paths.iter().filter(|p| !p.starts_with(state_dir)) {
                    watch::mark(&mut st.dirty, p);
                    any = true;
                }
                if any {
                    st.first_change.get_or_insert(now);
                    st.last_change = Some(now);
                    self.metrics.set_pending(&dataset, st.dirty.len() as u64);
                }
            }
            WatchEvent::Lost { dataset, reason } => {
                let Some(st) = self.datasets.get_mut(&dataset) else { return };
                warn!(dataset = %dataset, %reason, "the watcher may have missed changes; the next snapshot walks everything");
                self.metrics.watcher_fallback(&dataset, "events_lost");
                st.need_full = true;
            }
        }
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let names: Vec<String> = self.datasets.keys().cloned().collect();
        for name in names {
            let st = self.datasets.get_mut(&name).expect("listed");
            if st.ds.continuous && st.watcher.is_none() && st.rewatch_at.is_some_and(|t| now >= t) {
                Self::start_watch(&self.tx, &self.metrics, st);
            }
            let Some((full, why)) = st.due(now, wall) else { continue };
            let dirty = std::mem::take(&mut st.dirty);
            st.first_change = None;
            st.last_change = None;
            st.need_full = false;
            st.retry_at = None;
            st.running = true;
            st.status.running = true;
            if full {
                st.last_full = Some(now);
            }
            if let Some(s) = &st.ds.schedule {
                if st.next_scheduled.is_some_and(|t| wall >= t) {
                    st.next_scheduled = Some(s.next_after(wall, Some(wall), self.settings.daemon.utc_offset));
                }
            }
            self.metrics.set_pending(&name, 0);
            info!(dataset = %name, reason = why, full, changed_paths = dirty.len(), "starting snapshot");
            let job = Job {
                settings: self.settings.clone(),
                ds: st.ds.clone(),
                tls: self.tls.clone(),
                throttle: self.throttle.clone(),
                cancel: self.cancel.clone(),
                dirty: (!full).then_some(dirty),
                tx: self.tx.clone(),
            };
            if let Err(e) = std::thread::Builder::new().name(format!("snapshot-{name}")).spawn(move || job.run()) {
                error!(dataset = %name, error = %e, "cannot start a snapshot thread");
                let st = self.datasets.get_mut(&name).expect("listed");
                st.running = false;
                st.status.running = false;
            }
        }
    }

    fn on_finished(&mut self, f: Finished) {
        let Finished { dataset, result, dirty, full, started, took } = f;
        let (retry_min, retry_max) = (self.settings.daemon.retry_min, self.settings.daemon.retry_max);
        let Some(st) = self.datasets.get_mut(&dataset) else {
            info!(dataset = %dataset, "snapshot of a removed dataset finished");
            return;
        };
        st.running = false;
        st.status.running = false;
        st.status.last_attempt_at = Some(started.unix_timestamp());
        match result {
            Ok(o) => {
                st.failures = 0;
                st.status.last_snapshot = Some(o.id.clone());
                st.status.last_success_at = Some(OffsetDateTime::now_utc().unix_timestamp());
                st.status.data_time = Some(o.started_ns / 1_000_000_000);
                st.status.last_error = None;
                let outcome = if o.errors > 0 { "problems" } else { "ok" };
                st.status.last_outcome = Some(outcome.into());
                self.metrics.snapshot_finished(
                    &dataset,
                    outcome,
                    took,
                    o.started_ns,
                    o.bytes_read,
                    o.bytes_sent,
                    o.chunks_deduplicated,
                );
                info!(dataset = %dataset, snapshot = %&o.id[..12], files = o.files, bytes_read = o.bytes_read,
                    bytes_sent = o.bytes_sent, seconds = o.seconds, full, "snapshot committed");
            }
            Err(failure) => {
                // The changes this run was to capture are still pending.
                match dirty {
                    Some(d) => {
                        st.dirty.extend(d);
                        st.first_change.get_or_insert_with(Instant::now);
                        st.last_change.get_or_insert_with(Instant::now);
                    }
                    None => st.need_full = st.ds.continuous,
                }
                let (outcome, msg, retry) = match failure {
                    Failure::Cancelled => ("failed", "abandoned: the agent is stopping".to_string(), false),
                    Failure::Skipped(why) => {
                        self.metrics.error(&dataset, "pre_hook");
                        ("skipped", why, true)
                    }
                    Failure::Failed { kind, message, temporary } => {
                        self.metrics.error(&dataset, kind);
                        // A permanent error (certificate refused, bad path)
                        // is retried too, slowly: someone may fix it.
                        let _ = temporary;
                        ("failed", message, true)
                    }
                };
                st.status.last_outcome = Some(outcome.into());
                st.status.last_error = Some(msg.clone());
                self.metrics.snapshot_finished(&dataset, outcome, took, 0, 0, 0, 0);
                if retry {
                    st.failures += 1;
                    let wait = backoff(st.failures, retry_min, retry_max);
                    st.retry_at = Some(Instant::now() + wait);
                    warn!(dataset = %dataset, error = %msg, failures = st.failures, retry_in_s = wait.as_secs_f64(),
                        "snapshot did not commit; will retry");
                }
            }
        }
        self.publish();
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if !self.renewing && now >= self.renew_check_at {
            self.renew_check_at = now + RENEW_CHECK_EVERY;
            match enroll::certificate_expiry(&self.settings) {
                Ok(exp) => {
                    self.metrics.set_cert_expiry(exp);
                    let left = exp - OffsetDateTime::now_utc().unix_timestamp();
                    if left < self.settings.daemon.renew_before.as_secs() as i64 {
                        info!(days_left = left / 86400, "renewing the agent certificate");
                        self.renewing = true;
                        let (settings, tx) = (self.settings.clone(), self.tx.clone());
                        std::thread::spawn(move || {
                            let r = enroll::renew(&settings).map_err(|e| pulih_core::report::chain(e.as_ref()));
                            let _ = tx.send(Msg::Renewed(r));
                        });
                    }
                }
                Err(e) => error!(error = %pulih_core::report::chain(e.as_ref()), "cannot read the agent certificate"),
            }
        }
        if self.report_at.is_some_and(|t| now >= t) {
            self.report_at = None;
            let (settings, tls, tx) = (self.settings.clone(), self.tls.clone(), self.tx.clone());
            std::thread::spawn(move || {
                let r = report_all(&settings, tls).map_err(|e| e.to_string());
                let _ = tx.send(Msg::Reported(r));
            });
        }
    }

    fn on_renewed(&mut self, r: Result<i64, String>) {
        self.renewing = false;
        match r.and_then(|exp| enroll::client_config(&self.settings).map(|c| (exp, c)).map_err(|e| format!("{e:#}"))) {
            Ok((exp, cfg)) => {
                self.tls = Arc::new(cfg);
                self.metrics.set_cert_expiry(exp);
                info!(not_after = exp, "agent certificate renewed; new connections use it");
            }
            Err(e) => {
                self.metrics.error("-", "certificate_renewal");
                warn!(error = %e, "certificate renewal failed; trying again in an hour");
                self.renew_check_at = Instant::now() + Duration::from_secs(3600);
            }
        }
    }

    fn on_reported(&mut self, r: Result<(), String>) {
        match r {
            Ok(()) => self.report_failures = 0,
            Err(e) => {
                self.report_failures += 1;
                let wait =
                    backoff(self.report_failures, self.settings.daemon.retry_min, self.settings.daemon.retry_max);
                warn!(error = %e, retry_in_s = wait.as_secs(), "could not report the datasets to the controller");
                self.report_at = Some(Instant::now() + wait);
            }
        }
    }

    /// Starts the standby thread when `[standby] enabled = true` (once; it
    /// reads the configuration again for every job).
    fn start_standby(&mut self) {
        let Some(sb) = &self.settings.standby else {
            self.standby = None;
            return;
        };
        self.standby = Some(StandbyStatus {
            root: sb.root.display().to_string(),
            protected: sb.protected.clone(),
            ..self.standby.take().unwrap_or_default()
        });
        if self.standby_thread.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let (path, cancel, tx) = (self.config_path.clone(), self.cancel.clone(), self.tx.clone());
        match std::thread::Builder::new().name("standby".into()).spawn(move || {
            crate::standby::run_loop(path, cancel, |ev| {
                let _ = tx.send(Msg::Standby(ev));
            })
        }) {
            Ok(t) => {
                info!(root = %sb.root.display(), "standby role enabled: asking the controller for jobs");
                self.standby_thread = Some(t);
            }
            Err(e) => error!(error = %e, "cannot start the standby thread"),
        }
    }

    fn on_standby(&mut self, ev: StandbyEvent) {
        match ev {
            StandbyEvent::Reload => self.reload(),
            StandbyEvent::Current(c) => {
                if let Some(s) = &mut self.standby {
                    s.current_job = c;
                }
            }
            StandbyEvent::Finished(l) => {
                if let Some(s) = &mut self.standby {
                    s.last_job = Some(l);
                }
            }
        }
        self.publish();
    }

    fn reload(&mut self) {
        systemd::reloading();
        match Settings::load(&self.config_path).and_then(|s| enroll::client_config(&s).map(|c| (s, c))) {
            Ok((settings, tls)) => {
                if settings.metrics != self.settings.metrics {
                    warn!("the metrics address changed; it takes effect at the next restart");
                }
                self.throttle = settings.bandwidth_limit.map(|b| Arc::new(Throttle::new(b)));
                self.settings = Arc::new(settings);
                self.tls = Arc::new(tls);
                self.install_datasets(Vec::new());
                self.start_standby();
                self.report_at = Some(Instant::now());
                info!(config = %self.config_path.display(), "configuration reloaded");
            }
            Err(e) => {
                let why = pulih_core::report::chain(e.as_ref());
                error!(config = %self.config_path.display(), error = %why, "new configuration refused; the previous one stays in force");
                self.metrics.error("-", "config_reload");
                systemd::status(&format!("configuration reload refused: {why}"));
            }
        }
        systemd::ready();
    }

    fn shutdown(&mut self) -> Result<()> {
        systemd::stopping();
        self.cancel.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.settings.daemon.shutdown_timeout;
        while self.datasets.values().any(|s| s.running) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let running: Vec<_> =
                    self.datasets.values().filter(|s| s.running).map(|s| s.ds.name.to_string()).collect();
                warn!(
                    ?running,
                    "snapshots still running at the shutdown timeout; exiting (nothing partial is committed)"
                );
                break;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(250))) {
                Ok(Msg::Finished(f)) => self.on_finished(*f),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(t) = self.standby_thread.take() {
            // The loop checks the stop flag every 100 ms; a job in progress
            // (a long restore) is not waited for: the controller marks it
            // failed when the connection ends.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.publish();
        info!("pulih-agent stopped");
        Ok(())
    }

    /// Writes the status file, the metrics and systemd's status line.
    fn publish(&mut self) {
        let now = OffsetDateTime::now_utc();
        let cache_dir = self.settings.cache_dir();
        for (name, st) in &mut self.datasets {
            // A snapshot taken by hand meanwhile. Not while the service's
            // own snapshot of the dataset runs: that one updates the
            // status when it finishes.
            if !st.running && Self::merge_last_commit(&cache_dir, name, &mut st.status) {
                Self::publish_known_commit(&self.metrics, name, &st.status);
            }
            st.status.pending_changes = st.dirty.len() as u64;
            st.status.next_run = match (st.running, st.retry_at, st.next_scheduled) {
                (true, _, _) => None,
                (_, Some(at), _) => {
                    Some(now.unix_timestamp() + at.saturating_duration_since(Instant::now()).as_secs() as i64)
                }
                (_, None, Some(t)) => Some(t.unix_timestamp()),
                _ => None,
            };
            if let Some(t) = st.status.next_run {
                self.metrics.set_next_run(name, t);
            }
        }
        let file = StatusFile {
            pid: std::process::id(),
            started_at: self.started_at,
            updated_at: now.unix_timestamp(),
            datasets: self.datasets.values().map(|s| s.status.clone()).collect(),
            standby: self.standby.clone(),
        };
        if let Err(e) = file.write_atomic(&status_path(&self.settings)) {
            warn!(error = %e, "cannot write the status file");
        }
        let line = self
            .datasets
            .values()
            .map(|s| {
                let lag = s.status.data_time.map(|t| format!("lag {}s", now.unix_timestamp() - t));
                format!("{}: {}", s.ds.name, lag.unwrap_or_else(|| "no snapshot yet".into()))
            })
            .collect::<Vec<_>>()
            .join("; ");
        systemd::status(&line);
    }
}

/// One snapshot run on its own thread: hooks around the snapshot.
struct Job {
    settings: Arc<Settings>,
    ds: Arc<Dataset>,
    tls: Arc<rustls::ClientConfig>,
    throttle: Option<Arc<Throttle>>,
    cancel: Arc<AtomicBool>,
    dirty: Option<HashSet<PathBuf>>,
    tx: Sender<Msg>,
}

impl Job {
    fn run(self) {
        let started = OffsetDateTime::now_utc();
        let t0 = Instant::now();
        let result = self.snapshot();
        let full = self.dirty.is_none();
        let f = Finished {
            dataset: self.ds.name.to_string(),
            result,
            dirty: self.dirty,
            full,
            started,
            took: t0.elapsed(),
        };
        let _ = self.tx.send(Msg::Finished(Box::new(f)));
    }

    fn hook_env(&self, phase: &str) -> Vec<(&'static str, String)> {
        let paths = self.ds.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
        vec![
            ("PULIH_AGENT", self.settings.agent.to_string()),
            ("PULIH_DATASET", self.ds.name.to_string()),
            ("PULIH_PATHS", paths),
            ("PULIH_PHASE", phase.to_owned()),
        ]
    }

    fn run_hook(&self, hook: &Hook, phase: &str, extra: &[(&'static str, String)]) -> hooks::HookOutcome {
        let mut env = self.hook_env(phase);
        env.extend(extra.iter().cloned());
        let env_ref: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
        let o = hooks::run(hook, &env_ref, self.ds.hook_timeout, &self.cancel);
        let secs = o.duration.as_secs_f64();
        if o.success {
            info!(dataset = %self.ds.name, phase, status = %o.status, seconds = secs, "hook finished");
        } else {
            warn!(dataset = %self.ds.name, phase, status = %o.status, seconds = secs, output = %o.output, "hook failed");
        }
        o
    }

    fn snapshot(&self) -> Result<Outcome, Failure> {
        if let Some(h) = &self.ds.pre_hook {
            let o = self.run_hook(h, "pre", &[]);
            if !o.success {
                if let Some(post) = &self.ds.post_hook {
                    self.run_hook(post, "post", &[("PULIH_RESULT", "skipped".into())]);
                }
                let tail: String = o.output.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(Failure::Skipped(format!(
                    "pre-hook failed ({}); snapshot skipped: {}",
                    o.status,
                    tail.trim()
                )));
            }
        }
        let opts = Options {
            progress_bar: false,
            dirty: self.dirty.as_ref(),
            cancel: self.cancel.clone(),
            throttle: self.throttle.clone(),
        };
        let r = snapshot::run(&self.settings, &self.ds, self.tls.clone(), &opts);
        if let Some(post) = &self.ds.post_hook {
            let (result, id) = match &r {
                Ok(o) => ("ok", o.id.clone()),
                Err(_) => ("failed", String::new()),
            };
            self.run_hook(post, "post", &[("PULIH_RESULT", result.into()), ("PULIH_SNAPSHOT", id)]);
        }
        r.map_err(|e| {
            if e.is::<Cancelled>() {
                return Failure::Cancelled;
            }
            let conn = e.downcast_ref::<ConnError>();
            let kind = match conn {
                Some(ConnError::Connect { .. } | ConnError::Io(_)) => "network",
                Some(ConnError::Refused { .. }) => "refused",
                Some(ConnError::Protocol(_)) => "protocol",
                None => "local",
            };
            Failure::Failed {
                kind,
                message: pulih_core::report::chain(e.as_ref()),
                temporary: conn.is_some_and(ConnError::is_temporary),
            }
        })
    }
}

/// Tells the controller about every dataset (targets and schedules).
pub fn report_all(settings: &Settings, tls: Arc<rustls::ClientConfig>) -> Result<(), ConnError> {
    let mut conn = Conn::connect(&settings.address, &settings.server_name, tls)?;
    conn.hello()?;
    conn.send(&Message::Report { datasets: settings.datasets.iter().map(report_of).collect() })?;
    match conn.recv()? {
        Message::ReportOk { repair } => {
            if !repair.is_empty() {
                info!(
                    chunks = repair.len(),
                    "the controller asks for damaged chunks; they are sent with the next snapshots"
                );
            }
        }
        other => return Err(ConnError::Protocol(format!("unexpected answer to report: {}", other.name()))),
    }
    conn.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(600));
        for n in 1..40 {
            let b = backoff(n, min, max);
            let base = (5u64 << (n - 1).min(20)).min(600) as f64;
            assert!(b.as_secs_f64() >= base * 0.79 && b.as_secs_f64() <= base * 1.21, "n={n} {b:?}");
        }
    }
}
