//! `pulihctl`: the remote CLI of coordinators, auditors and admins, over the
//! controller's HTTPS API. It pins the controller's CA (`pki/ca.pem` of the
//! DRC) and sends a bearer token read from a file. Settings come from flags,
//! or from a small TOML file (`$PULIHCTL_CONFIG`, else
//! `~/.config/pulih/pulihctl.toml`) with the keys `controller`, `token_file`
//! and `ca`. Human tables by default; `--json` prints the API's JSON.
//!
//! Exit status: 0 success, 1 error, 2 when `verify` or `scrub --wait` found
//! damage, `audit verify` found the chain broken, `drill run` did not pass,
//! or a failover, failback or `drp verify` did not succeed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pulih_controller::api::drills::{DrillDetail, DrillStartRequest, DrillStarted, SystemInfo};
use pulih_controller::api::types::*;
use pulih_controller::catalog::{rfc3339_ns, FailoverRow};
use pulih_core::out;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Remote control of a Pulih controller over its HTTPS API.
#[derive(Parser)]
#[command(name = "pulihctl", version)]
struct Cli {
    /// API address of the controller, e.g. https://drc.example:7444.
    #[arg(long, global = true, env = "PULIHCTL_CONTROLLER")]
    controller: Option<String>,
    /// File holding the API token (made by `pulih-controller token create` or `pulihctl tokens create`).
    #[arg(long, global = true, env = "PULIHCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The controller's CA certificate (pki/ca.pem on the DRC), pinned for TLS.
    #[arg(long, global = true, env = "PULIHCTL_CA")]
    ca: Option<PathBuf>,
    /// Settings file (default $PULIHCTL_CONFIG, else ~/.config/pulih/pulihctl.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Agents with their datasets: last contact, certificate expiry, lag against the RPO target.
    Agents {
        #[command(subcommand)]
        cmd: Option<AgentsCmd>,
    },
    /// Create a one-time enrollment token for an agent (admin).
    Enroll {
        /// Name the agent will enroll under.
        agent: String,
        /// Hours the token stays valid (default: the controller's setting).
        #[arg(long)]
        ttl_hours: Option<u32>,
    },
    /// List snapshots, oldest first.
    Snapshots {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
    },
    /// One snapshot.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// Re-read and rehash what snapshots reference, on the controller (coordinator).
    Verify {
        /// Snapshot ids or unique prefixes.
        ids: Vec<String>,
        /// Every snapshot.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Restore a snapshot into a directory on the DRC host, below the
    /// controller's restore root (coordinator).
    Restore {
        /// Snapshot id or unique prefix.
        snapshot: String,
        /// Directory relative to the restore root ([restore] root of the controller,
        /// default <data dir>/restores); must not exist or be empty.
        #[arg(long)]
        target: String,
        /// Only this path of the snapshot (as on the source host).
        #[arg(long)]
        path: Option<String>,
        /// Delta restore over an older copy: write only files whose content differs.
        #[arg(long)]
        only_changed: bool,
        /// With --only-changed: remove what the snapshot does not have.
        #[arg(long, requires = "only_changed")]
        delete: bool,
    },
    /// Apply the controller's [[retention]] policies: every snapshot kept or
    /// removed and why, then forget the removed ones (coordinator).
    Prune {
        /// Only show the plan.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
        /// Collect garbage afterwards.
        #[arg(long, conflicts_with = "dry_run")]
        gc: bool,
    },
    /// Forget a snapshot; its data stays until `gc` (coordinator).
    Forget {
        /// Snapshot id or unique prefix.
        id: String,
    },
    /// Remove chunks and trees no snapshot reaches (coordinator).
    Gc,
    /// Start a scrub of every stored blob on the controller (coordinator), or
    /// show its progress with `scrub status`.
    Scrub {
        #[command(subcommand)]
        cmd: Option<ScrubCmd>,
        /// Wait until it ends; exit 2 when it found damage.
        #[arg(long)]
        wait: bool,
        /// Most bytes read per second (e.g. "50MiB"; default: the controller's [scrub] rate).
        #[arg(long)]
        rate: Option<String>,
    },
    /// Damaged blobs (and their repair state) and damaged snapshots.
    Damage,
    /// API tokens (admin).
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Fail a system over to an agent in standby role (coordinator); waits
    /// for the whole run and prints its record.
    Failover {
        system: String,
        /// Standby agent (default: the system's [restore] standby).
        #[arg(long)]
        to: Option<String>,
        /// How long an agent may take to ask for its job, e.g. "2m" (default 2m).
        #[arg(long, value_parser = pickup_secs)]
        pickup_timeout: Option<u64>,
    },
    /// Bring a failed-over system back to its rebuilt primary (coordinator).
    Failback {
        system: String,
        /// The rebuilt primary's agent (runs pulih-agent with [standby] enabled).
        #[arg(long)]
        to: String,
        /// How long an agent may take to ask for its job, e.g. "2m" (default 2m).
        #[arg(long, value_parser = pickup_secs)]
        pickup_timeout: Option<u64>,
    },
    /// Failovers and failbacks; with an id, that one with its steps.
    Failovers { id: Option<i64> },
    /// The disaster recovery plan document (Pasal 18).
    Drp {
        #[command(subcommand)]
        cmd: DrpCmd,
    },
    /// Protected systems: targets, datasets, last drill, overdue.
    Systems,
    /// Failover drills: run, list, show, report.
    Drill {
        #[command(subcommand)]
        cmd: DrillCmd,
    },
    /// Write man pages or shell completions into DIR (deploy/install.sh runs it).
    #[command(hide = true)]
    Generate { kind: pulih_core::clidoc::DocKind, dir: PathBuf },
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Run a drill of systems, of an OPD, or of everything (coordinator).
    /// Waits and prints the result; exit 0 passed, 2 partial or failed.
    Run {
        /// Systems to drill.
        #[arg(required_unless_present_any = ["opd", "all"], conflicts_with_all = ["opd", "all"])]
        systems: Vec<String>,
        /// Every system of this OPD.
        #[arg(long, conflicts_with = "all")]
        opd: Option<String>,
        /// Every system.
        #[arg(long)]
        all: bool,
        /// Restore this snapshot (id or prefix) for its dataset; the others as of its time.
        #[arg(long, conflicts_with = "as_of")]
        snapshot: Option<String>,
        /// Restore the newest snapshots at or before this RFC 3339 time.
        #[arg(long)]
        as_of: Option<String>,
        /// Print the drill id and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Drills, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One drill with its systems and steps.
    Show { id: i64 },
    /// The drill report from the DR plan's drill template (Markdown, self-contained HTML or PDF/A;
    /// Indonesian or English). Not recorded; `drp generate --kind drill` records a numbered version.
    Report {
        id: i64,
        /// md, html or pdf (pdf needs --out).
        #[arg(long, default_value = "md")]
        format: String,
        /// id (Bahasa Indonesia) or en.
        #[arg(long, default_value = "id")]
        lang: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DrpCmd {
    /// Generate a new version of the plan (coordinator) and download it.
    Generate {
        /// id (Bahasa Indonesia, default) or en.
        #[arg(long, default_value = "id")]
        lang: String,
        /// pdf (default), html or md.
        #[arg(long, default_value = "pdf")]
        format: String,
        /// plan (default), integrity (report) or drill (report, with --drill).
        #[arg(long, default_value = "plan")]
        kind: String,
        /// The drill a drill report is about.
        #[arg(long)]
        drill: Option<String>,
        /// Where to write the file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generated versions and the approved version in force.
    List,
    /// Download a generated version.
    Download {
        version: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check whether a file is an unaltered generated version (exit 2 when not).
    Verify { file: PathBuf },
    /// Record the approval of a version (admin).
    Approve {
        version: i64,
        /// Name of the official who approved it.
        #[arg(long)]
        name: String,
        /// Their position.
        #[arg(long)]
        position: String,
    },
    /// What changed between two versions, section by section.
    Diff { v1: i64, v2: i64 },
}

#[derive(Subcommand)]
enum ScrubCmd {
    /// The running scrub's progress and the last runs.
    Status,
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Revoke an agent's certificates (admin).
    Revoke { name: String },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Details of one snapshot.
    Show { id: String },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// List tokens.
    List,
    /// Create a token; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// admin, coordinator or auditor.
        #[arg(long)]
        role: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires: Option<u32>,
    },
    /// Revoke a token.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Rows of the audit log, oldest first.
    List {
        /// Rows after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Check the hash chain; exit 2 and name the first bad row when it is broken.
    Verify,
}

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    controller: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pulih_core::report::chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

/// An answer that is not 2xx.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct ApiFailure {
    message: String,
}

impl Client {
    fn new(cli: &Cli) -> Result<Self> {
        let path =
            cli.config.clone().or_else(|| std::env::var_os("PULIHCTL_CONFIG").map(PathBuf::from)).or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| Path::new(&h).join(".config/pulih/pulihctl.toml"))
                    .filter(|p| p.exists())
            });
        let file: FileConfig = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let hint = "give --controller, --token-file and --ca, or put controller, token_file and ca in ~/.config/pulih/pulihctl.toml";
        let base =
            cli.controller.clone().or(file.controller).with_context(|| format!("no controller address: {hint}"))?;
        let token_file =
            cli.token_file.clone().or(file.token_file).with_context(|| format!("no token file: {hint}"))?;
        let ca = cli.ca.clone().or(file.ca).with_context(|| format!("no CA certificate: {hint}"))?;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading the token file {}", token_file.display()))?
            .trim()
            .to_owned();
        if token.is_empty() {
            bail!("the token file {} is empty", token_file.display());
        }
        let pem = std::fs::read(&ca).with_context(|| format!("reading the CA certificate {}", ca.display()))?;
        let cert = ureq::tls::Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", ca.display()))?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
            .unversioned_rustls_crypto_provider(pulih_core::tls::provider())
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .build()
            .into();
        let base = base.trim_end_matches('/').to_owned();
        let base = if base.contains("://") { base } else { format!("https://{base}") };
        Ok(Self { agent, base, token })
    }

    fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<T> {
        let (url, text) = self.send(method, path, body)?;
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))
    }

