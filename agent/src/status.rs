//! What the daemon tells `pulih-agent status`: a JSON file in the state
//! directory ([`FILE_NAME`]) that the daemon rewrites atomically whenever
//! something changes, and its rendering for a sysadmin in Bahasa Indonesia
//! or English.
//!
//! A file instead of a socket: `status` then works while the daemon is
//! stopped or hung (it says so, from the pid and the file's age), and needs
//! no permission beyond reading the state directory.
//!
//! Language ([`Lang::detect`]): `--lang id|en` when given; otherwise the
//! first set of `LC_ALL`, `LC_MESSAGES`, `LANG` picks English when it
//! starts with `en`, and Bahasa Indonesia in every other case (also for
//! `C`/`POSIX` and unset), because the regulation the operators work under
//! puts Bahasa Indonesia first.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the status file in the state directory.
pub const FILE_NAME: &str = "status.json";

/// The whole status, as written by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    /// Process id of the daemon that wrote the file.
    pub pid: u32,
    /// Unix seconds at which the daemon started.
    pub started_at: i64,
    /// Unix seconds of this write.
    pub updated_at: i64,
    pub datasets: Vec<DatasetStatus>,
    /// The standby role, when `[standby] enabled = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyStatus>,
}

/// The standby role as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StandbyStatus {
    pub root: String,
    /// The job running now ("job 7: restore ... to <root>/www").
    pub current_job: Option<String>,
    /// The last job and its outcome.
    pub last_job: Option<String>,
    /// Datasets protected since a failover (standby-datasets.toml).
    #[serde(default)]
    pub protected: Vec<String>,
}

/// One dataset's state. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DatasetStatus {
    pub name: String,
    /// How it is triggered: "daily 01:30", "continuous", "continuous + 15m" or "manual".
    pub mode: String,
    pub rpo_target_secs: Option<u64>,
    /// Id of the newest committed snapshot.
    pub last_snapshot: Option<String>,
    /// When the newest snapshot was committed.
    pub last_success_at: Option<i64>,
    /// Start time of the newest committed snapshot: how old the DRC's data is.
    pub data_time: Option<i64>,
    /// When the last attempt (of any outcome) started.
    pub last_attempt_at: Option<i64>,
    /// Why the last attempt failed or was skipped; None after a success.
    pub last_error: Option<String>,
    /// "ok", "problems", "failed" or "skipped" (see [`crate::metrics::outcome`]).
    pub last_outcome: Option<String>,
    pub next_run: Option<i64>,
    /// Changes seen and not yet in a committed snapshot.
    pub pending_changes: u64,
    /// A snapshot of this dataset is in progress.
    pub running: bool,
}

/// Failure to write or read the status file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} is not a status file of this agent version: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

impl StatusFile {
    /// Replaces the file at `path` atomically (temp file, fsync, rename):
    /// a reader never sees half a file, a crash leaves the old one.
    pub fn write_atomic(&self, path: &Path) -> Result<(), StatusError> {
        write_json_atomic(path, &serde_json::to_vec_pretty(self).expect("status serializes"))
    }

    pub fn load(path: &Path) -> Result<StatusFile, StatusError> {
        let bytes =
            std::fs::read(path).map_err(|source| StatusError::Io { op: "reading", path: path.into(), source })?;
        serde_json::from_slice(&bytes).map_err(|source| StatusError::Format { path: path.into(), source })
    }
}

/// The newest snapshot committed for one dataset, written next to its
/// change cache by whatever committed it: the service, or `pulih-agent
/// snapshot` run by hand while the service was stopped or busy with other
/// datasets. The service reads it when it starts and on every status
/// refresh, so a snapshot it did not take still counts for the dataset's
/// status and lag metrics (otherwise a first snapshot taken by hand before
/// `systemctl enable --now` left the status at "no snapshot" and the lag
/// alert firing until the first scheduled run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCommit {
    /// Snapshot id (hex).
    pub snapshot: String,
    /// Unix seconds of the commit.
    pub committed_at: i64,
    /// Unix seconds at which the snapshot started: how old its data is.
    pub data_time: i64,
}

