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
//! shows), [`systemd`] (notifications) and [`units`] (durations and sizes
//! in the configuration).

pub mod cache;
pub mod config;
pub mod conn;
pub mod enroll;
pub mod hooks;
pub mod metrics;
pub mod scan;
pub mod schedule;
pub mod snapshot;
pub mod status;
pub mod systemd;
pub mod throttle;
pub mod units;
pub mod upload;
