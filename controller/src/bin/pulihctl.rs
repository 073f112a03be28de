//! `pulihctl`: the remote CLI of coordinators, auditors and admins, over the
//! controller's HTTPS API. It pins the controller's CA (`pki/ca.pem` of the
//! DRC) and sends a bearer token read from a file. Settings come from flags,
//! or from a small TOML file (`$PULIHCTL_CONFIG`, else
//! `~/.config/pulih/pulihctl.toml`) with the keys `controller`, `token_file`
//! and `ca`. Human tables by default; `--json` prints the API's JSON.
//!
//! Exit status: 0 success, 1 error, 2 when `verify` found damage or
//! `audit verify` found the chain broken.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pulih_controller::api::types::*;
use pulih_controller::catalog::rfc3339_ns;
use pulih_core::out;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Remote control of a Pulih controller over its HTTPS API.
#[derive(Parser)]
#[command(name = "pulihctl", version, about)]
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
    /// Restore a snapshot into a directory on the DRC host (coordinator).
    Restore {
        /// Snapshot id or unique prefix.
        snapshot: String,
        /// Absolute directory on the DRC host; must not exist or be empty.
        #[arg(long)]
        target: String,
        /// Only this path of the snapshot (as on the source host).
        #[arg(long)]
        path: Option<String>,
    },
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
    /// Write man pages or shell completions into DIR (deploy/install.sh runs it).
    #[command(hide = true)]
    Generate { kind: pulih_core::clidoc::DocKind, dir: PathBuf },
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
            return serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"));
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
            let r: VerifyResult = c.call("POST", "/verify", Some(body))?;
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
                    "Verified {} snapshot(s): {} trees, {} chunks, {} checked; {} damaged reference(s)",
                    r.snapshots,
                    r.trees_checked,
                    r.chunks_checked,
                    pulih_controller::units::human_bytes(r.bytes_checked),
                    r.damage.len()
                );
            }
            if !r.damage.is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Restore { snapshot, target, path } => {
            let body = serde_json::to_value(RestoreRequest { snapshot, target, path })?;
            let r: RestoreResponse = c.call("POST", "/restore", Some(body))?;
            if json {
                print_json(&r)?;
            } else {
                out!(
                    "Restored snapshot {} into {} on the controller: {} files, {} dirs, {} symlinks, {} in {:.2} s",
                    &r.snapshot[..12.min(r.snapshot.len())],
                    r.target,
                    r.stats.files,
                    r.stats.dirs,
                    r.stats.symlinks,
                    pulih_controller::units::human_bytes(r.stats.bytes),
                    r.seconds
                );
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
            let color = std::io::stdout().is_terminal();
            out!("{:>6} {:<21} {:<22} {:<14} {:<24} RESULT", "SEQ", "TIME", "ACTOR", "ACTION", "TARGET");
            for r in &rows {
                let result =
                    if color && r.result != "ok" { format!("\x1b[31m{}\x1b[0m", r.result) } else { r.result.clone() };
                out!(
                    "{:>6} {:<21} {:<22} {:<14} {:<24} {result}",
                    r.seq,
                    short(&rfc3339_ns(r.at)),
                    r.actor,
                    r.action,
                    r.target.chars().take(24).collect::<String>()
                );
            }
        }
        Cmd::Audit { cmd: AuditCmd::Verify } => {
            let v: AuditVerify = c.call("GET", "/audit/verify", None)?;
            if json {
                print_json(&v)?;
            } else if v.ok {
                out!("Audit log intact: {} row(s), head seq {}.", v.rows, v.head_seq);
            } else {
                out!(
                    "AUDIT LOG BROKEN at row {}: {}",
                    v.first_bad_seq.map_or("?".into(), |s| s.to_string()),
                    v.problem.as_deref().unwrap_or("unknown problem")
                );
            }
            if !v.ok {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
