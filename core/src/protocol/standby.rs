//! Standby jobs: work the controller hands to an agent that runs in standby
//! role (restores for failover, drills and failback, actions, snapshots).
//!
//! The agent always connects out (agencies accept no connection in) and
//! asks for work with `JobPoll` on its normal mTLS session; the controller
//! answers `JobNone` or `JobOffer{id, spec}`. During a restore job the agent
//! fetches the snapshot's trees (`FetchTree` → `TreeData`) and chunks
//! (`FetchChunks` → one `ChunkData` per id, in order); the controller serves
//! only blobs reachable from the snapshot of the job it handed to *this*
//! agent, and refuses (and logs) anything else. `JobDone{id, ok, message,
//! detail}` → `JobAck` ends the job.
//!
//! The controller never sends a command: [`JobSpec::RunAction`] names an
//! action the agent's own sysadmin declared in `[standby.actions]`, and a
//! restore destination is a path *relative to* the agent's `[standby] root`
//! or the name of one of the agent's own datasets, resolved by the agent.
//!
//! A job spec starts with [`JOB_FORMAT_VERSION`]; an agent refuses a spec
//! version it does not know with a clear error instead of guessing.

use crate::enc::{DecodeError, Reader, Writer};
use crate::id::{SnapshotId, TreeId};

/// Version of the job spec encoding.
pub const JOB_FORMAT_VERSION: u8 = 1;

/// Longest text field of a job (names, paths, messages).
const MAX_JOB_TEXT: usize = 4096;
/// Most environment variables of an action.
pub const MAX_ACTION_ENV: usize = 64;

/// Where a restore job writes, as resolved by the agent itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A relative path below the agent's `[standby] root` (no `..`).
    BelowRoot(String),
    /// The (single) path of the agent's own dataset of this name: failback
    /// onto a rebuilt primary.
    DatasetPath(String),
}

/// One job for a standby agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobSpec {
    /// Restore `snapshot` (root tree `root`) to `destination`.
    Restore { snapshot: SnapshotId, root: TreeId, destination: Destination, only_changed: bool, delete: bool },
    /// Run the action `name` of the agent's `[standby.actions]`.
    RunAction { name: String, env: Vec<(String, String)> },
    /// Take a snapshot of the agent's dataset `dataset` now.
    SnapshotNow { dataset: String },
    /// Protect `relative_path` below the standby root as dataset `dataset`
    /// (persisted by the agent in its state directory). `mode` is
    /// `continuous` or a schedule such as `every 15m`.
    Protect { dataset: String, relative_path: String, mode: String },
    /// Stop protecting a dataset added by `Protect`.
    Unprotect { dataset: String },
    /// Re-read what a restore of `snapshot` (root tree `root`) left at
    /// `destination` and compare it with the snapshot's chunk hashes.
    Verify { snapshot: SnapshotId, root: TreeId, destination: Destination },
}

const K_RESTORE: u8 = 1;
const K_ACTION: u8 = 2;
const K_SNAPSHOT: u8 = 3;
const K_PROTECT: u8 = 4;
const K_UNPROTECT: u8 = 5;
const K_VERIFY: u8 = 6;

