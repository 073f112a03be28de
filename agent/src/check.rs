//! `pulih-agent check`: validates a configuration and everything the agent
//! needs to work — its key and certificates, the dataset paths and hooks,
//! the controller (reachable, accepts this certificate, clocks agree) — and
//! explains each problem in words a sysadmin can act on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use pulih_core::now_ns;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::Settings;
use crate::conn::Conn;
use crate::enroll;
use crate::hooks::Hook;
use crate::status::Lang;

/// Largest clock difference tolerated: certificates and RPO figures depend
/// on both clocks.
const MAX_SKEW_SECS: i64 = 60;

struct Report {
    lang: Lang,
    problems: u32,
}

impl Report {
    fn line(&mut self, ok: bool, id: String, en: String) {
        let (tag, text) = match (ok, self.lang) {
            (true, Lang::Id) => ("OK   ", id),
            (true, Lang::En) => ("OK   ", en),
            (false, Lang::Id) => ("GAGAL", id),
            (false, Lang::En) => ("FAIL ", en),
        };
        if !ok {
            self.problems += 1;
        }
        crate::out_line(&format!("{tag} {text}"));
    }

    fn warn(&mut self, id: String, en: String) {
        let text = match self.lang {
            Lang::Id => format!("PERINGATAN {id}"),
            Lang::En => format!("WARNING {en}"),
        };
        crate::out_line(&text);
    }
}

/// Runs every check; returns whether all passed.
pub fn run(config: &Path, lang: Lang) -> bool {
    let mut r = Report { lang, problems: 0 };
    let settings = match Settings::load(config) {
        Ok(s) => {
            r.line(
                true,
                format!("konfigurasi {} valid ({} dataset)", config.display(), s.datasets.len()),
                format!("configuration {} is valid ({} datasets)", config.display(), s.datasets.len()),
            );
            s
        }
        Err(e) => {
            let why = pulih_core::report::chain(e.as_ref());
            r.line(false, format!("konfigurasi tidak valid: {why}"), format!("invalid configuration: {why}"));
            return false;
        }
    };
    files(&mut r, &settings);
    datasets(&mut r, &settings);
    standby(&mut r, &settings);
    controller(&mut r, &settings);
    match r.lang {
        Lang::Id if r.problems == 0 => crate::out_line("Semua pemeriksaan lulus."),
        Lang::Id => crate::out_line(&format!("{} masalah ditemukan.", r.problems)),
        Lang::En if r.problems == 0 => crate::out_line("All checks passed."),
        Lang::En => crate::out_line(&format!("{} problem(s) found.", r.problems)),
    }
    r.problems == 0
}

fn files(r: &mut Report, s: &Settings) {
    let key = s.key_path();
    match std::fs::metadata(&key) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => r.line(
            false,
            format!(
                "kunci privat {} dapat dibaca pengguna lain (mode {:o}); jalankan chmod 600",
                key.display(),
                m.permissions().mode() & 0o777
            ),
            format!(
                "private key {} is readable by others (mode {:o}); run chmod 600",
                key.display(),
                m.permissions().mode() & 0o777
            ),
        ),
        Ok(_) => r.line(true, format!("kunci privat {}", key.display()), format!("private key {}", key.display())),
        Err(e) => r.line(
            false,
            format!(
                "kunci privat {} tidak dapat dibaca ({e}); apakah agen sudah didaftarkan (pulih-agent enroll)?",
                key.display()
            ),
            format!("private key {} cannot be read ({e}); is this agent enrolled (pulih-agent enroll)?", key.display()),
        ),
    }
    for (p, what_id, what_en) in
        [(s.ca_path(), "sertifikat CA", "CA certificate"), (s.cert_path(), "sertifikat agen", "agent certificate")]
    {
        if let Err(e) = CertificateDer::from_pem_file(&p) {
            r.line(false, format!("{what_id} {}: {e}", p.display()), format!("{what_en} {}: {e}", p.display()));
        }
    }
    match enroll::certificate_expiry(s) {
        Ok(exp) => {
            let days = (exp - time::OffsetDateTime::now_utc().unix_timestamp()) / 86400;
            if days < 0 {
                r.line(
                    false,
                    format!("sertifikat agen kedaluwarsa {} hari lalu; daftarkan ulang agen ini", -days),
                    format!("the agent certificate expired {} days ago; enroll this agent again", -days),
                );
            } else {
                r.line(
                    true,
                    format!(
                        "sertifikat agen berlaku {days} hari lagi (diperbarui otomatis {} hari sebelum habis)",
                        s.daemon.renew_before.as_secs() / 86400
                    ),
                    format!(
                        "agent certificate valid for {days} more days (renewed automatically {} days before)",
                        s.daemon.renew_before.as_secs() / 86400
                    ),
                );
            }
        }
        Err(e) => {
            let why = format!("{e:#}");
            r.line(false, format!("sertifikat agen: {why}"), format!("agent certificate: {why}"));
        }
    }
}