    /// A 2xx answer's body as text, with the URL asked.
    fn send(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<(String, String)> {
        let url = format!("{}/api/v1{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let res = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => self.agent.post(&url).header("Authorization", &auth).send_json(&b),
            (_, None) => self.agent.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut resp = res.with_context(|| format!("cannot reach the controller at {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().context("reading the controller's answer")?;
        if (200..300).contains(&status) {
            return Ok((url, text));
        }
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| text.chars().take(300).collect());
        let message = match status {
            401 => format!("the controller refused the token: {message} (check --token-file)"),
            403 => message,
            429 => format!("{message} (rate limited)"),
            _ => format!("{message} (HTTP {status})"),
        };
        Err(ApiFailure { message }.into())
    }
}

impl Client {
    /// A raw body (a plan file or its content), or the API's error.
    fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("cannot reach the controller at {}", self.base))?;
        let status = resp.status().as_u16();
        let bytes =
            resp.body_mut().with_config().limit(512 << 20).read_to_vec().context("reading the controller's answer")?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        Err(ApiFailure { message: format!("{message} (HTTP {status})") }.into())
    }
}

fn drp_cmd(c: &Client, cmd: DrpCmd, json: bool) -> Result<ExitCode> {
    use pulih_controller::catalog::DrpVersionRow;
    use pulih_controller::drp;
    match cmd {
        DrpCmd::Generate { lang, format, kind, drill, out } => {
            let body = serde_json::json!({"lang": lang, "format": format, "kind": kind, "drill": drill});
            let row: DrpVersionRow = c.call("POST", "/drp/generate", Some(body))?;
            let bytes = c.get_bytes(&format!("/drp/versions/{}/file", row.version))?;
            if blake3::hash(&bytes).to_hex().as_str() != row.file_blake3 {
                bail!("the downloaded file does not match the recorded hash of version {}", row.version);
            }
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            if json {
                print_json(&row)?;
            } else {
                out!("Version {} generated: {} ({} {})", row.version, row.number, row.lang, row.format);
                out!("Written to:      {}", out.display());
                out!("Content blake3:  {}", row.content_blake3);
                out!("File blake3:     {}", row.file_blake3);
            }
        }
        DrpCmd::List => {
            let r: DrpVersionsResponse = c.call("GET", "/drp/versions", None)?;
            if json {
                return print_json(&r).map(|_| ExitCode::SUCCESS);
            }
            out!("{}", drp::format::versions_table(&r.versions, r.in_force.as_ref()));
        }
        DrpCmd::Download { version, out } => {
            let row: DrpVersionRow = c.call("GET", &format!("/drp/versions/{version}"), None)?;
            let bytes = c.get_bytes(&format!("/drp/versions/{version}/file"))?;
            if blake3::hash(&bytes).to_hex().as_str() != row.file_blake3 {
                bail!("the stored file of version {version} does not match its recorded hash");
            }
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            out!("Version {version} written to {}", out.display());
        }
        DrpCmd::Verify { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let r: DrpVersionsResponse = c.call("GET", "/drp/versions", None)?;
            let report = drp::verify(&bytes, &r.versions, |v| {
                let b = c.get_bytes(&format!("/drp/versions/{}/content", v.version)).ok()?;
                serde_json::from_slice(&b).ok()
            });
            if json {
                print_json(&report)?;
            } else {
                out!("{}: {}", file.display(), report.message);
            }
            if !report.ok {
                return Ok(ExitCode::from(2));
            }
        }
        DrpCmd::Approve { version, name, position } => {
            let row: DrpVersionRow = c.call(
                "POST",
                &format!("/drp/versions/{version}/approve"),
                Some(serde_json::json!({"name": name, "position": position})),
            )?;
            if json {
                print_json(&row)?;
            } else {
                out!(
                    "Version {} ({}) approved by {}, {}; next review by {}",
                    row.version,
                    row.number,
                    row.approved_by.unwrap_or_default(),
                    row.approved_position.unwrap_or_default(),
                    row.next_review.map_or("-".into(), pulih_controller::drp::format::utc_day)
                );
            }
        }
        DrpCmd::Diff { v1, v2 } => {
            let load = |v: i64| -> Result<drp::doc::Document> {
                let b = c.get_bytes(&format!("/drp/versions/{v}/content"))?;
                serde_json::from_slice(&b).with_context(|| format!("the content of version {v} is not a plan document"))
            };
            let d = drp::diff(&load(v1)?, &load(v2)?);
            if json {
                print_json(&d)?;
            } else {
                out!("{}", drp::diff_text(v1, v2, &d).trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn time_s(s: Option<i64>) -> String {
    s.map_or("-".into(), |s| short(&rfc3339_ns(s.saturating_mul(1_000_000_000))))
}

fn short(t: &str) -> String {
    format!("{}Z", &t[..t.len().min(19)])
}

fn dur(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn systems(c: &Client, json: bool) -> Result<ExitCode> {
    let rows: Vec<SystemInfo> = c.call("GET", "/systems", None)?;
    if json {
        return print_json(&rows).map(|_| ExitCode::SUCCESS);
    }
    out!(
        "{:<20} {:<14} {:>4} {:>7} {:>7} {:>7}  {:<8} {:<21} {:>9} {:>9}",
        "SYSTEM",
        "OPD",
        "TIER",
        "RPO",
        "RTO",
        "DRILL",
        "LAST",
        "LAST DRILL",
        "RTO GOT",
        "RPO GOT"
    );
    for s in &rows {
        let last = s.last_drill.as_ref();
        out!(
            "{:<20} {:<14} {:>4} {:>7} {:>7} {:>7}  {:<8} {:<21} {:>9} {:>9}{}",
            s.name,
            s.opd,
            s.tier,
            dur(s.rpo_target_secs as i64),
            dur(s.rto_target_secs as i64),
            s.drill_every_secs.map_or("-".into(), |d| dur(d as i64)),
            last.map_or("-", |l| l.outcome.as_str()),
            last.and_then(|l| l.ended_ns).map_or("-".into(), |n| short(&rfc3339_ns(n))),
            last.and_then(|l| l.rto_achieved_secs).map_or("-".into(), |v| dur(v.round() as i64)),
            last.and_then(|l| l.rpo_achieved_secs).map_or("-".into(), |v| dur(v.round() as i64)),
            if s.overdue == Some(true) { "  OVERDUE" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_drill(d: &DrillDetail) {
    out!("Drill {} ({}, by {}): {}", d.drill.id, d.drill.trigger, d.drill.actor, d.drill.outcome.to_uppercase());
    out!(
        "Started: {}   Ended: {}",
        short(&rfc3339_ns(d.drill.started_ns)),
        d.drill.ended_ns.map_or("-".into(), |n| short(&rfc3339_ns(n)))
    );
    for s in &d.systems {
        out!();
        out!(
            "System {} ({}): {}   RTO {} / target {}   RPO {} / target {}",
            s.system,
            s.opd,
            s.outcome.to_uppercase(),
            s.rto_achieved_secs.map_or("-".into(), |v| format!("{v:.1}s")),
            dur(s.rto_target_secs),
            s.rpo_achieved_secs.map_or("-".into(), |v| format!("{v:.1}s")),
            dur(s.rpo_target_secs)
        );
        for u in &s.snapshots {
            out!(
                "  snapshot {} of {}/{} (data time {})",
                &u.snapshot[..12.min(u.snapshot.len())],
                u.agent,
                u.dataset,
                short(&rfc3339_ns(u.started_ns))
            );
        }
        for st in d.steps.iter().filter(|st| st.system == s.system) {
            let secs = st.ended_ns.map_or("-".into(), |e| format!("{:.1}s", (e - st.started_ns) as f64 / 1e9));
            out!("  {:>3} {:<10} {:<30} {:>8}  {}", st.seq, st.kind, st.name, secs, st.outcome);
        }
        for r in &s.reasons {
            out!("  reason: {r}");
        }
    }
}

fn drill(c: &Client, cmd: DrillCmd, json: bool) -> Result<ExitCode> {
    match cmd {
        DrillCmd::Run { systems, opd, all, snapshot, as_of, no_wait } => {
            let req = DrillStartRequest {
                systems: (!systems.is_empty()).then_some(systems),
                opd,
                all: all.then_some(true),
                snapshot,
                as_of,
            };
            let started: DrillStarted = c.call("POST", "/drills", Some(serde_json::to_value(req)?))?;
            if no_wait {
                if json {
                    print_json(&started)?;
                } else {
                    out!("Drill {} started; follow it with: pulihctl drill show {}", started.id, started.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let d = loop {
                let d: DrillDetail = c.call("GET", &format!("/drills/{}", started.id), None)?;
                if d.drill.outcome != "running" {
                    break d;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            if json {
                print_json(&d)?;
            } else {
                print_drill(&d);
            }
            Ok(if d.drill.outcome == "passed" { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        DrillCmd::List { limit } => {
            let rows: Vec<pulih_controller::catalog::DrillRow> =
                c.call("GET", &format!("/drills?limit={limit}"), None)?;
            if json {
                return print_json(&rows).map(|_| ExitCode::SUCCESS);
            }
            out!("{:>6} {:<10} {:<21} {:<21} {:<8} ACTOR", "ID", "TRIGGER", "STARTED", "ENDED", "OUTCOME");
            for r in &rows {
                out!(
                    "{:>6} {:<10} {:<21} {:<21} {:<8} {}",
                    r.id,
                    r.trigger,
                    short(&rfc3339_ns(r.started_ns)),
                    r.ended_ns.map_or("-".into(), |n| short(&rfc3339_ns(n))),
                    r.outcome,
                    r.actor
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DrillCmd::Show { id } => {
            let d: DrillDetail = c.call("GET", &format!("/drills/{id}"), None)?;
            if json {
                print_json(&d)?;
            } else {
                print_drill(&d);
            }
            Ok(ExitCode::SUCCESS)
        }
        DrillCmd::Report { id, format, lang, out } => {
            if format == "pdf" && out.is_none() {
                bail!("--format pdf writes a binary file: give --out FILE");
            }
            let bytes = c.get_bytes(&format!(
                "/drills/{id}/report{}",
                query(&[("format", Some(format)), ("lang", Some(lang))])
            ))?;
            match out {
                Some(p) => {
                    std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
                    out!("Report of drill {id} written to {}", p.display());
                }
                None => out!("{}", String::from_utf8_lossy(&bytes).trim_end_matches('\n')),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Needs no controller, token or settings file.
    if let Cmd::Generate { kind, dir } = &cli.cmd {
        for path in pulih_core::clidoc::generate(<Cli as clap::CommandFactory>::command(), *kind, dir)? {
            out!("{}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let c = Client::new(&cli)?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Systems => return systems(&c, json),
        Cmd::Drill { cmd } => return drill(&c, cmd, json),
        // Answered above, before connecting.
        Cmd::Generate { .. } => {}
        Cmd::Agents { cmd: None } => {
            let r: AgentsResponse = c.call("GET", "/agents", None)?;
            if json {
                return print_json(&r).map(|_| ExitCode::SUCCESS);
            }
            out!(
                "{:<20} {:<8} {:<21} {:<21} {:<16} {:>5} {:>9} {:>9}  STATE",
                "AGENT",
                "STATUS",
                "LAST CONTACT",
                "CERT EXPIRES",
                "DATASET",
                "SNAPS",
                "LAG",
                "RPO"
            );
            for a in &r.agents {
                let head = format!(
                    "{:<20} {:<8} {:<21} {:<21}",
                    a.name,
                    a.status,
                    time_s(a.last_seen_at),
                    time_s(a.cert_not_after)
                );
                if a.datasets.is_empty() {
                    out!("{head} {:<16} {:>5} {:>9} {:>9}  -", "-", 0, "-", "-");
                }
                for d in &a.datasets {
                    let state = match (d.lag_secs, d.rpo_target_secs) {
                        (None, _) => "no snapshot",
                        (Some(l), Some(rpo)) if l > rpo => "LATE",
                        (Some(_), Some(_)) => "ok",
                        (Some(_), None) => "-",
                    };
                    out!(
                        "{head} {:<16} {:>5} {:>9} {:>9}  {state}",
                        d.name,
                        d.snapshots,
                        d.lag_secs.map_or("-".into(), dur),
                        d.rpo_target_secs.map_or("-".into(), dur)
                    );
                }
            }
        }
        Cmd::Agents { cmd: Some(AgentsCmd::Revoke { name }) } => {
            let r: RevokeAgentResponse = c.call("POST", &format!("/agents/{}/revoke", encode(&name)), None)?;
            if json {
                print_json(&r)?;
            } else {
                out!("Agent {} revoked ({} certificate(s)).", r.agent, r.certificates_revoked);
            }
        }
        Cmd::Enroll { agent, ttl_hours } => {
            let body = serde_json::to_value(EnrollTokenRequest { agent, ttl_hours })?;
            let r: EnrollTokenResponse = c.call("POST", "/enroll-tokens", Some(body))?;
            if json {
                print_json(&r)?;
            } else {
                out!("Agent:        {}", r.agent);
                out!("Token:        {}", r.token);
                out!("Fingerprint:  {}", r.fingerprint);
                out!("Expires:      {}", time_s(Some(r.expires_at)));
            }
        }
        Cmd::Snapshots { agent, dataset } => {
            let rows: Vec<SnapshotRow> =
                c.call("GET", &format!("/snapshots{}", query(&[("agent", agent), ("dataset", dataset)])), None)?;
            if json {
                return print_json(&rows).map(|_| ExitCode::SUCCESS);
            }
            out!("{}", SnapshotRow::table(&rows));
        }
        Cmd::Snapshot { cmd: SnapshotCmd::Show { id } } => {
            let d: SnapshotDetail = c.call("GET", &format!("/snapshots/{}", encode(&id)), None)?;
            if json {
                return print_json(&d).map(|_| ExitCode::SUCCESS);
            }
            let s = &d.snapshot;
            out!("Snapshot:  {}", s.id);
            out!("Agent:     {} / dataset {} (host {})", s.agent, s.dataset, s.host);
            out!("Started:   {}", rfc3339_ns(s.started_ns));
            out!("Finished:  {}", rfc3339_ns(s.finished_ns));
            out!("Paths:     {}", d.paths.join(", "));
            out!("Root tree: {}", s.root_tree);
            out!("Parent:    {}", s.parent.as_deref().unwrap_or("-"));
            out!(
                "Files:     {} ({}), read {}, sent {}, new {}",
                s.files,
                pulih_controller::units::human_bytes(s.bytes),
                pulih_controller::units::human_bytes(s.bytes_read),
                pulih_controller::units::human_bytes(s.bytes_sent),
                pulih_controller::units::human_bytes(s.bytes_new)
            );
            out!("Problems:  {}", s.errors);
            for p in &d.problems {
                out!("  {}: {}", p.path, p.message);
            }
        }
        Cmd::Verify { ids, all } => {
            if !all && ids.is_empty() {
                bail!("name the snapshots to verify, or use --all");
            }
            let body = serde_json::to_value(VerifyRequest { snapshots: ids, all })?;
            let started = std::time::Instant::now();
            let r: VerifyResult = c.call("POST", "/verify", Some(body))?;
            // Measured here: the whole request, as the coordinator waited for it.
            let took = started.elapsed().as_secs_f64();
            if json {
                print_json(&r)?;
            } else {
                for d in &r.damage {
                    out!(
                        "DAMAGED snapshot {} path {} {} {}: {}",
                        &d.snapshot[..12.min(d.snapshot.len())],
                        d.path,
                        d.kind,
                        d.id,
                        d.reason
                    );
                }
                out!(
                    "Verified {} snapshot(s): {} trees, {} chunks, {} checked in {:.1} s; {} damaged reference(s)",
                    r.snapshots,
                    r.trees_checked,
                    r.chunks_checked,
                    pulih_controller::units::human_bytes(r.bytes_checked),
                    took,
                    r.damage.len()
                );
            }
            if !r.damage.is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Restore { snapshot, target, path, only_changed, delete } => {
            let body = serde_json::to_value(RestoreRequest { snapshot, target, path, only_changed, delete })?;
            let r: RestoreResponse = c.call("POST", "/restore", Some(body))?;
            if json {
                print_json(&r)?;
            } else {
                out!(
                    "Restored snapshot {} into {} on the controller: {} files written ({}), {} unchanged, {} deleted, {} dirs, {} symlinks in {:.2} s",
                    &r.snapshot[..12.min(r.snapshot.len())],
                    r.path,
                    r.stats.files,
                    pulih_controller::units::human_bytes(r.stats.bytes),
                    r.stats.unchanged,
                    r.stats.deleted,
                    r.stats.dirs,
                    r.stats.symlinks,
                    r.seconds
                );
            }
        }
        Cmd::Prune { dry_run, agent, dataset, gc } => {
            let body = serde_json::to_value(PruneRequest { dry_run, agent, dataset, gc })?;
            let r: PruneOutcome = c.call("POST", "/prune", Some(body))?;
            if json {
                print_json(&r)?;
            } else {
                out!("{}", r.table());
            }
        }
        Cmd::Forget { id } => {
            let r: ForgetResponse = c.call("POST", &format!("/snapshots/{}/forget", encode(&id)), None)?;
            if json {
                print_json(&r)?;
            } else {
                for s in &r.forgotten {
                    out!("forgot {} {}/{} {}", &s.id[..12.min(s.id.len())], s.agent, s.dataset, s.time);
                }
                out!("{} snapshot(s) forgotten; run `pulihctl gc` to free their data", r.forgotten.len());
            }
        }
        Cmd::Gc => {
            let r: GcReport = c.call("POST", "/gc", None)?;
            if json {
                print_json(&r)?;
            } else {
                out!("{}", r.summary());
            }
        }
        Cmd::Scrub { cmd: Some(ScrubCmd::Status), .. } => {
            let r: ScrubStatus = c.call("GET", "/scrub", None)?;
            if json {
                print_json(&r)?;
            } else {
                print_scrub(&r);
            }
        }
        Cmd::Scrub { cmd: None, wait, rate } => {
            let before: ScrubStatus = c.call("GET", "/scrub", None)?;
            let last = before.runs.first().map_or(0, |r| r.id);
            let body = serde_json::to_value(ScrubRequest { rate })?;
            let started: ScrubStatus = c.call("POST", "/scrub", Some(body))?;
            if !wait {
                if json {
                    print_json(&started)?;
                } else {
                    out!("Scrub started on the controller; follow it with `pulihctl scrub status`.");
                }
                return Ok(ExitCode::SUCCESS);
            }
            // Until no scrub runs and a run newer than the last one ended.
            let done = loop {
                std::thread::sleep(Duration::from_millis(500));
                let s: ScrubStatus = c.call("GET", "/scrub", None)?;
                if s.current.is_none() {
                    if let Some(run) = s.runs.iter().find(|r| r.id > last && r.finished_at.is_some()) {
                        break (s.clone(), run.clone());
                    }
                }
            };
            let (status, run) = done;
            if json {
                print_json(&status)?;
            } else {
                print_scrub(&status);
            }
            if run.outcome == "failed" {
                bail!("scrub run {} failed: {}", run.id, run.detail.as_deref().unwrap_or("see the controller's log"));
            }
            if run.damaged_found > 0 {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Damage => {
            let r: DamageResponse = c.call("GET", "/damage", None)?;
            if json {
                print_json(&r)?;
            } else {
                out!("{}", DamagedBlob::table(&r.blobs));
                out!();
                out!("Snapshots marked damaged: {}", r.snapshots.len());
                if !r.snapshots.is_empty() {
                    out!("{}", SnapshotRow::table(&r.snapshots));
                }
            }
        }
        Cmd::Tokens { cmd: TokensCmd::List } => {
            let rows: Vec<ApiTokenRow> = c.call("GET", "/tokens", None)?;
            if json {
                return print_json(&rows).map(|_| ExitCode::SUCCESS);
            }
            out!("{:<20} {:<12} {:<8} {:<21} {:<21} CREATED BY", "NAME", "ROLE", "STATE", "EXPIRES", "LAST USED");
            for r in &rows {
                let state = match (r.revoked_at, r.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= pulih_controller::catalog::now_secs() => "expired",
                    _ => "active",
                };
                out!(
                    "{:<20} {:<12} {:<8} {:<21} {:<21} {}",
                    r.name,
                    r.role,
                    state,
                    time_s(r.expires_at),
                    time_s(r.last_used_at),
                    r.created_by
                );
            }
        }
        Cmd::Tokens { cmd: TokensCmd::Create { name, role, expires } } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let body = serde_json::to_value(CreateTokenRequest { name, role, expires_days: expires })?;
            let r: CreateTokenResponse = c.call("POST", "/tokens", Some(body))?;
            if json {
                print_json(&r)?;
            } else {
                out!("Token {} (role {}) created. It is shown only now:", r.info.name, r.info.role);
                out!("{}", r.token);
            }
        }
        Cmd::Tokens { cmd: TokensCmd::Revoke { name } } => {
            let r: ApiTokenRow = c.call("DELETE", &format!("/tokens/{}", encode(&name)), None)?;
            if json {
                print_json(&r)?;
            } else {
                out!("Token {} revoked.", r.name);
            }
        }
        Cmd::Audit { cmd: AuditCmd::List { after, limit } } => {
            let rows: Vec<AuditRow> = c.call("GET", &format!("/audit?after_seq={after}&limit={limit}"), None)?;
            if json {
                return print_json(&rows).map(|_| ExitCode::SUCCESS);
            }
            out!("{}", AuditRow::table(&rows, std::io::stdout().is_terminal()));
        }
        Cmd::Drp { cmd } => return drp_cmd(&c, cmd, json),
        Cmd::Failover { system, to, pickup_timeout } => {
            let body = serde_json::json!({ "system": system, "to": to, "pickup_timeout_secs": pickup_timeout });
            let r: FailoverRow = c.call("POST", "/failover", Some(body))?;
            return show_failovers(&[r], json, true);
        }
        Cmd::Failback { system, to, pickup_timeout } => {
            let body = serde_json::json!({ "system": system, "to": to, "pickup_timeout_secs": pickup_timeout });
            let r: FailoverRow = c.call("POST", "/failback", Some(body))?;
            return show_failovers(&[r], json, true);
        }
        Cmd::Failovers { id } => {
            let rows: Vec<FailoverRow> = match id {
                Some(i) => vec![c.call("GET", &format!("/failovers/{i}"), None)?],
                None => c.call("GET", "/failovers", None)?,
            };
            return show_failovers(&rows, json, id.is_some());
        }
        Cmd::Audit { cmd: AuditCmd::Verify } => {
            let v: AuditVerify = c.call("GET", "/audit/verify", None)?;
            if json {
                print_json(&v)?;
            } else {
                out!("{}", v.summary());
            }
            if !v.ok {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_scrub(s: &ScrubStatus) {
    match &s.current {
        Some(n) => {
            let pct = if n.bytes_total == 0 { 0.0 } else { n.bytes_checked as f64 * 100.0 / n.bytes_total as f64 };
            out!(
                "Running since {} (by {}): {}/{} blobs, {} of {} ({pct:.1} %), {} damaged so far",
                time_s(Some(n.started_at)),
                n.started_by,
                n.blobs_checked,
                n.blobs_total,
                pulih_controller::units::human_bytes(n.bytes_checked),
                pulih_controller::units::human_bytes(n.bytes_total),
                n.damaged
            );
        }
        None => out!("No scrub running."),
    }
    out!(
        "{:>5} {:<21} {:<21} {:<8} {:>8} {:>10} {:>7} DETAIL",
        "RUN",
        "STARTED",
        "FINISHED",
        "OUTCOME",
        "BLOBS",
        "BYTES",
        "DAMAGED"
    );
    for r in &s.runs {
        out!(
            "{:>5} {:<21} {:<21} {:<8} {:>8} {:>10} {:>7} {}",
            r.id,
            time_s(Some(r.started_at)),
            time_s(r.finished_at),
            r.outcome,
            r.blobs_checked,
            pulih_controller::units::human_bytes(r.bytes_checked),
            r.damaged_found,
            r.detail.as_deref().unwrap_or("")
        );
    }
}

/// Prints failover records; exit 2 when the (single) run shown failed.
fn show_failovers(rows: &[FailoverRow], json: bool, steps: bool) -> Result<ExitCode> {
    if json {
        print_json(&rows)?;
    } else {
        out!(
            "{:>4} {:<9} {:<16} {:<16} {:<21} {:<10} {:>8} {:>8}",
            "ID",
            "KIND",
            "SYSTEM",
            "TARGET",
            "STARTED",
            "OUTCOME",
            "RTO s",
            "RPO s"
        );
        for r in rows {
            let n = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
            out!(
                "{:>4} {:<9} {:<16} {:<16} {:<21} {:<10} {:>8} {:>8}",
                r.id,
                r.kind,
                r.system,
                r.target_agent,
                short(&rfc3339_ns(r.started_at * 1_000_000_000)),
                r.outcome,
                n(r.rto_achieved_secs),
                n(r.rpo_achieved_secs)
            );
            if steps {
                for s in r.steps.as_array().into_iter().flatten() {
                    out!("     [{}] {}", s["outcome"].as_str().unwrap_or("?"), s["name"].as_str().unwrap_or("?"));
                }
                if let Some(e) = &r.error {
                    out!("     error: {e}");
                }
            }
        }
    }
    let failed = rows.len() == 1 && rows[0].outcome == "failed";
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// `--pickup-timeout`: the one duration syntax ("90s", "2m"), in seconds.
fn pickup_secs(text: &str) -> Result<u64, String> {
    pulih_controller::units::parse_duration(text).map(|s| s.max(1) as u64)
}