impl Destination {
    fn encode(&self, w: &mut Writer) {
        match self {
            Destination::BelowRoot(p) => {
                w.u8(1);
                w.str(p);
            }
            Destination::DatasetPath(d) => {
                w.u8(2);
                w.str(d);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("destination kind")? {
            1 => Destination::BelowRoot(r.str("destination", MAX_JOB_TEXT)?.to_owned()),
            2 => Destination::DatasetPath(r.str("destination dataset", MAX_JOB_TEXT)?.to_owned()),
            o => return Err(r.invalid("destination kind", format!("unknown kind {o}"))),
        })
    }
}

impl JobSpec {
    /// Short name for logs and the catalog.
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Restore { .. } => "restore",
            JobSpec::RunAction { .. } => "run-action",
            JobSpec::SnapshotNow { .. } => "snapshot-now",
            JobSpec::Protect { .. } => "protect",
            JobSpec::Unprotect { .. } => "unprotect",
            JobSpec::Verify { .. } => "verify",
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(JOB_FORMAT_VERSION);
        match self {
            JobSpec::Restore { snapshot, root, destination, only_changed, delete } => {
                w.u8(K_RESTORE);
                w.raw(snapshot.as_bytes());
                w.raw(root.as_bytes());
                destination.encode(w);
                w.u8(u8::from(*only_changed) | (u8::from(*delete) << 1));
            }
            JobSpec::RunAction { name, env } => {
                w.u8(K_ACTION);
                w.str(name);
                w.count(env.len());
                for (k, v) in env {
                    w.str(k);
                    w.str(v);
                }
            }
            JobSpec::SnapshotNow { dataset } => {
                w.u8(K_SNAPSHOT);
                w.str(dataset);
            }
            JobSpec::Protect { dataset, relative_path, mode } => {
                w.u8(K_PROTECT);
                w.str(dataset);
                w.str(relative_path);
                w.str(mode);
            }
            JobSpec::Unprotect { dataset } => {
                w.u8(K_UNPROTECT);
                w.str(dataset);
            }
            JobSpec::Verify { snapshot, root, destination } => {
                w.u8(K_VERIFY);
                w.raw(snapshot.as_bytes());
                w.raw(root.as_bytes());
                destination.encode(w);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let v = r.u8("job format version")?;
        if v != JOB_FORMAT_VERSION {
            return Err(r.invalid(
                "job format version",
                format!("{v} is not supported (this agent knows {JOB_FORMAT_VERSION}); upgrade pulih-agent"),
            ));
        }
        let text = |r: &mut Reader<'_>, what| r.str(what, MAX_JOB_TEXT).map(str::to_owned);
        Ok(match r.u8("job kind")? {
            K_RESTORE => {
                let snapshot = SnapshotId::from_bytes(r.array("snapshot id")?);
                let root = TreeId::from_bytes(r.array("root tree")?);
                let destination = Destination::decode(r)?;
                let flags = r.u8("restore flags")?;
                if flags > 3 {
                    return Err(r.invalid("restore flags", format!("unknown bits {flags:#04x}")));
                }
                JobSpec::Restore { snapshot, root, destination, only_changed: flags & 1 != 0, delete: flags & 2 != 0 }
            }
            K_ACTION => {
                let name = text(r, "action name")?;
                let n = r.count("environment count", MAX_ACTION_ENV as u32, 8)?;
                let mut env = Vec::with_capacity(n);
                for _ in 0..n {
                    env.push((text(r, "environment name")?, text(r, "environment value")?));
                }
                JobSpec::RunAction { name, env }
            }
            K_SNAPSHOT => JobSpec::SnapshotNow { dataset: text(r, "dataset")? },
            K_PROTECT => JobSpec::Protect {
                dataset: text(r, "dataset")?,
                relative_path: text(r, "relative path")?,
                mode: text(r, "mode")?,
            },
            K_UNPROTECT => JobSpec::Unprotect { dataset: text(r, "dataset")? },
            K_VERIFY => JobSpec::Verify {
                snapshot: SnapshotId::from_bytes(r.array("snapshot id")?),
                root: TreeId::from_bytes(r.array("root tree")?),
                destination: Destination::decode(r)?,
            },
            o => return Err(r.invalid("job kind", format!("unknown kind {o}; upgrade pulih-agent"))),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_spec() -> impl Strategy<Value = JobSpec> {
        let text = "[a-zA-Z0-9_./ -]{0,40}";
        prop_oneof![
            (any::<[u8; 32]>(), any::<[u8; 32]>(), text, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(s, t, p, ds, only_changed, delete)| JobSpec::Restore {
                    snapshot: SnapshotId::from_bytes(s),
                    root: TreeId::from_bytes(t),
                    destination: if ds { Destination::DatasetPath(p) } else { Destination::BelowRoot(p) },
                    only_changed,
                    delete,
                }
            ),
            (text, proptest::collection::vec((text, text), 0..5))
                .prop_map(|(name, env)| JobSpec::RunAction { name, env }),
            text.prop_map(|dataset| JobSpec::SnapshotNow { dataset }),
            (text, text, text).prop_map(|(dataset, relative_path, mode)| JobSpec::Protect {
                dataset,
                relative_path,
                mode
            }),
            text.prop_map(|dataset| JobSpec::Unprotect { dataset }),
            (any::<[u8; 32]>(), any::<[u8; 32]>(), text, any::<bool>()).prop_map(|(s, t, p, ds)| JobSpec::Verify {
                snapshot: SnapshotId::from_bytes(s),
                root: TreeId::from_bytes(t),
                destination: if ds { Destination::DatasetPath(p) } else { Destination::BelowRoot(p) },
            }),
        ]
    }

    proptest! {
        /// Every job spec decodes to itself.
        #[test]
        fn job_specs_round_trip(spec in arb_spec()) {
            let mut w = Writer::new();
            spec.encode(&mut w);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(JobSpec::decode(&mut r).unwrap(), spec);
            r.finish("job").unwrap();
        }

        /// Random bytes are an error, never a panic.
        #[test]
        fn random_job_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = JobSpec::decode(&mut Reader::new(&bytes));
        }
    }

    #[test]
    fn unknown_version_is_refused_clearly() {
        let err = JobSpec::decode(&mut Reader::new(&[9, 1])).unwrap_err();
        assert!(err.to_string().contains("upgrade pulih-agent"), "{err}");
    }
}