impl LastCommit {
    /// `<cache_dir>/<dataset>.last.json`.
    pub fn path(cache_dir: &Path, dataset: &str) -> PathBuf {
        cache_dir.join(format!("{dataset}.last.json"))
    }

    pub fn write_atomic(&self, path: &Path) -> Result<(), StatusError> {
        write_json_atomic(path, &serde_json::to_vec_pretty(self).expect("commit record serializes"))
    }

    /// `Ok(None)` when no snapshot was recorded yet.
    pub fn load(path: &Path) -> Result<Option<LastCommit>, StatusError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StatusError::Io { op: "reading", path: path.into(), source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| StatusError::Format { path: path.into(), source })
    }
}

impl DatasetStatus {
    /// Takes a commit recorded by someone else unless this status already
    /// knows it or a snapshot of newer data. Returns whether it did.
    /// Snapshots of one dataset never overlap (a lock), and every commit
    /// rewrites the record, so a different snapshot whose data is not
    /// older is the newer one (times are whole seconds: two snapshots can
    /// start in the same one).
    pub fn merge_commit(&mut self, c: &LastCommit) -> bool {
        if self.last_snapshot.as_deref() == Some(c.snapshot.as_str()) || self.data_time.is_some_and(|t| t > c.data_time)
        {
            return false;
        }
        self.last_snapshot = Some(c.snapshot.clone());
        self.last_success_at = Some(c.committed_at);
        self.data_time = Some(c.data_time);
        true
    }
}

/// Replaces the file at `path` atomically (temp file, fsync, rename): a
/// reader never sees half a file, a crash leaves the old one.
fn write_json_atomic(path: &Path, json: &[u8]) -> Result<(), StatusError> {
    fn io(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> StatusError {
        let path = p.to_owned();
        move |source| StatusError::Io { op, path, source }
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(json).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("renaming to", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename itself must survive a crash too.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Whether a process with this pid exists (EPERM: it exists, as another user).
pub fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH))
}

/// Language of the rendered status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Bahasa Indonesia (the default).
    Id,
    En,
}

impl Lang {
    /// `flag` ("id" or "en", from `--lang`) when given, else the locale;
    /// see the module documentation.
    pub fn detect(flag: Option<&str>) -> Lang {
        let var = |k| std::env::var(k).ok();
        Self::from_flag_or_locale(flag, var("LC_ALL"), var("LC_MESSAGES"), var("LANG"))
    }

    /// [`Lang::detect`] with the environment passed in.
    pub fn from_flag_or_locale(
        flag: Option<&str>,
        lc_all: Option<String>,
        lc_messages: Option<String>,
        lang: Option<String>,
    ) -> Lang {
        if let Some(f) = flag.map(str::to_ascii_lowercase) {
            if f.starts_with("en") {
                return Lang::En;
            }
            if f.starts_with("id") {
                return Lang::Id;
            }
        }
        // POSIX precedence: the first one set and non-empty decides.
        match [lc_all, lc_messages, lang].into_iter().flatten().find(|v| !v.is_empty()) {
            Some(v) if v.to_ascii_lowercase().starts_with("en") => Lang::En,
            _ => Lang::Id,
        }
    }
}

fn clock(t: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(t).ok().and_then(|d| d.format(f).ok()).unwrap_or_else(|| t.to_string())
}

