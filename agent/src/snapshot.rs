//! One snapshot of one dataset, end to end: connect, scan and upload in
//! parallel, commit, then install the new change cache.
//!
//! A failed attempt leaves nothing visible at the controller (only a commit
//! makes a snapshot exist) and the previous change cache in place. Temporary
//! failures are retried; the retry resends only what the controller does not
//! have yet. If the controller says something the cache relies on is missing
//! or damaged, the next attempt runs without the cache and re-reads all files
//! (F15). Only one snapshot of a dataset runs at a time (a lock file in the
//! cache directory).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pulih_core::formats::CHUNKER_VERSION;
use pulih_core::protocol::{ErrorCode, Message};
use pulih_core::snapshot::SnapshotRecord;
use pulih_core::{now_ns, SnapshotId};
use serde::Serialize;
use tracing::{info, warn};

use crate::cache::{PackReader, PackWriter};
use crate::config::{Dataset, Settings};
use crate::conn::{Conn, ConnError};
use crate::scan::{self, Progress, ScanError, ScanParams};
use crate::status::LastCommit;
use crate::upload;

/// What one snapshot did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub dataset: String,
    pub id: String,
    pub files: u64,
    pub bytes: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub bytes_new: u64,
    pub errors: u64,
    pub changed_while_read: u64,
    pub seconds: f64,
    pub attempts: u32,
    /// When the snapshot started (Unix ns): the age of the DRC copy's data.
    pub started_ns: i64,
    /// Chunks read that the controller already had.
    pub chunks_deduplicated: u64,
}

/// How long to wait before retry n (1-based).
const BACKOFF: [u64; 3] = [1, 3, 8];

/// How a snapshot is taken.
#[derive(Default)]
pub struct Options<'a> {
    /// A progress bar when standard error is a terminal.
    pub progress_bar: bool,
    /// Continuous mode: where something changed since the parent snapshot
    /// (see [`ScanParams::dirty`]); `None` walks everything.
    pub dirty: Option<&'a HashSet<PathBuf>>,
    /// Set to stop: the attempt is abandoned and nothing is committed.
    pub cancel: Arc<AtomicBool>,
    /// Bandwidth limit shared by every upload of the agent.
    pub throttle: Option<Arc<crate::throttle::Throttle>>,
}

/// The snapshot was abandoned because [`Options::cancel`] was set.
#[derive(Debug, thiserror::Error)]
#[error("snapshot abandoned: the agent is stopping (nothing was committed)")]
pub struct Cancelled;

