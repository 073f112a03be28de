//! `pulih-agent`: enrollment and snapshots on a primary server.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use pulih_agent::config::Settings;
use pulih_agent::status::{Lang, StatusFile};
use pulih_agent::{check, daemon, enroll, snapshot};
use pulih_core::out;

/// Pulih agent: protects this server's data by replicating it to the
/// Disaster Recovery Centre.
#[derive(Parser)]
#[command(name = "pulih-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll this host: generate a key here, get it certified by the controller,
    /// write the configuration.
    Enroll {
        /// Controller address, HOST:PORT.
        #[arg(long)]
        controller: String,
        /// One-time token from `pulih-controller enroll-agent`.
        #[arg(long)]
        token: String,
        /// CA fingerprint printed with the token.
        #[arg(long)]
        fingerprint: String,
        /// Agent name (as given to enroll-agent).
        #[arg(long)]
        name: String,
        /// State directory (key, certificates, change cache).
        #[arg(long, default_value = "/var/lib/pulih-agent")]
        state_dir: PathBuf,
        /// Configuration file to write.
        #[arg(long, default_value = "/etc/pulih/agent.toml")]
        config: PathBuf,
    },
    /// Take one snapshot of each dataset (or of one) now.
    ///
    /// Exit status: 0 when every dataset's snapshot was committed with no
    /// problems; 3 when every snapshot was committed but some entries could
    /// not be read (or were skipped, or changed while read; each is logged
    /// with its path); 1 when a dataset failed (the others are still
    /// attempted) or the configuration is invalid; 2 on a usage error.
    Snapshot {
        #[arg(long, default_value = "/etc/pulih/agent.toml")]
        config: PathBuf,
        /// Only this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// One JSON object per dataset on standard output.
        #[arg(long)]
        json: bool,
    },

    /// Run as a service: snapshot each dataset on its schedule and/or
    /// continuously as files change, until SIGTERM. SIGHUP reloads the
    /// configuration.
    Run {
        #[arg(long, default_value = "/etc/pulih/agent.toml")]
        config: PathBuf,
    },
    /// Show, per dataset, the last snapshot, the replication lag against
    /// the RPO target, the next run and the last error (from the running
    /// service's status file). Exit status 0, or 3 when the service is not
    /// running (what is shown is then its last state).
    Status {
        #[arg(long, default_value = "/etc/pulih/agent.toml")]
        config: PathBuf,
        /// Language: id (Bahasa Indonesia) or en; default from the locale.
        #[arg(long)]
        lang: Option<String>,
        /// The status file as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration and the connection to the controller
    /// (certificate, reachability, clock), explaining every problem found.
    /// Exit status 0 when all is well, 1 otherwise.
    Check {
        #[arg(long, default_value = "/etc/pulih/agent.toml")]
        config: PathBuf,
        /// Language: id (Bahasa Indonesia) or en; default from the locale.
        #[arg(long)]
        lang: Option<String>,
    },
    /// Write man pages or shell completions into DIR (deploy/install.sh runs it).
    #[command(hide = true)]
    Generate { kind: pulih_core::clidoc::DocKind, dir: PathBuf },
}

/// `snapshot`: every snapshot was committed, but some entries were not read.
const EXIT_PROBLEMS: u8 = 3;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PULIH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Reading the local UTC offset is only possible while the process has
    // one thread; the value is kept for the life of the process.
    pulih_agent::config::local_offset();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pulih_core::report::chain(e.as_ref()));
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.cmd {
        Cmd::Generate { kind, dir } => {
            for path in pulih_core::clidoc::generate(<Cli as clap::CommandFactory>::command(), kind, &dir)? {
                out!("{}", path.display());
            }
        }
        Cmd::Enroll { controller, token, fingerprint, name, state_dir, config } => {
            enroll::enroll(&controller, &token, &fingerprint, &name, &state_dir, &config)?;
            out!("Enrolled as {name}. Configuration written to {}.", config.display());
            out!("Add [[dataset]] tables to it, then run: pulih-agent snapshot --config {}", config.display());
        }
        Cmd::Snapshot { config, dataset, json } => {
            let settings = Settings::load(&config)?;
            let datasets: Vec<_> =
                settings.datasets.iter().filter(|d| dataset.as_deref().is_none_or(|n| d.name.as_str() == n)).collect();
            if datasets.is_empty() {
                match dataset {
                    Some(n) => bail!("no dataset named {n:?} in {}", config.display()),
                    None => {
                        bail!("{} defines no [[dataset]]; add one (see the comments in the file)", config.display())
                    }
                }
            }
            let tls = Arc::new(enroll::client_config(&settings)?);
            let (mut failed, mut with_problems) = (0, 0);
            let throttle = settings.bandwidth_limit.map(|b| Arc::new(pulih_agent::throttle::Throttle::new(b)));
            for ds in datasets {
                let opts = snapshot::Options { progress_bar: !json, throttle: throttle.clone(), ..Default::default() };
                match snapshot::run(&settings, ds, tls.clone(), &opts) {
                    Ok(o) => {
                        if json {
                            out!("{}", serde_json::to_string(&o)?);
                        } else {
                            out!(
                                "{}: snapshot {} — {} files, {:.1} MiB read, {:.1} MiB sent, {:.1} MiB new at the DRC, {} problem(s), {:.2} s",
                                o.dataset,
                                &o.id[..12],
                                o.files,
                                o.bytes_read as f64 / 1048576.0,
                                o.bytes_sent as f64 / 1048576.0,
                                o.bytes_new as f64 / 1048576.0,
                                o.errors,
                                o.seconds
                            );
                        }
                        if o.errors > 0 {
                            with_problems += 1;
                            eprintln!(
                                "warning: dataset {}: snapshot committed, but {} entries could not be read; see the log",
                                ds.name, o.errors
                            );
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: dataset {}: {}", ds.name, pulih_core::report::chain(e.as_ref()));
                    }
                }
            }
            if failed > 0 {
                return Ok(std::process::ExitCode::from(1));
            }
            if with_problems > 0 {
                return Ok(std::process::ExitCode::from(EXIT_PROBLEMS));
            }
        }
        Cmd::Run { config } => daemon::run(&config)?,
        Cmd::Status { config, lang, json } => {
            let settings = Settings::load(&config)?;
            let path = settings.state_dir.join(pulih_agent::status::FILE_NAME);
            let lang = Lang::detect(lang.as_deref());
            let file = match StatusFile::load(&path) {
                Ok(f) => f,
                Err(e) => {
                    let msg = match lang {
                        Lang::Id => "belum ada status: layanan pulih-agent belum pernah berjalan dengan konfigurasi ini (systemctl status pulih-agent)",
                        Lang::En => "no status yet: the pulih-agent service has not run with this configuration (systemctl status pulih-agent)",
                    };
                    bail!("{msg} [{}: {e:#}]", path.display());
                }
            };
            let alive = pulih_agent::status::pid_alive(file.pid);
            if json {
                out!("{}", serde_json::to_string_pretty(&file)?);
            } else {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                out!("{}", pulih_agent::status::render(&file, now, lang, alive));
            }
            if !alive {
                return Ok(std::process::ExitCode::from(3));
            }
        }
        Cmd::Check { config, lang } => {
            let lang = Lang::detect(lang.as_deref());
            if !check::run(&config, lang) {
                return Ok(std::process::ExitCode::from(1));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
