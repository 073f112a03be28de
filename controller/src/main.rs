//! `pulih-controller`: the DRC daemon and its local admin commands.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pulih_controller::api::{self, ApiState, FailureLimiter};
use pulih_controller::catalog::{actor_local, AuditRow, NewAudit, Role};
use pulih_controller::config::{DEFAULT_API_LISTEN, DEFAULT_LISTEN};
use pulih_controller::datadir::DataDir;
use pulih_controller::metrics::Metrics;
use pulih_controller::pki::Ca;
use pulih_controller::server::{self, Limits, Server};
use pulih_controller::verify::Verifier;
use pulih_controller::{drill, failover, lifecycle, pki, rebuild, restore, scrub, systems, witness};
use pulih_core::out;
use pulih_core::{AgentName, TreeId};
use tokio_util::sync::CancellationToken;

mod cli_drp;

/// Pulih controller: receives, verifies, stores and restores replicated data
/// at the Disaster Recovery Centre.
#[derive(Parser)]
#[command(name = "pulih-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
pub(crate) struct DataDirArg {
    /// Data directory of the controller (catalog, store, certificates).
    #[arg(long, env = "PULIH_DATA_DIR", default_value = "/var/lib/pulih")]
    pub(crate) data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new data directory: catalog, store, CA, server certificate, config.
    Init {
        #[command(flatten)]
        dir: DataDirArg,
        /// Address agents connect to (IP:PORT).
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: String,
        /// Address of the HTTPS API for pulihctl and metrics (IP:PORT).
        #[arg(long, default_value = DEFAULT_API_LISTEN)]
        api_listen: String,
        /// DNS names or IP addresses of this controller for its certificate
        /// (127.0.0.1 and localhost are always included). Repeatable.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Name of this controller in reports.
        #[arg(long, default_value = "drc")]
        controller_name: String,
    },
    /// Run the server in the foreground until SIGTERM or Ctrl-C.
    Serve {
        #[command(flatten)]
        dir: DataDirArg,
        /// Override the listen address of controller.toml.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print a one-time enrollment token for an agent and the CA fingerprint.
    EnrollAgent {
        /// Name the agent will be enrolled under.
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Output JSON: {"token": ..., "fingerprint": ...}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent's certificates; it is refused from its next connection on.
    RevokeAgent {
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Manage API tokens on this host (how the first admin token is made).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// List enrolled agents.
    Agents {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, oldest first.
    Snapshots {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot, or a path within it, into a new or empty directory
    /// (or, with --only-changed, over an older copy).
    Restore {
        #[command(flatten)]
        dir: DataDirArg,
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Destination directory (must not exist or be empty, unless --only-changed).
        dest: PathBuf,
        /// Delta restore: the destination may hold an older copy; write only
        /// the files whose content differs, fix the metadata of the others.
        #[arg(long)]
        only_changed: bool,
        /// With --only-changed: remove what the snapshot does not have, so
        /// the destination ends equal to the snapshot.
        #[arg(long, requires = "only_changed")]
        delete: bool,
        /// Restore only this path of the snapshot (as on the source host).
        #[arg(long)]
        path: Option<PathBuf>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-read and rehash every blob the given snapshots reach.
    Verify {
        #[command(flatten)]
        dir: DataDirArg,
        /// Snapshot ids, prefixes or `latest`.
        snapshots: Vec<String>,
        /// Verify every snapshot.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Forget snapshots: remove them from the catalog (their data stays
    /// until `gc`). Even the only snapshot of a dataset can be forgotten.
    Forget {
        #[command(flatten)]
        dir: DataDirArg,
        /// Snapshot ids or unique prefixes (at least 4 hex digits).
        #[arg(required = true)]
        snapshots: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply the [[retention]] policies of controller.toml: list every
    /// snapshot kept or removed and why, forget the removed ones, then
    /// collect garbage.
    Prune {
        #[command(flatten)]
        dir: DataDirArg,
        /// Only show the plan.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
        /// Do not run garbage collection afterwards.
        #[arg(long)]
        no_gc: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove chunks and trees no snapshot reaches (safe beside `serve`
    /// and uploads in progress).
    Gc {
        #[command(flatten)]
        dir: DataDirArg,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Override [gc] grace of controller.toml (e.g. "24h", "0s").
        #[arg(long)]
        grace: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-read and rehash every stored blob; record damage and mark the
    /// snapshots that reach it. Exits 2 when damage is found.
    Scrub {
        #[command(flatten)]
        dir: DataDirArg,
        /// Most bytes read per second (e.g. "50MiB"); default: unlimited.
        #[arg(long)]
        rate: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List blobs scrub found damaged, and their repair state.
    Damage {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// Fail a system over to an agent in standby role: restore its newest
    /// usable snapshots there, run its activation steps, record RTO/RPO
    /// achieved, and have the standby protect the data from its new place.
    /// Needs `serve` running (it hands the jobs to the agents).
    Failover {
        /// System name (systems/*.toml).
        system: String,
        /// Standby agent (default: the system's [restore] standby).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        dir: DataDirArg,
        #[command(flatten)]
        wait: WaitArgs,
        #[arg(long)]
        json: bool,
    },
    /// Bring a failed-over system back to its rebuilt primary (whose agent
    /// runs with [standby] enabled): delta sync, teardown at the DRC, final
    /// sync, activation at the primary.
    Failback {
        system: String,
        /// The rebuilt primary's agent.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        dir: DataDirArg,
        #[command(flatten)]
        wait: WaitArgs,
        #[arg(long)]
        json: bool,
    },
    /// List failovers and failbacks (or show one with --id).
    Failovers {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// List standby jobs, newest first.
    Jobs {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// The audit log on this host: list rows, or verify the hash chain.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// The disaster recovery plan document (Pasal 18): generate, list, verify, approve, diff.
    Drp {
        #[command(subcommand)]
        cmd: cli_drp::DrpCmd,
    },
    /// Protected systems (the files in [systems] dir): check or list them.
    Systems {
        #[command(subcommand)]
        cmd: SystemsCmd,
    },
    /// Rebuild a lost catalog.db from the store and pki/issued/.
    RebuildCatalog {
        #[command(flatten)]
        dir: DataDirArg,
        /// Move an existing catalog.db aside instead of refusing.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Accept a catalog.db older than the data directory (restored from a
    /// copy) after `serve` refused it; recorded in the audit log.
    AcceptCatalog {
        #[command(flatten)]
        dir: DataDirArg,
        /// Why the older catalog is accepted (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Write man pages or shell completions into DIR (deploy/install.sh runs it).
    #[command(hide = true)]
    Generate { kind: pulih_core::clidoc::DocKind, dir: PathBuf },
}

#[derive(clap::Args)]
struct WaitArgs {
    /// Directory of the system definitions (default: `[systems] dir` of controller.toml).
    #[arg(long)]
    systems_dir: Option<PathBuf>,
    /// An agent that does not ask for a job within this time fails the run.
    #[arg(long, default_value = "2m")]
    pickup_timeout: String,
}

impl WaitArgs {
    fn resolve(&self, dd: &DataDir) -> Result<(pulih_controller::systems::Systems, failover::Waits)> {
        let dir = match &self.systems_dir {
            Some(d) => d.clone(),
            None => dd.config()?.systems_dir(&dd.root),
        };
        let systems = pulih_controller::systems::Systems::load(&dir)?;
        let pickup = pulih_controller::units::parse_duration(&self.pickup_timeout).map_err(anyhow::Error::msg)?;
        Ok((systems, failover::Waits { pickup: Duration::from_secs(pickup.max(1) as u64), ..Default::default() }))
    }
}

fn print_failover(r: &pulih_controller::catalog::FailoverRow) {
    let t = |s: Option<i64>| s.map_or("-".to_string(), |s| pulih_controller::catalog::rfc3339_ns(s * 1_000_000_000));
    out!("{} #{} of {} to {}: {}", r.kind, r.id, r.system, r.target_agent, r.outcome.to_uppercase());
    out!("  started {}  ended {}  by {}", t(Some(r.started_at)), t(r.ended_at), r.actor);
    out!(
        "  RTO achieved: {}  RPO achieved: {}",
        r.rto_achieved_secs.map_or("-".into(), |s| format!("{s} s")),
        r.rpo_achieved_secs.map_or("-".into(), |s| format!("{s} s"))
    );
    if let Some(steps) = r.steps.as_array() {
        for s in steps {
            out!(
                "  [{}] {} ({} s): {}",
                s["outcome"].as_str().unwrap_or("?"),
                s["name"].as_str().unwrap_or("?"),
                s["ended_at"].as_i64().unwrap_or(0) - s["started_at"].as_i64().unwrap_or(0),
                s["output"].as_str().unwrap_or("").lines().last().unwrap_or("")
            );
        }
    }
    if let Some(e) = &r.error {
        out!("  error: {e}");
    }
}

#[derive(Subcommand)]
enum SystemsCmd {
    /// Validate every system file; print each system, or every problem
    /// with file:line: key (exit 1 on problems).
    Check {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// List the systems in recovery order.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token bound to a role; it is printed once and only its hash is kept.
    Create {
        /// Name of the token (who holds it), e.g. alice or prometheus.
        #[arg(long)]
        name: String,
        /// admin (everything), coordinator (verify, restore, drills + read) or auditor (read-only).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Days until the token expires (default: never).
        #[arg(long)]
        expires: Option<u32>,
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token; it is refused from its next request on.
    Revoke {
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Rows of the audit log, oldest first.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Rows after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain; exit 2 and name the first bad row when it is broken.
    Verify {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
}

fn systems_cmd(cmd: SystemsCmd) -> Result<std::process::ExitCode> {
    let (dir, json) = match &cmd {
        SystemsCmd::Check { dir } => (dir, false),
        SystemsCmd::List { dir, json } => (dir, *json),
    };
    let dd = DataDir::new(&dir.data_dir);
    let sdir = dd.config()?.systems_dir(&dd.root);
    let loaded = match systems::Systems::load(&sdir) {
        Ok(s) => s,
        Err(e) => {
            let list = match e {
                systems::SystemsError::Many(v) => v.iter().map(ToString::to_string).collect(),
                other => vec![other.to_string()],
            };
            eprintln!("{} problem(s) in {}:", list.len(), sdir.display());
            for p in list {
                eprintln!("  {p}");
            }
            return Ok(std::process::ExitCode::from(1));
        }
    };
    if json {
        let v: Vec<serde_json::Value> = loaded
            .in_order()
            .iter()
            .map(|s| {
                serde_json::json!({"name": s.name.as_str(), "title": s.title, "opd": s.opd, "tier": s.tier,
                    "depends_on": s.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
                    "rpo_target_secs": s.rpo_target.as_secs(), "rto_target_secs": s.rto_target.as_secs(),
                    "drill_every_secs": s.drill_every.map(|d| d.as_secs()),
                    "datasets": s.datasets.iter().map(|d| format!("{}/{}", d.agent, d.dataset)).collect::<Vec<_>>(),
                    "file": s.source.display().to_string()})
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let secs = |d: Duration| pulih_controller::units::format_duration(d.as_secs() as i64);
    out!("{:<20} {:<14} {:>4} {:>6} {:>6} {:>7}  DATASETS", "SYSTEM", "OPD", "TIER", "RPO", "RTO", "DRILL");
    for s in loaded.in_order() {
        out!(
            "{:<20} {:<14} {:>4} {:>6} {:>6} {:>7}  {}{}",
            // Display of a name ignores width: pad its text.
            s.name.as_str(),
            s.opd,
            s.tier,
            secs(s.rpo_target),
            secs(s.rto_target),
            s.drill_every.map_or("-".into(), secs),
            s.datasets.iter().map(|d| format!("{}/{}", d.agent, d.dataset)).collect::<Vec<_>>().join(","),
            if s.depends_on.is_empty() {
                String::new()
            } else {
                format!("  (after {})", s.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "))
            }
        );
    }
    if matches!(cmd, SystemsCmd::Check { .. }) {
        out!("{} system(s) in {}: OK", loaded.len(), sdir.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PULIH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pulih_core::report::chain(e.as_ref()));
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cli.cmd {
        Cmd::Generate { kind, dir } => {
            for path in pulih_core::clidoc::generate(<Cli as clap::CommandFactory>::command(), kind, &dir)? {
                out!("{}", path.display());
            }
        }
        Cmd::Init { dir, listen, api_listen, names, controller_name } => {
            let dd = DataDir::new(&dir.data_dir);
            dd.init(&controller_name, &listen, &api_listen, &names)?;
            let ca = Ca::load(&dd.pki())?;
            out!("Data directory created: {}", dd.root.display());
            out!("CA fingerprint: {}", ca.fingerprint());
            out!("Next: pulih-controller serve --data-dir {}", dd.root.display());
            out!("      pulih-controller enroll-agent NAME --data-dir {}", dd.root.display());
        }
        Cmd::Serve { dir, listen } => {
            let dd = DataDir::new(&dir.data_dir);
            let cfg = dd.config()?;
            let _lock = dd.lock_for_serving()?;
            if let Some(moved) = dd.migrate_store()? {
                tracing::info!(blobs = moved, "store converted to layout 3 (pack files for new blobs)");
            }
            let store = dd.store()?;
            let removed = store.remove_leftovers()?;
            if removed > 0 {
                tracing::info!(files = removed, "removed leftovers of interrupted uploads");
            }
            let mut catalog = dd.catalog()?;
            // F18: refuse a catalog.db older than the data directory, before
            // anything is written to it.
            witness::remove_leftovers(&dd.store_path());
            let witness_missing = witness::check(&catalog, &dd.store_path())? == witness::Checked::NoWitness;
            if witness_missing {
                // init writes one: this is an upgrade, or the file was removed.
                tracing::warn!("no catalog witness in the store: recording one (audited); an older catalog.db put back before now cannot be detected");
                let entry = NewAudit::new(&actor_local(), "witness-created", "catalog", serde_json::json!({}));
                catalog.audit::<(), String>(&entry, &Ok(()))?;
            }
            let cfg_bytes = std::fs::read(dd.config_path())?;
            if catalog.note_config(
                &actor_local(),
                &blake3::hash(&cfg_bytes).to_hex(),
                &dd.config_path().display().to_string(),
            )? {
                tracing::info!(path = %dd.config_path().display(), "configuration changed since the last start (audited)");
            }
            let unsealed = pulih_controller::compact::remove_unsealed_packs(&store, &mut catalog)?;
            if unsealed > 0 {
                tracing::info!(packs = unsealed, "removed packs of interrupted uploads");
            }
            let head = witness::record_catalog(&catalog, &dd.store_path())?;
            let backend = server::open_backend(store, catalog, cfg.limits.checkpoint_mib * 1024 * 1024);
            *backend.witnessed.lock().unwrap_or_else(|e| e.into_inner()) = (head.snapshot_commits, head.audit_seq);
            let witness_backend = backend.clone();
            let ca = Ca::load(&dd.pki())?;
            let (chain, key) = pki::load_server(&dd.pki())?;
            let api_tls = Arc::new(api::tls_config(chain.clone(), key.clone_key())?);
            let scrubs = Arc::new(scrub::ScrubTracker::default());
            let systems_dir = cfg.systems_dir(&dd.root);
            let engine = Arc::new(drill::Engine::new(&dd.root, &systems_dir));
            engine.recover()?;
            let api_state = Arc::new(ApiState {
                backend: backend.clone(),
                ca_fingerprint: ca.fingerprint().to_string(),
                enroll_ttl_hours: cfg.enroll.token_ttl_hours,
                metrics: Arc::new(Metrics::new().with_systems_dir(&systems_dir)),
                limiter: FailureLimiter::new(cfg.api.auth_failures_per_minute),
                datadir: dd.clone(),
                restore_root: cfg.restore_root(&dd.root),
                scrub_rate: cfg.scrub_schedule().1,
                scrub: scrubs.clone(),
                drp: match dd.drp_settings(&cfg) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "DR plan settings ([drp]) unusable; plan endpoints answer 404");
                        None
                    }
                },
                // Where `failover` and `failback` find the systems.
                systems_dir: systems_dir.clone(),
                drills: Some(engine.clone()),
            });
            let router = api::router(api_state, cfg.api.metrics);
            let limits = Limits {
                max_connections: cfg.limits.max_connections,
                handshake_timeout: Duration::from_secs(cfg.limits.handshake_timeout_secs),
                idle_timeout: Duration::from_secs(cfg.limits.idle_timeout_secs),
            };
            let mut server = Server::new(backend, ca, chain, key, cfg.controller.name.clone(), limits)?;
            server.pki = Some(dd.pki());
            let server = Arc::new(server);
            let addr = listen.unwrap_or(cfg.controller.listen.clone());
            // Scheduled scrub, and prune + GC, each on its own thread and
            // catalog connection, stopped and joined at shutdown.
            let scrubber = cfg.scrub.enabled.then(|| {
                let (interval, rate) = cfg.scrub_schedule();
                let (store_root, catalog_path, tracker) = (dd.store_path(), dd.catalog_path(), scrubs.clone());
                std::thread::spawn(move || scrub::run_scheduled(&store_root, &catalog_path, interval, rate, &tracker))
            });
            let stop_maintenance = Arc::new(pulih_controller::stop::Stop::default());
            let maintenance = {
                let (prune_every, gc_every) = cfg.maintenance_schedule();
                let (dd, stop) = (dd.clone(), stop_maintenance.clone());
                std::thread::spawn(move || lifecycle::run_scheduled(&dd, prune_every, gc_every, &stop))
            };
            // Scheduled drills, likewise.
            let stop_drills = Arc::new(pulih_controller::stop::Stop::default());
            let drill_scheduler = cfg.drills.scheduled.then(|| {
                let (engine, stop, every) = (engine.clone(), stop_drills.clone(), cfg.drill_check_interval());
                std::thread::spawn(move || drill::schedule::run_scheduled(engine, every, stop))
            });
            let api_addr = cfg.api.listen.clone();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let served = rt.block_on(async move {
                let listener = server::bind(&addr).await?;
                let api_listener = server::bind(&api_addr).await.context("the API listener ([api] listen)")?;
                let shutdown = CancellationToken::new();
                let sig = shutdown.clone();
                tokio::spawn(async move {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term.recv() => {},
                        _ = sig.cancelled() => {},
                    }
                    tracing::info!("shutting down");
                    sig.cancel();
                });
                let api_stop = shutdown.clone();
                let api = tokio::spawn(api::serve(api_listener, api_tls, router, api_stop));
                let agents = server.run(listener, shutdown.clone()).await;
                // The agent server stops on a fatal store error: the API goes too.
                shutdown.cancel();
                let api = api.await.context("API task")?;
                agents.and(api)
            });
            // Scrubs (scheduled or started over the API) poll this between blobs.
            scrubs.stop();
            stop_maintenance.stop();
            if let Some(t) = scrubber {
                let _ = t.join();
            }
            // A running drill's checks are stopped; its teardown still runs.
            stop_drills.stop();
            engine.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = drill_scheduler {
                let _ = t.join();
            }
            engine.join();
            let _ = maintenance.join();
            // Waits for blocking tasks (a scrub started over the API) to end.
            drop(rt);
            // The witness also covers what was audited since the last commit.
            let head = witness_backend.catalog.lock().unwrap_or_else(|e| e.into_inner()).head();
            match head {
                Ok(h) => witness_backend.witness(&h),
                Err(e) => tracing::warn!(error = %e, "cannot read the catalog head for its witness"),
            }
            served?;
        }
        Cmd::EnrollAgent { name, dir, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let agent = AgentName::new(&name)?;
            let cfg = dd.config()?;
            let ca = Ca::load(&dd.pki())?;
            let ttl = cfg.enroll.token_ttl_hours as i64 * 3600;
            let (token, expires) = dd.catalog()?.create_enroll_token(&agent, ttl, &actor_local())?;
            if json {
                out!(
                    "{}",
                    serde_json::json!({"token": token, "fingerprint": ca.fingerprint().to_string(), "agent": name, "expires_at": expires})
                );
            } else {
                out!("Agent:        {name}");
                out!("Token:        {token}");
                out!("Fingerprint:  {}", ca.fingerprint());
                out!("Expires:      {}", pulih_controller::catalog::rfc3339_ns(expires * 1_000_000_000));
                out!();
                out!("On the agent's host run:");
                out!(
                    "  pulih-agent enroll --controller HOST:{} --token {token} --fingerprint {} --name {name}",
                    cfg.controller.listen.rsplit(':').next().unwrap_or("7443"),
                    ca.fingerprint()
                );
            }
        }
        Cmd::RevokeAgent { name, dir } => {
            let dd = DataDir::new(&dir.data_dir);
            let agent = AgentName::new(&name)?;
            let entry = NewAudit::new(&actor_local(), "revoke-agent", agent.as_str(), serde_json::json!({}));
            let mut cat = dd.catalog()?;
            let fps = cat.agent_certificates(agent.as_str())?;
            let n = cat.audited(&entry, |c| c.revoke_agent(&agent))?;
            // Markers so a rebuilt catalog keeps them revoked.
            pki::record_revoked(&dd.pki(), &fps)?;
            out!("Agent {name} revoked ({n} certificate(s)); it is refused from its next connection on.");
        }
        Cmd::Token { cmd } => token_cmd(cmd)?,
        Cmd::Audit { cmd: AuditCmd::List { dir, after, limit, json } } => {
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            let rows = DataDir::new(&dir.data_dir).catalog()?.audit_rows(after, limit)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!("{}", AuditRow::table(&rows, std::io::stdout().is_terminal()));
            }
        }
        Cmd::Audit { cmd: AuditCmd::Verify { dir, json } } => {
            let v = DataDir::new(&dir.data_dir).catalog()?.audit_verify()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                out!("{}", v.summary());
            }
            if !v.ok {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Systems { cmd } => return systems_cmd(cmd),
        Cmd::Agents { dir, json } => {
            let agents = DataDir::new(&dir.data_dir).catalog()?.agents()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&agents)?);
            } else {
                out!("{:<24} {:<8} LAST SEEN", "AGENT", "STATUS");
                for a in agents {
                    let seen =
                        a.last_seen_at.map_or("-".into(), |s| pulih_controller::catalog::rfc3339_ns(s * 1_000_000_000));
                    out!("{:<24} {:<8} {seen}", a.name, a.status);
                }
            }
        }
        Cmd::Snapshots { dir, agent, dataset, json } => {
            let rows = DataDir::new(&dir.data_dir).catalog()?.snapshots(agent.as_deref(), dataset.as_deref())?;
            if json {
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!("{}", pulih_controller::catalog::SnapshotRow::table(&rows));
            }
        }
        Cmd::Restore { dir, snapshot, dest, only_changed, delete, path, agent, dataset, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let cat = dd.catalog()?;
            let snap = cat.resolve_snapshot(&snapshot, agent.as_deref(), dataset.as_deref())?;
            let root: TreeId = snap.root_tree.parse()?;
            let store = dd.store()?;
            let sub: Vec<Vec<u8>> = path
                .as_ref()
                .map(|p| {
                    p.as_os_str()
                        .as_bytes()
                        .split(|b| *b == b'/')
                        .filter(|c| !c.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect()
                })
                .unwrap_or_default();
            let started = std::time::Instant::now();
            let opts = restore::Options { only_changed, delete };
            let result = restore::restore(&store, &root, &sub, &dest, opts);
            let secs = started.elapsed().as_secs_f64();
            let detail = serde_json::json!({"target": dest, "path": path, "seconds": secs, "only_changed": only_changed,
                "delete": delete, "stats": result.as_ref().ok()});
            let mut cat = cat;
            // The restore has happened (or failed) already: a full DRC disk
            // that cannot take the audit row must not turn it into an error.
            if let Err(e) = cat.audit(&NewAudit::new(&actor_local(), "restore", &snap.id, detail), &result) {
                eprintln!("warning: this restore could not be recorded in the audit log: {e}");
            }
            let stats =
                result.with_context(|| format!("restoring snapshot {} into {}", &snap.id[..12], dest.display()))?;
            if json {
                out!("{}", serde_json::json!({"snapshot": snap.id, "dest": dest, "stats": stats, "seconds": secs}));
            } else if only_changed {
                out!(
                    "Delta restore of snapshot {} into {}: {} file(s) written ({}), {} unchanged, {} deleted, {} dirs, {} symlinks, {} hard links in {:.2} s",
                    &snap.id[..12],
                    dest.display(),
                    stats.files,
                    pulih_controller::units::human_bytes(stats.bytes),
                    stats.unchanged,
                    stats.deleted,
                    stats.dirs,
                    stats.symlinks,
                    stats.hardlinks,
                    secs
                );
            } else {
                out!(
                    "Restored snapshot {} into {}: {} files, {} dirs, {} symlinks, {} hard links, {} in {:.2} s",
                    &snap.id[..12],
                    dest.display(),
                    stats.files,
                    stats.dirs,
                    stats.symlinks,
                    stats.hardlinks,
                    pulih_controller::units::human_bytes(stats.bytes),
                    secs
                );
            }
        }
        Cmd::Verify { dir, snapshots, all, agent, dataset, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let cat = dd.catalog()?;
            let targets = if all {
                cat.snapshots(agent.as_deref(), dataset.as_deref())?
            } else {
                if snapshots.is_empty() {
                    bail!("name the snapshots to verify, or use --all");
                }
                snapshots
                    .iter()
                    .map(|s| cat.resolve_snapshot(s, agent.as_deref(), dataset.as_deref()))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let store = dd.store()?;
            let mut v = Verifier::new(&store);
            let started = std::time::Instant::now();
            for s in &targets {
                v.snapshot(&s.id, &s.root_tree.parse()?).with_context(|| format!("verifying snapshot {}", s.id))?;
            }
            let report = v.report;
            // What scrub marked, even if this run found the data intact
            // (never silently good).
            let marked: Vec<&str> = targets.iter().filter(|s| s.state == "damaged").map(|s| s.id.as_str()).collect();
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["marked_damaged"] = serde_json::json!(marked);
                out!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for m in &marked {
                    out!("MARKED DAMAGED by scrub: snapshot {m} (see `pulih-controller damage`)");
                }
                for d in &report.damage {
                    out!("DAMAGED snapshot {} path {} {} {}: {}", &d.snapshot[..12], d.path, d.kind, d.id, d.reason);
                }
                out!(
                    "Verified {} snapshot(s): {} trees, {} chunks, {} checked in {:.1} s; {} damaged reference(s)",
                    report.snapshots,
                    report.trees_checked,
                    report.chunks_checked,
                    pulih_controller::units::human_bytes(report.bytes_checked),
                    started.elapsed().as_secs_f64(),
                    report.damage.len()
                );
            }
            if !report.damage.is_empty() || !marked.is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Forget { dir, snapshots, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let rows = lifecycle::forget(&dd, &snapshots);
            audit_local(&dd, "forget", &snapshots.join(","), serde_json::json!({ "snapshots": snapshots }), &rows);
            let rows = rows?;
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            if json {
                out!("{}", serde_json::json!({ "forgotten": ids }));
            } else {
                for r in &rows {
                    out!("forgot {} {}/{} {}", &r.id[..12], r.agent, r.dataset, r.time);
                }
                out!("{} snapshot(s) forgotten; run `pulih-controller gc` to free their data", rows.len());
            }
        }
        Cmd::Prune { dir, dry_run, agent, dataset, no_gc, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let outcome = lifecycle::prune(&dd, dry_run, agent.as_deref(), dataset.as_deref(), !no_gc);
            if !dry_run {
                let removed = outcome.as_ref().map(|o| o.removed.clone()).unwrap_or_default();
                let detail =
                    serde_json::json!({ "agent": agent, "dataset": dataset, "removed": removed, "gc": !no_gc });
                audit_local(&dd, "prune", agent.as_deref().unwrap_or("*"), detail, &outcome);
            }
            let outcome = outcome?;
            if json {
                out!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                out!("{}", outcome.table());
            }
        }
        Cmd::Gc { dir, dry_run, grace, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let grace = grace
                .as_deref()
                .map(pulih_controller::units::parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let report = lifecycle::collect(&dd, grace, dry_run);
            if !dry_run {
                audit_local(&dd, "gc", "store", lifecycle::gc_detail(&report), &report);
            }
            let report = report?;
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", report.summary());
            }
        }
        Cmd::Scrub { dir, rate, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let rate =
                rate.as_deref().map(pulih_controller::units::parse_size).transpose().map_err(anyhow::Error::msg)?;
            let report = lifecycle::scrub(&dd, rate);
            let detail =
                report.as_ref().map_or(serde_json::json!({}), |r| serde_json::json!({ "damaged": r.damage.len() }));
            audit_local(&dd, "scrub", "store", detail, &report);
            let report = report?;
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for d in &report.damage {
                    out!("DAMAGED {} {} ({}): {}", d.kind, d.id, d.state, d.reason);
                    for s in &d.snapshots {
                        out!("  reached by snapshot {s}");
                    }
                }
                out!(
                    "Scrubbed {} blob(s), {} in {:.1} s; {} damaged blob(s) found; {} snapshot(s) marked damaged",
                    report.blobs_checked,
                    pulih_controller::units::human_bytes(report.bytes_checked),
                    report.seconds,
                    report.damage.len(),
                    report.damaged_snapshots.len()
                );
            }
            if !report.damage.is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Damage { dir, json } => {
            let rows = DataDir::new(&dir.data_dir).catalog()?.damage()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!("{}", pulih_controller::catalog::DamageRow::table(&rows));
            }
        }
        Cmd::Drp { cmd } => return cli_drp::run(cmd),
        Cmd::Failover { system, to, dir, wait, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let (systems, waits) = wait.resolve(&dd)?;
            let cat = std::sync::Mutex::new(dd.catalog()?);
            let row = failover::failover(&cat, &dd.store()?, &systems, &system, to.as_deref(), &actor_local(), waits)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                print_failover(&row);
            }
            if row.outcome != "succeeded" {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Failback { system, to, dir, wait, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let (systems, waits) = wait.resolve(&dd)?;
            let cat = std::sync::Mutex::new(dd.catalog()?);
            let row = failover::failback(&cat, &dd.store()?, &systems, &system, &to, &actor_local(), waits)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                print_failover(&row);
            }
            if row.outcome != "succeeded" {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Failovers { dir, id, json } => {
            let cat = DataDir::new(&dir.data_dir).catalog()?;
            let rows = match id {
                Some(i) => vec![cat.failover(i)?.with_context(|| format!("no failover #{i}"))?],
                None => cat.failovers(None)?,
            };
            if json {
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &rows {
                    print_failover(r);
                }
                out!("{} record(s)", rows.len());
            }
        }
        Cmd::Jobs { dir, agent, limit, json } => {
            let rows = DataDir::new(&dir.data_dir).catalog()?.jobs(agent.as_deref(), limit)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!("{:<6} {:<16} {:<13} {:<8} MESSAGE", "ID", "AGENT", "KIND", "STATE");
                for r in &rows {
                    out!(
                        "{:<6} {:<16} {:<13} {:<8} {}",
                        r.id,
                        r.agent,
                        r.kind,
                        r.state,
                        r.message.as_deref().unwrap_or("")
                    );
                }
            }
        }
        Cmd::AcceptCatalog { dir, reason } => {
            let dd = DataDir::new(&dir.data_dir);
            let _lock = dd.lock_for_serving().context("stop `pulih-controller serve` first")?;
            let mut cat = dd.catalog()?;
            let store = dd.store_path();
            match witness::check(&cat, &store) {
                Ok(_) => out!("catalog.db is not older than this data directory: nothing to accept"),
                Err(e @ (witness::WitnessError::RolledBack { .. } | witness::WitnessError::Invalid { .. })) => {
                    let why = match e {
                        witness::WitnessError::RolledBack { why } => why,
                        other => other.to_string(),
                    };
                    let detail = serde_json::json!({
                        "reason": reason, "found": why, "state": witness::describe(&cat, &store)?,
                    });
                    let entry = NewAudit::new(&actor_local(), "accept-catalog", "catalog", detail);
                    cat.audit::<(), String>(&entry, &Ok(()))?;
                    witness::record_catalog(&cat, &store)?;
                    out!("Accepted the older catalog.db ({why}); recorded in the audit log.");
                    out!("Snapshots recorded after its copy are gone from the catalog; agents upload again what it lacks.");
                    out!("Next: pulih-controller serve --data-dir {}", dd.root.display());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Cmd::RebuildCatalog { dir, force, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let report = rebuild::rebuild(&dd, force);
            // The new catalog's first audit row says where it came from.
            audit_local(&dd, "rebuild-catalog", "catalog", serde_json::json!({ "force": force }), &report);
            let report = report?;
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if let Some(a) = &report.moved_aside {
                    out!("previous catalog moved to {}", a.display());
                }
                for s in &report.skipped {
                    out!("skipped {s}");
                }
                for d in &report.damaged {
                    out!("DAMAGED {d} (recorded; run scrub)");
                }
                out!(
                    "Rebuilt: {} agent(s), {} snapshot(s), {} tree(s), {} chunk(s) ({} without owner), {} certificate(s) revoked",
                    report.agents,
                    report.snapshots,
                    report.trees,
                    report.chunks,
                    report.unowned,
                    report.certificates_revoked
                );
                out!("Certificates restored as ACTIVE (revoke any that should not be; revocations older than pki/revoked/ markers are lost):");
                for c in &report.certificates_active {
                    out!("  {c}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends an audit row for a local command that already ran. Failing to
/// record it does not undo the action; it is reported loudly instead.
fn audit_local<T, E: std::fmt::Display>(
    dd: &DataDir,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    outcome: &Result<T, E>,
) {
    if let Err(e) = lifecycle::record(dd, &actor_local(), action, target, detail, outcome) {
        eprintln!("warning: {action} could not be recorded in the audit log: {e:#}");
    }
}

fn token_cmd(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create { name, role, expires, dir, json } => {
            if expires == Some(0) {
                bail!("--expires must be at least 1 day (leave it out for a token that does not expire)");
            }
            let dd = DataDir::new(&dir.data_dir);
            let actor = actor_local();
            let entry = NewAudit::new(
                &actor,
                "token-create",
                &name,
                serde_json::json!({"role": role, "expires_days": expires}),
            );
            let (token, row) = dd.catalog()?.audited(&entry, |c| c.create_api_token(&name, role, expires, &actor))?;
            if json {
                out!(
                    "{}",
                    serde_json::json!({"name": row.name, "role": row.role, "token": token, "expires_at": row.expires_at})
                );
            } else {
                out!(
                    "Token {} (role {}) created. It is shown only now; keep it in a file readable only by its holder:",
                    row.name,
                    row.role
                );
                out!("{token}");
                if let Some(e) = row.expires_at {
                    out!("Expires: {}", pulih_controller::catalog::rfc3339_ns(e * 1_000_000_000));
                }
            }
        }
        TokenCmd::List { dir, json } => {
            let rows = DataDir::new(&dir.data_dir).catalog()?.api_tokens()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_tokens(&rows);
            }
        }
        TokenCmd::Revoke { name, dir } => {
            let dd = DataDir::new(&dir.data_dir);
            let entry = NewAudit::new(&actor_local(), "token-revoke", &name, serde_json::json!({}));
            dd.catalog()?.audited(&entry, |c| c.revoke_api_token(&name))?;
            out!("Token {name} revoked; it is refused from its next request on.");
        }
    }
    Ok(())
}

/// The token table shared in spirit with pulihctl.
fn print_tokens(rows: &[pulih_controller::catalog::ApiTokenRow]) {
    let t = |s: Option<i64>| s.map_or("-".to_string(), |s| pulih_controller::catalog::rfc3339_ns(s * 1_000_000_000));
    out!("{:<20} {:<12} {:<8} {:<26} {:<26} CREATED BY", "NAME", "ROLE", "STATE", "EXPIRES", "LAST USED");
    for r in rows {
        let state = match (r.revoked_at, r.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if e <= pulih_controller::catalog::now_secs() => "expired",
            _ => "active",
        };
        out!(
            "{:<20} {:<12} {:<8} {:<26} {:<26} {}",
            r.name,
            // Display of the role ignores width: pad its text.
            r.role.to_string(),
            state,
            t(r.expires_at),
            t(r.last_used_at),
            r.created_by
        );
    }
}