/// Takes one snapshot of `ds`, retrying temporary failures.
pub fn run(settings: &Settings, ds: &Dataset, tls: Arc<rustls::ClientConfig>, opts: &Options<'_>) -> Result<Outcome> {
    let mut use_cache = true;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(Cancelled.into());
        }
        match once(settings, ds, tls.clone(), use_cache, opts) {
            Ok(mut o) => {
                o.attempts = attempt;
                return Ok(o);
            }
            Err(e) => {
                let conn = e.downcast_ref::<ConnError>();
                let missing = matches!(
                    conn,
                    Some(ConnError::Refused { code: ErrorCode::MissingReference | ErrorCode::Integrity, .. })
                );
                // A damaged change cache costs one full read, not the snapshot.
                let missing = missing || matches!(e.downcast_ref::<ScanError>(), Some(ScanError::Cache(_)));
                let temporary = conn.is_some_and(ConnError::is_temporary);
                if attempt as usize > BACKOFF.len() || !(temporary || missing) || e.is::<Cancelled>() {
                    return Err(e);
                }
                if missing && use_cache {
                    warn!(dataset = %ds.name, "the controller lacks data the change cache relies on; retrying without the cache");
                    use_cache = false;
                }
                let wait = BACKOFF[attempt as usize - 1];
                let error = pulih_core::report::chain(e.as_ref());
                warn!(dataset = %ds.name, %error, retry_in_s = wait, "snapshot attempt failed");
                let until = Instant::now() + Duration::from_secs(wait);
                while Instant::now() < until && !opts.cancel.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

fn once(
    settings: &Settings,
    ds: &Dataset,
    tls: Arc<rustls::ClientConfig>,
    use_cache: bool,
    opts: &Options<'_>,
) -> Result<Outcome> {
    let started = Instant::now();
    let started_ns = now_ns();
    let _lock = lock_dataset(settings, ds)?;
    let pack_path = settings.cache_dir().join(format!("{}.pack", ds.name));
    let parent = if use_cache {
        match PackReader::open(&pack_path) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "ignoring the change cache");
                None
            }
        }
    } else {
        None
    };
    // The record names the last snapshot committed for this dataset even
    // when the change cache is not used (a retry after the controller
    // refused a reused blob): a controller that does not know it while it
    // knows older ones was restored from an older copy, and says so (F18).
    let parent_id: Option<SnapshotId> = parent.as_ref().map(|p| p.snapshot).or_else(|| last_committed(settings, ds));
    // Without the parent's records nothing can be reused.
    let dirty = if parent.is_some() { opts.dirty } else { None };

    let mut conn = Conn::connect(&settings.address, &settings.server_name, tls)?;
    let (controller, server_ns) = conn.hello()?;
    let skew_s = (server_ns - now_ns()) / 1_000_000_000;
    if skew_s.abs() > 60 {
        warn!(controller = %controller, skew_s, "clock differs from the controller's by more than a minute");
    }
    conn.set_throttle(opts.throttle.clone());
    conn.send(&Message::Report { datasets: vec![crate::daemon::report_of(ds)] })?;
    let repair = match conn.recv()? {
        Message::ReportOk { repair } => repair,
        other => anyhow::bail!("unexpected answer to report: {}", other.name()),
    };
    if !repair.is_empty() {
        crate::repair::resend(&mut conn, parent.as_deref(), settings.compression_level, &repair)?;
    }
    info!(dataset = %ds.name, %controller, parent = ?parent_id.map(|p| p.short()), incremental = dirty.is_some(), "snapshot started");

    // Batches of items (compressed chunks, trees) between the workers and
    // the uploader: a short queue, since each batch holds 512 KiB or more
    // (scan::ITEM_BATCH_BYTES plus one chunk of up to 1 MiB).
    let (tx, rx) = mpsc::sync_channel(4);
    let progress = Arc::new(Progress::default());
    let abort = Arc::new(AtomicBool::new(false));
    let pack = PackWriter::create(&pack_path)?;
    let display = ProgressDisplay::start(progress.clone(), opts.progress_bar);
    let finished = AtomicBool::new(false);

    let (scanned, uploaded) = std::thread::scope(|s| {
        // Stopping the agent stops the pipeline like an upload failure does.
        let cancel_watch = s.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if opts.cancel.load(Ordering::Relaxed) {
                    abort.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::park_timeout(Duration::from_millis(50));
            }
        });
        let up = s.spawn(|| {
            let r = upload::run(&mut conn, rx);
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r
        });
        let scanned = scan::scan(ScanParams {
            paths: &ds.paths,
            exclude: &ds.exclude,
            small_chunks: &ds.small_chunks,
            threads: settings.threads,
            level: settings.compression_level,
            parent,
            pack,
            items: tx,
            progress: progress.clone(),
            abort: abort.clone(),
            dirty,
        });
        let uploaded = up.join().expect("uploader panicked");
        finished.store(true, Ordering::Relaxed);
        cancel_watch.thread().unpark();
        (scanned, uploaded)
    });
    display.stop();
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(Cancelled.into());
    }
    // An upload error explains a scan abort better than the abort itself.
    let up_stats = uploaded?;
    let mut out = match scanned {
        Ok(o) => o,
        Err(ScanError::Aborted) => anyhow::bail!("snapshot aborted"),
        Err(e) => return Err(e).context(format!("scanning dataset {}", ds.name)),
    };
    out.stats.bytes_sent = up_stats.bytes_sent;
    let record = SnapshotRecord {
        agent: settings.agent.clone(),
        dataset: ds.name.clone(),
        host: rustix::system::uname().nodename().to_string_lossy().into_owned(),
        paths: ds.paths.iter().map(|p| std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec()).collect(),
        started_ns,
        finished_ns: now_ns(),
        root: out.root,
        parent: parent_id,
        chunker_version: CHUNKER_VERSION,
        stats: out.stats.clone(),
        errors_total: out.errors_total,
        errors: out.issues,
    };
    let (local_id, encoded) = record.encode();
    if opts.cancel.load(Ordering::Relaxed) {
        out.pack.discard();
        return Err(Cancelled.into());
    }
    conn.send(&Message::Commit { record: encoded })?;
    let (id, bytes_new) = match conn.recv()? {
        Message::Committed { id, bytes_new, .. } => (id, bytes_new),
        other => anyhow::bail!("unexpected answer to commit: {}", other.name()),
    };
    conn.close();
    if id != local_id {
        anyhow::bail!("the controller committed snapshot {id} but this agent computed {local_id}");
    }
    let commit = LastCommit {
        snapshot: id.to_hex(),
        committed_at: now_ns() / 1_000_000_000,
        data_time: started_ns / 1_000_000_000,
    };
    if let Err(e) = commit.write_atomic(&LastCommit::path(&settings.cache_dir(), ds.name.as_str())) {
        // Only the service's status and lag figures miss it until the next snapshot.
        warn!(error = %e, "could not record the committed snapshot for the agent's status");
    }
    if let Err(e) = out.pack.install(&id, &pack_path) {
        // The snapshot is safe at the controller; only the next one is slower.
        warn!(error = %e, "could not update the change cache");
    }
    let seconds = started.elapsed().as_secs_f64();
    info!(dataset = %ds.name, snapshot = %id.short(), files = record.stats.files, bytes_read = record.stats.bytes_read,
        bytes_sent = record.stats.bytes_sent, bytes_new, seconds, "snapshot committed");
    Ok(Outcome {
        dataset: ds.name.to_string(),
        id: id.to_hex(),
        files: record.stats.files,
        bytes: record.stats.bytes,
        bytes_read: record.stats.bytes_read,
        bytes_sent: record.stats.bytes_sent,
        bytes_new,
        errors: record.errors_total,
        changed_while_read: record.stats.changed_while_read,
        seconds,
        attempts: 1,
        started_ns,
        chunks_deduplicated: up_stats.chunks_offered.saturating_sub(up_stats.chunks_sent),
    })
}