/// "2 jam 5 menit" / "2 hours 5 minutes": the two largest units.
fn span(secs: u64, lang: Lang) -> String {
    let units: [(u64, &str, &str, &str); 4] = [
        (86400, "hari", "day", "days"),
        (3600, "jam", "hour", "hours"),
        (60, "menit", "minute", "minutes"),
        (1, "detik", "second", "seconds"),
    ];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, id, one, many) in units {
        if rest >= size && parts.len() < 2 {
            let n = rest / size;
            rest %= size;
            parts.push(match lang {
                Lang::Id => format!("{n} {id}"),
                Lang::En => format!("{n} {}", if n == 1 { one } else { many }),
            });
        } else if !parts.is_empty() {
            // Keep the two units adjacent: "1 day 5 seconds" says little.
            break;
        }
    }
    if parts.is_empty() {
        return match lang {
            Lang::Id => "0 detik".into(),
            Lang::En => "0 seconds".into(),
        };
    }
    parts.join(" ")
}

/// "(5 menit yang lalu)" / "(in 5 minutes)".
fn relative(t: i64, now: i64, lang: Lang) -> String {
    let d = now.abs_diff(t);
    match (t <= now, lang) {
        (true, Lang::Id) => format!("{} yang lalu", span(d, lang)),
        (true, Lang::En) => format!("{} ago", span(d, lang)),
        (false, Lang::Id) => format!("dalam {}", span(d, lang)),
        (false, Lang::En) => format!("in {}", span(d, lang)),
    }
}

