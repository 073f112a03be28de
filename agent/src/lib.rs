//! pulih-agent: snapshots the data of a primary server and replicates it to
//! the Pulih controller at the Disaster Recovery Centre.
//!
//! [`config`] reads `agent.toml`; [`enroll`] obtains the agent's
//! certificate; [`snapshot`] runs one snapshot through the [`scan`]
//! pipeline and the [`upload`]er over a [`conn`]ection, using the change
//! [`cache`] to skip unchanged files.
//!
//! Building blocks of the daemon (`pulih-agent run`): [`schedule`] (when),
//! [`hooks`] (pre/post commands), [`throttle`] (bandwidth limit),
//! [`metrics`] (Prometheus endpoint), [`status`] (what `pulih-agent status`
//! shows), [`systemd`] (notifications) and `pulih_core::units` (durations and sizes
//! in the configuration); [`daemon`] runs them, [`watch`] feeds continuous
//! mode, [`repair`] resends chunks the DRC found damaged, [`check`]
//! diagnoses a configuration, [`standby`] runs the jobs of the standby role
//! (restores, actions, protection after a failover).

pub mod cache;
pub mod check;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod enroll;
// Commands with timeouts now live in pulih-core (the controller runs drill checks with them too).
pub use pulih_core::hooks;
pub mod metrics;
pub mod repair;
pub mod scan;
pub mod schedule;
pub mod snapshot;
pub mod standby;
pub mod status;
pub mod systemd;
pub mod throttle;
pub mod upload;
pub mod watch;

/// Prints a line on standard output, ignoring a closed pipe.
pub(crate) fn out_line(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{s}");
}