/// Takes `<state_dir>/cache/<dataset>.lock` for one snapshot: two snapshots
/// of one dataset at once (a timer run and a manual one) would write the same
/// change cache. Released when the returned file is closed, also when the
/// process dies. Failing to get it is permanent (not retried).
fn lock_dataset(settings: &Settings, ds: &Dataset) -> Result<std::fs::File> {
    let dir = settings.cache_dir();
    let path = dir.join(format!("{}.lock", ds.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            anyhow::bail!("another snapshot of dataset {} is already running (lock {})", ds.name, path.display())
        }
        Err(e) => Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display())),
    }
}

/// A progress bar on a terminal, periodic log lines otherwise.
struct ProgressDisplay {
    /// Dropping the sender wakes the thread at once (a sleeping thread
    /// would add up to one period to every snapshot).
    stop: Option<mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProgressDisplay {
    fn start(p: Arc<Progress>, bar: bool) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let tty = bar && std::io::stderr().is_terminal();
            let pb = tty.then(|| {
                let pb = indicatif::ProgressBar::new_spinner();
                pb.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
                );
                pb
            });
            let mut last_log = Instant::now();
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_millis(200)) {
                let msg = format!(
                    "{} files, {:.1} MiB scanned, {:.1} MiB read",
                    p.files.load(Ordering::Relaxed),
                    p.bytes.load(Ordering::Relaxed) as f64 / 1048576.0,
                    p.bytes_read.load(Ordering::Relaxed) as f64 / 1048576.0
                );
                match &pb {
                    Some(pb) => {
                        pb.set_message(msg);
                        pb.tick();
                    }
                    None if last_log.elapsed() >= Duration::from_secs(10) => {
                        info!("progress: {msg}");
                        last_log = Instant::now();
                    }
                    None => {}
                }
            }
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
        });
        Self { stop: Some(stop), handle: Some(handle) }
    }

    fn stop(mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The snapshot last committed for `ds` by this host (`<dataset>.last.json`),
/// if it is recorded and readable.
fn last_committed(settings: &Settings, ds: &Dataset) -> Option<SnapshotId> {
    match LastCommit::load(&LastCommit::path(&settings.cache_dir(), ds.name.as_str())) {
        Ok(last) => last.and_then(|c| c.snapshot.parse().ok()),
        Err(e) => {
            warn!(error = %e, "ignoring the record of the last commit");
            None
        }
    }
}
