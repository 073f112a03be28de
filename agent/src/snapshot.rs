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

use std::io::IsTerminal;
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
}

/// How long to wait before retry n (1-based).
const BACKOFF: [u64; 3] = [1, 3, 8];

/// Takes one snapshot of `ds`, retrying temporary failures.
pub fn run(settings: &Settings, ds: &Dataset, tls: Arc<rustls::ClientConfig>, progress_bar: bool) -> Result<Outcome> {
    let mut use_cache = true;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match once(settings, ds, tls.clone(), use_cache, progress_bar) {
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
                let temporary = conn.is_some_and(ConnError::is_temporary);
                if attempt as usize > BACKOFF.len() || !(temporary || missing) {
                    return Err(e);
                }
                if missing && use_cache {
                    warn!(dataset = %ds.name, "the controller lacks data the change cache relies on; retrying without the cache");
                    use_cache = false;
                }
                let wait = BACKOFF[attempt as usize - 1];
                let error = pulih_core::report::chain(e.as_ref());
                warn!(dataset = %ds.name, %error, retry_in_s = wait, "snapshot attempt failed");
                std::thread::sleep(Duration::from_secs(wait));
            }
        }
    }
}

fn once(
    settings: &Settings,
    ds: &Dataset,
    tls: Arc<rustls::ClientConfig>,
    use_cache: bool,
    bar: bool,
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
    let parent_id: Option<SnapshotId> = parent.as_ref().map(|p| p.snapshot);

    let mut conn = Conn::connect(&settings.address, &settings.server_name, tls)?;
    let (controller, server_ns) = conn.hello()?;
    let skew_s = (server_ns - now_ns()) / 1_000_000_000;
    if skew_s.abs() > 60 {
        warn!(controller = %controller, skew_s, "clock differs from the controller's by more than a minute");
    }
    info!(dataset = %ds.name, %controller, parent = ?parent_id.map(|p| p.short()), "snapshot started");

    let (tx, rx) = mpsc::sync_channel(32);
    let progress = Arc::new(Progress::default());
    let abort = Arc::new(AtomicBool::new(false));
    let pack = PackWriter::create(&pack_path)?;
    let display = ProgressDisplay::start(progress.clone(), bar);

    let (scanned, uploaded) = std::thread::scope(|s| {
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
            threads: settings.threads,
            level: settings.compression_level,
            parent,
            pack,
            items: tx,
            progress: progress.clone(),
            abort: abort.clone(),
        });
        (scanned, up.join().expect("uploader panicked"))
    });
    display.stop();
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
    conn.send(&Message::Commit { record: encoded })?;
    let (id, bytes_new) = match conn.recv()? {
        Message::Committed { id, bytes_new, .. } => (id, bytes_new),
        other => anyhow::bail!("unexpected answer to commit: {}", other.name()),
    };
    conn.close();
    if id != local_id {
        anyhow::bail!("the controller committed snapshot {id} but this agent computed {local_id}");
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
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProgressDisplay {
    fn start(p: Arc<Progress>, bar: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
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
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
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
        Self { stop, handle: Some(handle) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
