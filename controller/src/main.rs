//! `pulih-controller`: the DRC daemon and its local admin commands.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pulih_controller::api::{self, ApiState, FailureLimiter};
use pulih_controller::catalog::{actor_local, now_secs, NewAudit, Role};
use pulih_controller::config::{DEFAULT_API_LISTEN, DEFAULT_LISTEN};
use pulih_controller::datadir::DataDir;
use pulih_controller::metrics::Metrics;
use pulih_controller::pki::Ca;
use pulih_controller::server::{self, Limits, Server};
use pulih_controller::verify::Verifier;
use pulih_controller::{gc, lifecycle, pki, rebuild, restore, scrub};
use pulih_core::out;
use pulih_core::{AgentName, TreeId};
use tokio_util::sync::CancellationToken;

/// Pulih controller: receives, verifies, stores and restores replicated data
/// at the Disaster Recovery Centre.
#[derive(Parser)]
#[command(name = "pulih-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct DataDirArg {
    /// Data directory of the controller (catalog, store, certificates).
    #[arg(long, env = "PULIH_DATA_DIR", default_value = "/var/lib/pulih")]
    data_dir: PathBuf,
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
    /// Restore a snapshot, or a path within it, into a new or empty directory.
    Restore {
        #[command(flatten)]
        dir: DataDirArg,
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Destination directory (must not exist or be empty).
        dest: PathBuf,
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
    /// Write man pages or shell completions into DIR (deploy/install.sh runs it).
    #[command(hide = true)]
    Generate { kind: pulih_core::clidoc::DocKind, dir: PathBuf },
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
            let store = dd.store()?;
            let removed = store.remove_leftovers()?;
            if removed > 0 {
                tracing::info!(files = removed, "removed leftovers of interrupted uploads");
            }
            let mut catalog = dd.catalog()?;
            let cfg_bytes = std::fs::read(dd.config_path())?;
            if catalog.note_config(
                &actor_local(),
                &blake3::hash(&cfg_bytes).to_hex(),
                &dd.config_path().display().to_string(),
            )? {
                tracing::info!(path = %dd.config_path().display(), "configuration changed since the last start (audited)");
            }
            let backend = server::open_backend(store, catalog, cfg.limits.checkpoint_mib * 1024 * 1024);
            let ca = Ca::load(&dd.pki())?;
            let (chain, key) = pki::load_server(&dd.pki())?;
            let api_tls = Arc::new(api::tls_config(chain.clone(), key.clone_key())?);
            let api_state = Arc::new(ApiState {
                backend: backend.clone(),
                ca_fingerprint: ca.fingerprint().to_string(),
                enroll_ttl_hours: cfg.enroll.token_ttl_hours,
                metrics: Arc::new(Metrics::new()),
                limiter: FailureLimiter::new(cfg.api.auth_failures_per_minute),
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
            // Scheduled scrub on its own thread and catalog connection,
            // stopped and joined at shutdown.
            let stop_scrub = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scrubber = cfg.scrub.enabled.then(|| {
                let (interval, rate) = cfg.scrub_schedule();
                let (store_root, catalog_path, stop) = (dd.store_path(), dd.catalog_path(), stop_scrub.clone());
                std::thread::spawn(move || scrub::run_scheduled(&store_root, &catalog_path, interval, rate, &stop))
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
            stop_scrub.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = scrubber {
                let _ = t.join();
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
        Cmd::Restore { dir, snapshot, dest, path, agent, dataset, json } => {
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
            let result = restore::restore(&store, &root, &sub, &dest);
            let secs = started.elapsed().as_secs_f64();
            let detail =
                serde_json::json!({"target": dest, "path": path, "seconds": secs, "stats": result.as_ref().ok()});
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
            let started = now_secs();
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
                    "Verified {} snapshot(s): {} trees, {} chunks, {} checked in {} s; {} damaged reference(s)",
                    report.snapshots,
                    report.trees_checked,
                    report.chunks_checked,
                    pulih_controller::units::human_bytes(report.bytes_checked),
                    now_secs() - started,
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
            let (plans, remove, gc_report) = (&outcome.datasets, &outcome.removed, &outcome.gc);
            if json {
                out!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                for p in plans {
                    let rule = p.rule.map_or("no [[retention]] matches: keep all".to_string(), |i| {
                        format!("[[retention]] #{}", i + 1)
                    });
                    out!("{}/{} ({rule})", p.agent, p.dataset);
                    for d in &p.decisions {
                        out!(
                            "  {} {} {}  {}",
                            if d.keep { "keep  " } else { "remove" },
                            &d.id[..12],
                            pulih_controller::catalog::rfc3339_ns(d.time_ns),
                            d.reasons.join(", ")
                        );
                    }
                }
                let verb = if dry_run { "would be removed (dry run)" } else { "removed" };
                out!("{} snapshot(s) {verb}", remove.len());
                if let Some(g) = gc_report {
                    print_gc(g);
                }
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
                let detail = report.as_ref().map_or(serde_json::json!({}), |r| {
                    serde_json::json!({ "trees_removed": r.trees_removed, "chunks_removed": r.chunks_removed, "bytes_removed": r.bytes_removed })
                });
                audit_local(&dd, "gc", "store", detail, &report);
            }
            let report = report?;
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_gc(&report);
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
                out!("{:<6} {:<64} {:<9} {:<21} DETAIL", "KIND", "ID", "STATE", "FOUND");
                for r in &rows {
                    out!(
                        "{:<6} {:<64} {:<9} {:<21} {}",
                        r.kind,
                        r.id,
                        r.state,
                        pulih_controller::catalog::rfc3339_ns(r.found_at * 1_000_000_000),
                        r.detail
                    );
                }
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
    let entry = NewAudit::new(&actor_local(), action, target, detail);
    let recorded = dd.catalog().and_then(|mut c| c.audit(&entry, outcome).map_err(anyhow::Error::from));
    if let Err(e) = recorded {
        eprintln!("warning: {action} could not be recorded in the audit log: {e:#}");
    }
}

fn print_gc(r: &gc::GcReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    out!(
        "GC: {} snapshot(s), {} tree(s) and {} chunk(s) reachable, {} recent blob(s) kept (grace); {verb} {} tree(s) and {} chunk(s), {} in {:.1} s",
        r.snapshots,
        r.reachable_trees,
        r.reachable_chunks,
        r.kept_recent,
        r.trees_removed,
        r.chunks_removed,
        pulih_controller::units::human_bytes(r.bytes_removed),
        r.seconds
    );
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
            r.role,
            state,
            t(r.expires_at),
            t(r.last_used_at),
            r.created_by
        );
    }
}