/// Human-readable status of every dataset. `now` is Unix seconds;
/// `daemon_alive` says whether the pid in the file still runs.
pub fn render(status: &StatusFile, now: i64, lang: Lang, daemon_alive: bool) -> String {
    let id = lang == Lang::Id;
    let t = |a: &'static str, b: &'static str| if id { a } else { b };
    let mut out = String::new();
    let updated = format!("{} ({})", clock(status.updated_at), relative(status.updated_at, now, lang));
    if daemon_alive {
        let _ = writeln!(
            out,
            "{} (PID {}), {} {updated}",
            t("Agen Pulih: berjalan", "Pulih agent: running"),
            status.pid,
            t("status diperbarui", "status updated")
        );
    } else {
        let _ = writeln!(
            out,
            "{} {} {} {updated}",
            t(
                "Agen Pulih: TIDAK BERJALAN. Status terakhir ditulis oleh PID",
                "Pulih agent: NOT RUNNING. Last status written by PID"
            ),
            status.pid,
            t("pada", "at")
        );
        let _ = writeln!(
            out,
            "{}",
            t(
                "Jalankan: systemctl status pulih-agent; journalctl -u pulih-agent",
                "Run: systemctl status pulih-agent; journalctl -u pulih-agent"
            )
        );
    }
    if let Some(sb) = &status.standby {
        let _ = writeln!(
            out,
            "{}: {} {}",
            t("Peran siaga (standby)", "Standby role"),
            t("aktif, akar", "enabled, root"),
            sb.root
        );
        let idle = t("tidak ada (menunggu pekerjaan)", "none (waiting for work)");
        let _ = writeln!(
            out,
            "  {:<24}: {}",
            t("Pekerjaan saat ini", "Current job"),
            sb.current_job.as_deref().unwrap_or(idle)
        );
        if let Some(l) = &sb.last_job {
            let _ = writeln!(out, "  {:<24}: {l}", t("Pekerjaan terakhir", "Last job"));
        }
        if !sb.protected.is_empty() {
            let _ = writeln!(
                out,
                "  {:<24}: {}",
                t("Dilindungi sejak failover", "Protected since failover"),
                sb.protected.join(", ")
            );
        }
    }
    if status.datasets.is_empty() {
        let _ = writeln!(out, "{}", t("Tidak ada dataset yang dikonfigurasi.", "No dataset is configured."));
    }
    let label_width = 24;
    for d in &status.datasets {
        let _ = writeln!(out, "\nDataset {} ({})", d.name, d.mode);
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<label_width$}: {value}");
        };
        if d.running {
            line(t("Sedang berjalan", "Running"), t("snapshot sedang diambil", "a snapshot is in progress").into());
        }
        let snapshot = match (&d.last_snapshot, d.last_success_at) {
            (Some(s), Some(at)) => format!("{s} {} {} ({})", t("pada", "at"), clock(at), relative(at, now, lang)),
            (Some(s), None) => s.clone(),
            (None, _) => t("belum ada", "none yet").into(),
        };
        line(t("Snapshot terakhir", "Last snapshot"), snapshot);
        let lag = match d.data_time {
            Some(dt) => {
                let lag = now.saturating_sub(dt).max(0) as u64;
                let mut s = span(lag, lang);
                if let Some(target) = d.rpo_target_secs {
                    let verdict = if lag <= target { "OK" } else { t("MELEWATI TARGET", "OVER TARGET") };
                    let _ = write!(s, "; {} {}: {verdict}", t("target RPO", "RPO target"), span(target, lang));
                }
                s
            }
            None => match d.rpo_target_secs {
                Some(target) => format!(
                    "{}; {} {}: {}",
                    t("belum ada data di DRC", "no data at the DRC yet"),
                    t("target RPO", "RPO target"),
                    span(target, lang),
                    t("MELEWATI TARGET", "OVER TARGET")
                ),
                None => t("belum ada data di DRC", "no data at the DRC yet").into(),
            },
        };
        line(t("Ketertinggalan (lag)", "Lag"), lag);
        if let Some(at) = d.last_attempt_at {
            let outcome = match d.last_outcome.as_deref() {
                Some("ok") => t("berhasil", "succeeded"),
                Some("problems") => t("berhasil dengan masalah", "succeeded with problems"),
                Some("failed") => t("gagal", "failed"),
                Some("skipped") => t("dilewati", "skipped"),
                Some(_) | None => "-",
            };
            line(
                t("Percobaan terakhir", "Last attempt"),
                format!("{} ({}): {outcome}", clock(at), relative(at, now, lang)),
            );
        }
        let next = match d.next_run {
            Some(_) if !daemon_alive => t("tidak ada (agen tidak berjalan)", "none (the agent is not running)").into(),
            Some(n) => format!("{} ({})", clock(n), relative(n, now, lang)),
            None if d.mode == "manual" => {
                t("hanya manual (pulih-agent snapshot)", "manual only (pulih-agent snapshot)").into()
            }
            None if d.mode.starts_with("continuous") => t("saat ada perubahan", "when something changes").into(),
            None => "-".into(),
        };
        line(t("Jadwal berikutnya", "Next run"), next);
        if d.pending_changes > 0 {
            line(t("Perubahan tertunda", "Pending changes"), d.pending_changes.to_string());
        }
        if let Some(e) = &d.last_error {
            line(t("Galat terakhir", "Last error"), e.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_740_823_200; // 2025-03-01 10:00:00 UTC

    fn sample() -> StatusFile {
        StatusFile {
            standby: None,
            pid: 4242,
            started_at: NOW - 86400,
            updated_at: NOW - 5,
            datasets: vec![
                DatasetStatus {
                    name: "simpeg".into(),
                    mode: "continuous + 15m".into(),
                    rpo_target_secs: Some(900),
                    last_snapshot: Some("3f2a9c".into()),
                    last_success_at: Some(NOW - 240),
                    data_time: Some(NOW - 300),
                    last_attempt_at: Some(NOW - 300),
                    last_error: None,
                    last_outcome: Some("ok".into()),
                    next_run: Some(NOW + 600),
                    pending_changes: 3,
                    running: false,
                },
                DatasetStatus {
                    name: "www".into(),
                    mode: "daily 01:30".into(),
                    rpo_target_secs: Some(3600),
                    last_snapshot: Some("77aa01".into()),
                    last_success_at: Some(NOW - 2 * 86400),
                    data_time: Some(NOW - 2 * 86400 - 60),
                    last_attempt_at: Some(NOW - 3600),
                    last_error: Some("pre_hook exit 3: pg_backup_start failed".into()),
                    last_outcome: Some("skipped".into()),
                    next_run: Some(NOW + 3 * 3600 + 1800),
                    pending_changes: 0,
                    running: true,
                },
                DatasetStatus {
                    name: "arsip".into(),
                    mode: "manual".into(),
                    rpo_target_secs: None,
                    last_snapshot: None,
                    last_success_at: None,
                    data_time: None,
                    last_attempt_at: None,
                    last_error: None,
                    last_outcome: None,
                    next_run: None,
                    pending_changes: 0,
                    running: false,
                },
            ],
        }
    }

    fn block<'a>(text: &'a str, dataset: &str) -> &'a str {
        let start = text.find(&format!("Dataset {dataset} ")).unwrap_or_else(|| panic!("{dataset} in\n{text}"));
        let rest = &text[start..];
        &rest[..rest[1..].find("\nDataset ").map_or(rest.len(), |i| i + 1)]
    }

    #[test]
    fn renders_in_bahasa_indonesia() {
        let text = render(&sample(), NOW, Lang::Id, true);
        assert!(
            text.starts_with(
                "Agen Pulih: berjalan (PID 4242), status diperbarui 2025-03-01 09:59:55 UTC (5 detik yang lalu)"
            ),
            "{text}"
        );
        let simpeg = block(&text, "simpeg");
        assert!(simpeg.contains("Dataset simpeg (continuous + 15m)"), "{simpeg}");
        assert!(simpeg.contains("3f2a9c pada 2025-03-01 09:56:00 UTC (4 menit yang lalu)"), "{simpeg}");
        assert!(simpeg.contains("Ketertinggalan (lag)    : 5 menit; target RPO 15 menit: OK"), "{simpeg}");
        assert!(simpeg.contains("Jadwal berikutnya       : 2025-03-01 10:10:00 UTC (dalam 10 menit)"), "{simpeg}");
        assert!(simpeg.contains("Perubahan tertunda      : 3"), "{simpeg}");
        assert!(!simpeg.contains("Galat"), "{simpeg}");
        let www = block(&text, "www");
        assert!(www.contains("2 hari; target RPO 1 jam: MELEWATI TARGET"), "{www}");
        assert!(www.contains("Galat terakhir          : pre_hook exit 3: pg_backup_start failed"), "{www}");
        assert!(www.contains("(1 jam yang lalu): dilewati"), "{www}");
        assert!(www.contains("snapshot sedang diambil"), "{www}");
        assert!(www.contains("dalam 3 jam 30 menit"), "{www}");
        let arsip = block(&text, "arsip");
        assert!(arsip.contains("Snapshot terakhir       : belum ada"), "{arsip}");
        assert!(arsip.contains("belum ada data di DRC"), "{arsip}");
        assert!(arsip.contains("hanya manual"), "{arsip}");
        for english in ["Last", "OVER", "ago", "none"] {
            assert!(!text.contains(english), "{english} in\n{text}");
        }
    }

    #[test]
    fn renders_in_english() {
        let text = render(&sample(), NOW, Lang::En, true);
        assert!(
            text.starts_with("Pulih agent: running (PID 4242), status updated 2025-03-01 09:59:55 UTC (5 seconds ago)"),
            "{text}"
        );
        let simpeg = block(&text, "simpeg");
        assert!(simpeg.contains("Lag                     : 5 minutes; RPO target 15 minutes: OK"), "{simpeg}");
        assert!(simpeg.contains("(in 10 minutes)"), "{simpeg}");
        let www = block(&text, "www");
        assert!(www.contains("2 days; RPO target 1 hour: OVER TARGET"), "{www}");
        assert!(www.contains("Last error              : pre_hook exit 3"), "{www}");
        assert!(www.contains("skipped"), "{www}");
        assert!(block(&text, "arsip").contains("manual only"), "{text}");
        for indonesian in ["belum", "MELEWATI", "yang lalu", "dalam"] {
            assert!(!text.contains(indonesian), "{indonesian} in\n{text}");
        }
    }

    #[test]
    fn a_dead_daemon_is_reported_and_has_no_next_run() {
        for (lang, dead, hint) in [
            (Lang::Id, "TIDAK BERJALAN", "tidak ada (agen tidak berjalan)"),
            (Lang::En, "NOT RUNNING", "none (the agent is not running)"),
        ] {
            let text = render(&sample(), NOW + 7200, lang, false);
            assert!(text.lines().next().unwrap().contains(dead), "{text}");
            assert!(text.contains("journalctl -u pulih-agent"), "{text}");
            assert!(block(&text, "simpeg").contains(hint), "{text}");
            // The lag keeps growing while nothing runs: 2 h 5 min > 15 min.
            assert!(block(&text, "simpeg").contains(if lang == Lang::Id { "MELEWATI TARGET" } else { "OVER TARGET" }));
        }
    }

    #[test]
    fn language_from_flag_then_locale_defaults_to_indonesian() {
        let s = |v: &str| Some(v.to_string());
        let l = Lang::from_flag_or_locale;
        assert_eq!(l(Some("en"), s("id_ID.UTF-8"), None, None), Lang::En);
        assert_eq!(l(Some("id"), s("en_US.UTF-8"), None, None), Lang::Id);
        assert_eq!(l(None, None, None, None), Lang::Id);
        assert_eq!(l(None, None, None, s("C.UTF-8")), Lang::Id);
        assert_eq!(l(None, None, None, s("POSIX")), Lang::Id);
        assert_eq!(l(None, None, None, s("en_GB.UTF-8")), Lang::En);
        assert_eq!(l(None, None, None, s("id_ID.UTF-8")), Lang::Id);
        // LC_ALL before LC_MESSAGES before LANG; empty ones do not count.
        assert_eq!(l(None, s("id_ID"), s("en_US"), s("en_US")), Lang::Id);
        assert_eq!(l(None, s(""), s("en_US"), s("id_ID")), Lang::En);
        assert_eq!(l(None, None, s("id_ID"), s("en_US")), Lang::Id);
    }

    #[test]
    fn write_atomic_then_load_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut s = sample();
        s.write_atomic(&path).unwrap();
        assert_eq!(StatusFile::load(&path).unwrap(), s);
        s.datasets.truncate(1);
        s.updated_at += 1;
        s.write_atomic(&path).unwrap();
        assert_eq!(StatusFile::load(&path).unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE_NAME], "no temporary file left behind");
        // Errors name the file.
        std::fs::write(&path, "{ half").unwrap();
        assert!(StatusFile::load(&path).unwrap_err().to_string().contains(FILE_NAME));
        let missing = dir.path().join("nope/status.json");
        assert!(s.write_atomic(&missing).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn pid_alive_sees_this_process_and_not_a_reaped_child() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn a_commit_recorded_elsewhere_is_taken_when_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = LastCommit::path(dir.path(), "db");
        assert_eq!(LastCommit::load(&path).unwrap(), None);
        let c = LastCommit { snapshot: "aa".into(), committed_at: 100, data_time: 90 };
        c.write_atomic(&path).unwrap();
        assert_eq!(LastCommit::load(&path).unwrap(), Some(c.clone()));
        let mut st = DatasetStatus::default();
        assert!(st.merge_commit(&c));
        assert_eq!((st.last_snapshot.as_deref(), st.last_success_at, st.data_time), (Some("aa"), Some(100), Some(90)));
        assert!(!st.merge_commit(&c), "already known");
        // A second snapshot started in the same second is still newer.
        let same_second = LastCommit { snapshot: "bb".into(), committed_at: 100, data_time: 90 };
        assert!(st.merge_commit(&same_second));
        // Older data never replaces newer.
        assert!(!st.merge_commit(&LastCommit { snapshot: "cc".into(), committed_at: 50, data_time: 40 }));
        assert_eq!(st.last_snapshot.as_deref(), Some("bb"));
        std::fs::write(&path, b"{").unwrap();
        assert!(LastCommit::load(&path).unwrap_err().to_string().contains("db.last.json"));
    }
}
