//! `controller.toml`: the controller's settings, validated in one step.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::units;

/// Parsed configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    pub controller: ControllerSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub enroll: EnrollSection,
    /// `[[retention]]` tables; the first that matches a dataset applies.
    #[serde(default)]
    pub retention: Vec<crate::retention::RetentionRule>,
    #[serde(default)]
    pub gc: GcSection,
    #[serde(default)]
    pub scrub: ScrubSection,
    #[serde(default)]
    pub prune: PruneSection,
    #[serde(default)]
    pub restore: RestoreSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub drp: DrpSection,
    #[serde(default)]
    pub systems: SystemsSection,
    #[serde(default)]
    pub drills: DrillsSection,
}

/// `[systems]`: where the protected systems are defined (see [`crate::systems`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemsSection {
    /// Directory of the `*.toml` system files; relative paths are below the
    /// data directory. Default: `<data dir>/systems`.
    pub dir: Option<String>,
}

/// `[drills]`: scheduled failover drills inside `serve` (see [`crate::drill`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillsSection {
    /// Whether `serve` runs the drills that are due (`drill_every` of each system).
    pub scheduled: bool,
    /// How often `serve` looks for due drills.
    pub check_interval: String,
}

impl Default for DrillsSection {
    fn default() -> Self {
        Self { scheduled: true, check_interval: "1m".into() }
    }
}

/// `[drp]`: inputs of the disaster recovery plan document. Relative paths
/// are relative to the data directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrpSection {
    /// `organisation.toml` (default: DATA_DIR/organisation.toml).
    pub organisation: Option<std::path::PathBuf>,
    /// Template directory with `id/` and `en/` (default: the installed
    /// /usr/share/pulih/drp-templates when present, else the built-in copy).
    pub templates: Option<std::path::PathBuf>,
    /// JSON file with the protected systems and drills (SystemsInput).
    pub systems: Option<std::path::PathBuf>,
}

/// `[gc]`: garbage collection, also scheduled inside `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcSection {
    /// Duration (e.g. "24h") a blob is kept after an upload last relied on
    /// it, so an interrupted upload can resume from its checkpoints.
    pub grace: String,
    /// Whether `serve` collects garbage on its own.
    pub enabled: bool,
    /// Duration between scheduled collections (run after a scheduled prune
    /// that is due at the same time).
    pub interval: String,
}

impl Default for GcSection {
    fn default() -> Self {
        Self { grace: "24h".into(), enabled: true, interval: "1d".into() }
    }
}

/// `[prune]`: the `[[retention]]` policies applied by `serve` on its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneSection {
    /// Whether `serve` prunes on its own.
    pub enabled: bool,
    /// Duration between scheduled prunes.
    pub interval: String,
}

impl Default for PruneSection {
    fn default() -> Self {
        Self { enabled: true, interval: "1d".into() }
    }
}

/// `[restore]`: where restores requested over the API may write.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreSection {
    /// Directory under which API restores are confined (default
    /// `<data dir>/restores`). The local CLI is not confined.
    pub root: Option<std::path::PathBuf>,
}

/// `[scrub]`: scheduled re-reading of every stored blob inside `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrubSection {
    /// Whether `serve` scrubs on its own.
    pub enabled: bool,
    /// Duration between the end of one scrub and the start of the next.
    pub interval: String,
    /// Bytes per second read at most (e.g. "50MiB").
    pub rate: String,
}

