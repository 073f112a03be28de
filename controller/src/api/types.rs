//! Request and response bodies of the HTTP API, shared by the server and
//! `pulihctl` so both sides agree by construction. Every request type
//! refuses unknown fields.

use serde::{Deserialize, Serialize};

pub use crate::catalog::{AgentOverview, ApiTokenRow, AuditRow, AuditVerify, DatasetOverview, Role, SnapshotRow};
pub use crate::restore::RestoreStats;

/// Every error: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `too_large`, `invalid`, `rate_limited`, `internal`.
    pub code: String,
    /// For a person.
    pub message: String,
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentsResponse {
    /// Server time the lags were measured at, Unix seconds.
    pub now: i64,
    pub agents: Vec<AgentOverview>,
}

/// `POST /api/v1/agents/{name}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeAgentResponse {
    pub agent: String,
    pub certificates_revoked: usize,
}

/// `POST /api/v1/enroll-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollTokenRequest {
    /// Name the agent will enroll under.
    pub agent: String,
    /// Hours the token stays valid (default: `[enroll] token_ttl_hours`).
    #[serde(default)]
    pub ttl_hours: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollTokenResponse {
    pub agent: String,
    /// Shown once; only its hash is stored.
    pub token: String,
    /// Fingerprint of the controller's CA, to pin at enrollment.
    pub fingerprint: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Query of `GET /api/v1/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    pub agent: Option<String>,
    pub dataset: Option<String>,
}

/// `GET /api/v1/snapshots/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotDetail {
    #[serde(flatten)]
    pub snapshot: SnapshotRow,
    /// Source paths of the dataset (lossy UTF-8).
    pub paths: Vec<String>,
    /// Problems the agent met, as listed in the record.
    pub problems: Vec<SnapshotProblem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotProblem {
    pub path: String,
    pub message: String,
}

/// `POST /api/v1/verify`: name snapshots, or `all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[serde(default)]
    pub snapshots: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

/// `POST /api/v1/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Snapshot id or unique prefix (at least 4 hex digits).
    pub snapshot: String,
    /// Directory relative to the controller's restore root (`[restore]
    /// root`, default `<data dir>/restores`): no absolute path, no `..`, no
    /// symbolic link on the way; it must not exist or be empty, unless
    /// `only_changed`.
    pub target: String,
    /// Restore only this path of the snapshot (as on the source host).
    #[serde(default)]
    pub path: Option<String>,
    /// Delta restore: write only the files whose content differs from the snapshot.
    #[serde(default)]
    pub only_changed: bool,
    /// With `only_changed`: remove what the snapshot does not have.
    #[serde(default)]
    pub delete: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreResponse {
    pub snapshot: String,
    /// The target as given (relative to the restore root).
    pub target: String,
    /// Where the data now is on the DRC host.
    #[serde(default)]
    pub path: String,
    pub stats: RestoreStats,
    pub seconds: f64,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    pub role: Role,
    /// Days until the token expires; none: it does not expire.
    #[serde(default)]
    pub expires_days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTokenResponse {
    /// Shown once; only its hash is stored.
    pub token: String,
    #[serde(flatten)]
    pub info: ApiTokenRow,
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Rows after this sequence number (default 0).
    pub after_seq: Option<i64>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// `POST /api/v1/verify`: what was checked and every damaged reference.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyResult {
    pub snapshots: u64,
    pub trees_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damage: Vec<DamageRow>,
}

/// One damaged blob as seen from one path of one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamageRow {
    pub snapshot: String,
    pub path: String,
    /// `chunk` or `tree`.
    pub kind: String,
    pub id: String,
    pub reason: String,
}

impl From<crate::verify::VerifyReport> for VerifyResult {
    fn from(r: crate::verify::VerifyReport) -> Self {
        Self {
            snapshots: r.snapshots,
            trees_checked: r.trees_checked,
            chunks_checked: r.chunks_checked,
            bytes_checked: r.bytes_checked,
            damage: r
                .damage
                .into_iter()
                .map(|d| DamageRow {
                    snapshot: d.snapshot,
                    path: d.path,
                    kind: d.kind.into(),
                    id: d.id,
                    reason: d.reason,
                })
                .collect(),
        }
    }
}

pub use crate::catalog::{DamageRow as DamagedBlob, ScrubRunRow};
pub use crate::gc::GcReport;
pub use crate::lifecycle::PruneOutcome;
pub use crate::scrub::ScrubNow;

/// `POST /api/v1/prune`: apply the `[[retention]]` policies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Only show the plan: which snapshots would go, and why.
    #[serde(default)]
    pub dry_run: bool,
    /// Only this agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// Only this dataset.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Collect garbage afterwards (default: no; `POST /api/v1/gc` does it separately).
    #[serde(default)]
    pub gc: bool,
}

/// `POST /api/v1/snapshots/{id}/forget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgetResponse {
    /// The snapshot forgotten (its data stays until garbage collection).
    pub forgotten: Vec<SnapshotRow>,
}

/// `POST /api/v1/scrub`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubRequest {
    /// Most bytes read per second, e.g. "50MiB" ("0": unlimited; default `[scrub] rate`).
    #[serde(default)]
    pub rate: Option<String>,
}

/// `GET /api/v1/scrub` (and the answer to `POST`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// The scrub running in the controller now, with its progress.
    pub current: Option<ScrubNow>,
    /// The latest runs, newest first (a running one has `outcome` `running`).
    pub runs: Vec<ScrubRunRow>,
}

/// `GET /api/v1/damage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamageResponse {
    /// Blobs scrub found damaged, newest first, with their state
    /// (`damaged`, `repaired`, `lost`).
    pub blobs: Vec<DamagedBlob>,
    /// Snapshots that reach a damaged or lost blob.
    pub snapshots: Vec<SnapshotRow>,
}

/// `POST /api/v1/drp/generate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrpGenerateRequest {
    /// `id` (default) or `en`.
    #[serde(default)]
    pub lang: Option<String>,
    /// `pdf` (default), `html` or `md`.
    #[serde(default)]
    pub format: Option<String>,
    /// `plan` (default), `integrity` (report) or `drill` (report).
    #[serde(default)]
    pub kind: Option<String>,
    /// The drill of a drill report.
    #[serde(default)]
    pub drill: Option<String>,
}

/// `POST /api/v1/drp/versions/{version}/approve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrpApproveRequest {
    /// Name of the official who approved the plan.
    pub name: String,
    /// Their position.
    pub position: String,
}

/// `GET /api/v1/drp/versions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrpVersionsResponse {
    /// Newest first.
    pub versions: Vec<crate::catalog::DrpVersionRow>,
    /// The approved version in force.
    pub in_force: Option<crate::catalog::DrpVersionRow>,
}