fn datasets(r: &mut Report, s: &Settings) {
    for ds in &s.datasets {
        for p in &ds.paths {
            let readable =
                if p.is_dir() { std::fs::read_dir(p).map(|_| ()) } else { std::fs::File::open(p).map(|_| ()) };
            match readable {
                Ok(()) => r.line(
                    true,
                    format!("dataset {}: {} dapat dibaca", ds.name, p.display()),
                    format!("dataset {}: {} is readable", ds.name, p.display()),
                ),
                Err(e) => r.line(
                    false,
                    format!("dataset {}: {} tidak dapat dibaca: {e}", ds.name, p.display()),
                    format!("dataset {}: {} cannot be read: {e}", ds.name, p.display()),
                ),
            }
        }
        for (hook, phase) in [(&ds.pre_hook, "pre_hook"), (&ds.post_hook, "post_hook")] {
            if let Some(Hook::Argv(argv)) = hook {
                let prog = argv.first().map(String::as_str).unwrap_or("");
                if !program_exists(prog) {
                    r.line(
                        false,
                        format!("dataset {}: {phase} {prog:?} tidak ditemukan atau tidak dapat dijalankan", ds.name),
                        format!("dataset {}: {phase} {prog:?} not found or not executable", ds.name),
                    );
                }
            }
        }
        if ds.schedule.is_none() && !ds.continuous {
            r.warn(
                format!("dataset {} tidak memiliki `schedule` maupun `continuous = true`: layanan tidak akan mengambil snapshot-nya", ds.name),
                format!("dataset {} has neither `schedule` nor `continuous = true`: the service never snapshots it", ds.name),
            );
        }
    }
}

/// The standby role: its root and the programs of its actions.
fn standby(r: &mut Report, s: &Settings) {
    let Some(sb) = &s.standby else { return };
    let root = sb.root.display();
    match std::fs::symlink_metadata(&sb.root) {
        Ok(m) if m.file_type().is_symlink() => r.line(
            false,
            format!("[standby] root {root} adalah symlink; tunjuk direktori aslinya"),
            format!("[standby] root {root} is a symlink; name the real directory"),
        ),
        Ok(m) if !m.is_dir() => r.line(
            false,
            format!("[standby] root {root} bukan direktori"),
            format!("[standby] root {root} is not a directory"),
        ),
        Ok(m) if m.permissions().mode() & 0o002 != 0 => r.line(
            false,
            format!("[standby] root {root} dapat ditulis semua pengguna; jalankan: chmod o-w {root}"),
            format!("[standby] root {root} is writable by every user; run: chmod o-w {root}"),
        ),
        Ok(_) => r.line(
            true,
            format!("[standby] aktif: root {root}, {} aksi", sb.actions.len()),
            format!("[standby] enabled: root {root}, {} action(s)", sb.actions.len()),
        ),
        // Created at the first job, when its parent exists.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && sb.root.parent().is_some_and(Path::is_dir) => r.warn(
            format!("[standby] root {root} belum ada; dibuat pada tugas pertama"),
            format!("[standby] root {root} does not exist yet; it is created at the first job"),
        ),
        Err(e) => r.line(
            false,
            format!("[standby] root {root} tidak dapat diperiksa: {e}"),
            format!("[standby] root {root} cannot be checked: {e}"),
        ),
    }
    for (name, hook) in &sb.actions {
        if let Hook::Argv(argv) = hook {
            let prog = argv.first().map(String::as_str).unwrap_or("");
            if !program_exists(prog) {
                r.line(
                    false,
                    format!("[standby.actions] {name}: {prog:?} tidak ditemukan atau tidak dapat dijalankan"),
                    format!("[standby.actions] {name}: {prog:?} not found or not executable"),
                );
            }
        }
    }
    for d in &sb.protected {
        r.line(
            true,
            format!("dataset {d} dilindungi sejak failover (standby-datasets.toml di direktori state)"),
            format!("dataset {d} is protected since a failover (standby-datasets.toml in the state directory)"),
        );
    }
}

fn program_exists(prog: &str) -> bool {
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if prog.contains('/') {
        return executable(Path::new(prog));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| !prog.is_empty() && executable(&d.join(prog))))
}

fn controller(r: &mut Report, s: &Settings) {
    let tls = match enroll::client_config(s) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let why = format!("{e:#}");
            r.line(false, format!("konfigurasi TLS: {why}"), format!("TLS configuration: {why}"));
            return;
        }
    };
    let before = now_ns();
    let mut conn = match Conn::connect(&s.address, &s.server_name, tls) {
        Ok(c) => c,
        Err(e) => {
            r.line(
                false,
                format!("pengendali {} tidak dapat dihubungi: {e} (periksa alamat, firewall, dan apakah pulih-controller berjalan)", s.address),
                format!("controller {} cannot be reached: {e} (check the address, firewalls, and that pulih-controller runs)", s.address),
            );
            return;
        }
    };
    match conn.hello() {
        Ok((name, server_ns)) => {
            let after = now_ns();
            r.line(
                true,
                format!("pengendali {name} di {} menerima sertifikat agen ini", s.address),
                format!("controller {name} at {} accepts this agent's certificate", s.address),
            );
            let skew = (server_ns - (before / 2 + after / 2)) / 1_000_000_000;
            r.line(
                skew.abs() <= MAX_SKEW_SECS,
                format!("selisih jam dengan pengendali {skew} detik (batas {MAX_SKEW_SECS}; gunakan NTP/chrony)"),
                format!("clock differs from the controller's by {skew} s (limit {MAX_SKEW_SECS}; use NTP/chrony)"),
            );
            conn.close();
        }
        Err(e) => r.line(
            false,
            format!("pengendali menolak agen ini: {e}"),
            format!("the controller refuses this agent: {e}"),
        ),
    }
}
