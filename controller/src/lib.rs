//! pulih-controller: the Disaster Recovery Centre side of Pulih.
//!
//! The controller receives snapshots from agents over mutual TLS
//! ([`server`], [`session`]), verifies every byte before storing it in a
//! content-addressed [`store`], records what is durable and committed in the
//! [`catalog`], and restores ([`restore`]) and verifies ([`verify`]) what it
//! holds. Its CA ([`pki`]) enrolls agents. Coordinators, auditors and
//! admins work over the HTTPS [`api`] (`pulihctl`); every state change goes
//! to the hash-chained audit log ([`catalog`]); [`metrics`] feeds Prometheus.

pub mod api;
pub mod catalog;
pub mod compact;
pub mod config;
pub mod datadir;
pub mod drill;
pub mod drp;
pub mod failover;
pub mod framed;
pub mod gc;
pub mod lifecycle;
pub mod listen;
pub mod metrics;
pub mod pack;
pub mod pki;
pub mod reader;
pub mod rebuild;
pub mod restore;
pub mod retention;
pub mod scrub;
pub mod server;
pub mod session;
pub mod standby;
pub mod stop;
pub mod store;
pub mod systems;
pub mod units;
pub mod verify;
pub mod witness;