impl Default for ScrubSection {
    fn default() -> Self {
        Self { enabled: true, interval: "7d".into(), rate: "50MiB".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// Name of this controller, shown to agents and in reports.
    pub name: String,
    /// Address the agent listener binds, IP:PORT.
    pub listen: String,
    /// Local time zone as a UTC offset ("+07:00", WIB): calendar periods
    /// of retention (days, weeks, ...) follow it.
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
}

fn default_utc_offset() -> String {
    "+07:00".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most agent connections at once.
    pub max_connections: usize,
    /// Seconds a TLS handshake may take.
    pub handshake_timeout_secs: u64,
    /// Seconds an agent connection may stay silent.
    pub idle_timeout_secs: u64,
    /// MiB an upload may write before the store is synced and what it sent
    /// is recorded, so an interrupted upload resumes from there.
    pub checkpoint_mib: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self { max_connections: 64, handshake_timeout_secs: 10, idle_timeout_secs: 300, checkpoint_mib: 64 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollSection {
    /// Hours an enrollment token stays valid.
    pub token_ttl_hours: u64,
}

impl Default for EnrollSection {
    fn default() -> Self {
        Self { token_ttl_hours: 24 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Address of the HTTPS API (and `/metrics`), IP:PORT. Loopback by
    /// default: open it to the coordinators' network deliberately.
    pub listen: String,
    /// Serve Prometheus metrics at `/metrics` without a token.
    pub metrics: bool,
    /// Failed authentications a client address may make per minute before
    /// it gets 429 for the rest of that minute.
    pub auth_failures_per_minute: u32,
}

/// Default address of the API. Not 7443: the agent listener's default
/// binds 0.0.0.0:7443, which also holds 127.0.0.1:7443.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7444";

impl Default for ApiSection {
    fn default() -> Self {
        Self { listen: DEFAULT_API_LISTEN.into(), metrics: true, auth_failures_per_minute: 10 }
    }
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";

impl ControllerConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate().with_context(|| format!("invalid configuration in {}", path.display()))?;
        Ok(cfg)
    }

    /// The UTC offset of calendar periods (validated).
    pub fn utc_offset(&self) -> time::UtcOffset {
        units::parse_offset(&self.controller.utc_offset).unwrap_or(time::UtcOffset::UTC)
    }

    /// GC grace period in seconds (validated).
    pub fn gc_grace_secs(&self) -> i64 {
        units::parse_duration(&self.gc.grace).unwrap_or(crate::gc::DEFAULT_GRACE_SECS)
    }

    /// `(interval seconds, bytes per second)` of the scheduled scrub (validated).
    pub fn scrub_schedule(&self) -> (i64, u64) {
        (
            units::parse_duration(&self.scrub.interval).unwrap_or(7 * 86_400),
            units::parse_size(&self.scrub.rate).unwrap_or(50 << 20),
        )
    }

    /// `(prune, gc)` intervals in seconds of the maintenance scheduled
    /// inside `serve`; `None` when disabled (validated).
    pub fn maintenance_schedule(&self) -> (Option<i64>, Option<i64>) {
        let every = |on: bool, s: &str| on.then(|| units::parse_duration(s).unwrap_or(86_400).max(1));
        (every(self.prune.enabled, &self.prune.interval), every(self.gc.enabled, &self.gc.interval))
    }

    /// The directory API restores are confined to.
    pub fn restore_root(&self, data_dir: &Path) -> std::path::PathBuf {
        self.restore.root.clone().unwrap_or_else(|| data_dir.join("restores"))
    }

    /// The systems directory: `[systems] dir`, relative to `data_dir`.
    pub fn systems_dir(&self, data_dir: &Path) -> std::path::PathBuf {
        match &self.systems.dir {
            Some(d) => data_dir.join(d),
            None => data_dir.join("systems"),
        }
    }

    /// Seconds between looks for due drills (validated).
    pub fn drill_check_interval(&self) -> i64 {
        units::parse_duration(&self.drills.check_interval).unwrap_or(60).max(1)
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.controller.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("controller.listen = {:?} is not IP:PORT", self.controller.listen));
        }
        if self.controller.name.trim().is_empty() {
            problems.push("controller.name is empty".to_string());
        }
        if self.limits.max_connections == 0 {
            problems.push("limits.max_connections must be at least 1".into());
        }
        if self.limits.handshake_timeout_secs == 0 || self.limits.idle_timeout_secs == 0 {
            problems.push("limits.*_timeout_secs must be at least 1".into());
        }
        if self.limits.checkpoint_mib == 0 {
            problems.push("limits.checkpoint_mib must be at least 1".into());
        }
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("api.listen = {:?} is not IP:PORT", self.api.listen));
        } else if self.api.listen == self.controller.listen && !self.api.listen.ends_with(":0") {
            problems.push(format!(
                "api.listen and controller.listen are both {}; give the API its own port",
                self.api.listen
            ));
        }
        if self.api.auth_failures_per_minute == 0 {
            problems.push("api.auth_failures_per_minute must be at least 1".into());
        }
        if self.enroll.token_ttl_hours == 0 {
            problems.push("enroll.token_ttl_hours must be at least 1".into());
        }
        if let Err(e) = units::parse_offset(&self.controller.utc_offset) {
            problems.push(format!("controller.utc_offset: {e}"));
        }
        for (i, r) in self.retention.iter().enumerate() {
            if r.agent.is_empty() || r.dataset.is_empty() {
                problems.push(format!("retention #{}: agent and dataset must be names or \"*\"", i + 1));
            }
            if let Err(e) = r.policy() {
                problems.push(format!("retention #{} keep_within: {e}", i + 1));
            }
        }
        if let Err(e) = units::parse_duration(&self.gc.grace) {
            problems.push(format!("gc.grace: {e}"));
        }
        match units::parse_duration(&self.scrub.interval) {
            Ok(0) => problems.push("scrub.interval must be longer than 0s".into()),
            Ok(_) => {}
            Err(e) => problems.push(format!("scrub.interval: {e}")),
        }
        for (key, v) in [("prune.interval", &self.prune.interval), ("gc.interval", &self.gc.interval)] {
            match units::parse_duration(v) {
                Ok(0) => problems.push(format!("{key} must be longer than 0s")),
                Ok(_) => {}
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }
        if let Some(root) = &self.restore.root {
            if !root.is_absolute() {
                problems.push(format!("restore.root = {:?} must be an absolute path", root.display().to_string()));
            }
        }
        if let Err(e) = units::parse_size(&self.scrub.rate) {
            problems.push(format!("scrub.rate: {e}"));
        }
        if self.systems.dir.as_deref().is_some_and(|d| d.trim().is_empty()) {
            problems.push("systems.dir is empty (leave it out for <data dir>/systems)".into());
        }
        match units::parse_duration(&self.drills.check_interval) {
            Ok(0) => problems.push("drills.check_interval must be longer than 0s".into()),
            Ok(_) => {}
            Err(e) => problems.push(format!("drills.check_interval: {e}")),
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(())
    }
}

/// The commented file `init` writes.
pub fn template(name: &str, listen: &str, api_listen: &str) -> String {
    format!(
        r#"# Konfigurasi pengendali Pulih / Pulih controller configuration.
# Kunci yang tidak dikenal ditolak / unknown keys are rejected.

[controller]
# Nama pengendali ini, tampil di laporan / name of this controller, shown in reports.
name = "{name}"
# Alamat dan port untuk agen (IP:PORT) / address and port agents connect to.
listen = "{listen}"
# Zona waktu setempat (selisih UTC) untuk periode kalender retensi; +07:00 = WIB
# Local time zone (UTC offset) for calendar periods of retention; +07:00 = WIB.
utc_offset = "+07:00"

[limits]
# Jumlah koneksi agen serentak maksimum / most agent connections at once.
max_connections = 64
# Batas waktu jabat tangan TLS, detik / TLS handshake timeout, seconds.
handshake_timeout_secs = 10
# Batas diam koneksi agen, detik / seconds an agent connection may stay silent.
idle_timeout_secs = 300
# MiB diterima sebelum disinkronkan ke disk dan dicatat (titik lanjut unggahan)
# MiB received before the store is synced and recorded (an upload resumes from there).
checkpoint_mib = 64

[enroll]
# Masa berlaku token pendaftaran, jam / hours an enrollment token stays valid.
token_ttl_hours = 24

[api]
# Alamat API HTTPS untuk pulihctl dan /metrics (IP:PORT), memakai sertifikat pengendali.
# Address of the HTTPS API for pulihctl and /metrics (IP:PORT), with the controller's certificate.
listen = "{api_listen}"
# Sajikan metrik Prometheus di /metrics tanpa token (hanya angka, tanpa data cadangan).
# Serve Prometheus metrics at /metrics without a token (numbers only, no backup data).
metrics = true
# Kegagalan autentikasi per menit per alamat klien sebelum ditolak dengan 429.
# Failed authentications per minute per client address before it gets 429.
auth_failures_per_minute = 10

[gc]
# Lama blob dipertahankan setelah terakhir dipakai unggahan (agar unggahan terputus bisa dilanjutkan)
# How long a blob is kept after an upload last relied on it (so an interrupted upload can resume).
grace = "24h"
# Pengumpulan sampah terjadwal oleh `serve` (true/false); berjalan sesudah prune terjadwal
# Scheduled garbage collection by `serve` (true/false); runs after a scheduled prune.
enabled = true
# Jeda antar pengumpulan sampah terjadwal (s, m, h, d, w)
# Time between scheduled garbage collections (s, m, h, d, w).
interval = "1d"

[prune]
# Penerapan terjadwal kebijakan retensi (tabel retention di bawah) oleh `serve` (true/false)
# Scheduled application of the retention policies (tables below) by `serve` (true/false).
enabled = true
# Jeda antar prune terjadwal (s, m, h, d, w)
# Time between scheduled prunes (s, m, h, d, w).
interval = "1d"

[restore]
# Pemulihan lewat API (pulihctl restore) hanya boleh menulis di bawah direktori ini;
# tujuannya jalur relatif. Bawaan: <direktori data>/restores. CLI lokal tidak dibatasi.
# Restores over the API (pulihctl restore) may write only below this directory; their
# target is a relative path. Default: <data dir>/restores. The local CLI is not confined.
# root = "/srv/pulih-restores"

[scrub]
# Pemeriksaan ulang terjadwal seluruh blob oleh `serve` (true/false)
# Scheduled re-read and rehash of every blob by `serve` (true/false).
enabled = true
# Jeda antara akhir satu scrub dan awal scrub berikutnya (s, m, h, d, w)
# Time from the end of one scrub to the start of the next (s, m, h, d, w).
interval = "7d"
# Laju baca maksimum per detik (B, KiB, MiB, GiB)
# Most bytes read per second (B, KiB, MiB, GiB).
rate = "50MiB"

[systems]
# Direktori berkas sistem yang dilindungi (satu berkas *.toml per sistem); relatif terhadap direktori data.
# Directory of the protected systems' files (one *.toml per system); relative to the data directory.
# Diperiksa dengan / checked with: pulih-controller systems check
dir = "systems"

[drills]
# Jalankan uji pemulihan yang jatuh tempo (drill_every tiap sistem) di dalam `serve`
# Run the drills that are due (drill_every of each system) inside `serve`.
scheduled = true
# Seberapa sering `serve` mencari uji pemulihan yang jatuh tempo
# How often `serve` looks for due drills.
check_interval = "1m"

# Retensi: tabel [[retention]] pertama yang cocok dengan agen/dataset berlaku; tanpa yang cocok, semua disimpan.
# Retention: the first [[retention]] table matching the agent/dataset applies; with none, all are kept.
# Dipakai oleh `pulih-controller prune` dan [prune] terjadwal; snapshot terbaru suatu dataset tidak pernah dihapus oleh kebijakan.
# Used by `pulih-controller prune` and the scheduled [prune]; the newest snapshot of a dataset is never removed by a policy.
[[retention]]
# Nama agen, atau "*" untuk semua agen
# Agent name, or "*" for every agent.
agent = "*"
# Nama dataset, atau "*" untuk semua dataset
# Dataset name, or "*" for every dataset.
dataset = "*"
# Simpan N snapshot terbaru
# Keep the N newest snapshots.
keep_last = 3
# Simpan snapshot terbaru dari tiap N jam terakhir yang memiliki snapshot
# Keep the newest snapshot of each of the last N hours that have one.
keep_hourly = 24
# Simpan snapshot terbaru dari tiap N hari terakhir (hari setempat, utc_offset)
# Keep the newest snapshot of each of the last N days (local days, utc_offset).
keep_daily = 30
# Simpan snapshot terbaru dari tiap N minggu ISO terakhir
# Keep the newest snapshot of each of the last N ISO weeks.
keep_weekly = 12
# Simpan snapshot terbaru dari tiap N bulan terakhir
# Keep the newest snapshot of each of the last N months.
keep_monthly = 24
# Simpan snapshot terbaru dari tiap N tahun terakhir
# Keep the newest snapshot of each of the last N years.
keep_yearly = 10
# Simpan semua snapshot dalam rentang ini dari snapshot terbaru dataset
# Keep every snapshot within this duration of the dataset's newest snapshot.
keep_within = "7d"

[drp]
# Dokumen rencana pemulihan bencana (Pasal 18). Tanpa kunci di bawah ini, data organisasi dibaca dari
# organisation.toml di direktori data dan templat terpasang (atau bawaan) dipakai.
# The disaster recovery plan document. Without the keys below, organisation data is read from
# organisation.toml in the data directory and the installed (or built-in) templates are used.
# organisation = "/etc/pulih/organisation.toml"
# templates = "/usr/local/share/pulih/drp-templates"
# Sistem dan uji pemulihan diambil dari [systems] dir dan katalog; `systems` menunjuk berkas JSON
# tetap sebagai gantinya (hanya untuk contoh dan pengujian).
# Systems and drills come from [systems] dir and the catalog; `systems` names a fixed JSON file
# instead (for examples and tests only).
# systems = "systems.json"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_unknown_keys_are_named() {
        let cfg: ControllerConfig = toml::from_str(&template("drc", DEFAULT_LISTEN, DEFAULT_API_LISTEN)).unwrap();
        cfg.validate().unwrap();
        let bad = template("drc", DEFAULT_LISTEN, DEFAULT_API_LISTEN).replace("max_connections", "max_conections");
        let err = toml::from_str::<ControllerConfig>(&bad).unwrap_err().to_string();
        assert!(err.contains("max_conections"), "{err}");
        let bad = template("drc", "nowhere", DEFAULT_API_LISTEN);
        let cfg: ControllerConfig = toml::from_str(&bad).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("controller.listen"));
    }
}
