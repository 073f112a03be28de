//! The view model of the DR plan: everything the document states, as plain
//! serializable data. Templates read only this ([`PlanData`]); nothing in a
//! template queries the catalog. [`PlanData::gather`](super::gather) fills
//! it from the catalog, `organisation.toml` and the systems and drills
//! (issue 5) given as [`SystemsInput`]; tests fill it from JSON fixtures.
//!
//! Times are Unix seconds (UTC); durations are seconds; templates format
//! them with the `date`, `datetime` and `dur` filters of the language.

use serde::{Deserialize, Serialize};

use super::findings::Finding;
use super::organisation::Organisation;

/// Document control of one generated version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocControl {
    /// Document number, `PREFIX/VERSION/YEAR`.
    pub number: String,
    /// Version in the catalog (1, 2, ...).
    pub version: i64,
    /// `id` or `en`.
    pub lang: String,
    pub generated_at: i64,
    /// Time of the newest catalog fact the plan reflects.
    pub data_as_of: i64,
    /// `pulih-controller X.Y.Z`.
    pub generator_version: String,
    /// Who generated it (`token:NAME`, `local:USER`).
    pub generated_by: String,
    /// `plan`, `integrity` (report) or `drill` (report): which template.
    #[serde(default = "default_doc_kind")]
    pub kind: String,
    /// Whether this document is recorded as a version (`drp generate`);
    /// `false` for a drill report shown on request, which has no number.
    #[serde(default = "recorded")]
    pub recorded: bool,
    /// The drill a drill report is about.
    #[serde(default)]
    pub subject: Option<String>,
}

fn default_doc_kind() -> String {
    "plan".into()
}

fn recorded() -> bool {
    true
}

/// The approved version in force (the latest approval recorded).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalFacts {
    pub version: i64,
    pub number: String,
    pub approved_by: String,
    pub approved_position: String,
    pub approved_at: i64,
    pub next_review: i64,
}

/// A previously generated version (record of changes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionFacts {
    pub version: i64,
    pub number: String,
    pub lang: String,
    pub format: String,
    pub generated_at: i64,
    pub content_blake3: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
    /// `plan`, `integrity` or `drill`.
    #[serde(default = "default_doc_kind")]
    pub kind: String,
    /// The drill a drill report is about.
    #[serde(default)]
    pub subject: Option<String>,
    /// blake3 of the generated file.
    #[serde(default)]
    pub file_blake3: Option<String>,
}

/// Person responsible for a system (penanggung jawab sistem, Pasal 19 ayat 3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub position: String,
    pub contact: String,
}

/// Data classes of Pasal 8 ayat (3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Data pokok: kept in the data centre run by Diskominfo (ayat 4).
    Pokok,
    /// Data transaksional: managed by the OPD (ayat 5).
    Transaksional,
}

/// Where a system runs now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Site {
    #[default]
    Primary,
    Drc,
}

/// One dataset of a system, with what the catalog knows of it. Issue 5
/// fills `agent` and `dataset`; [`PlanData::gather`] fills the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatasetFacts {
    pub agent: String,
    pub dataset: String,
    /// RPO target the agent reported, seconds.
    #[serde(default)]
    pub rpo_target_secs: Option<i64>,
    /// Schedule the agent reported ("continuous", "every 1h", ...).
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub snapshots: u64,
    /// End of the newest snapshot.
    #[serde(default)]
    pub last_snapshot_at: Option<i64>,
    /// Id of the newest snapshot.
    #[serde(default)]
    pub last_snapshot_id: Option<String>,
    /// Bytes of the newest snapshot.
    #[serde(default)]
    pub last_snapshot_bytes: Option<u64>,
    /// Seconds from the newest snapshot to the data-as-of time.
    #[serde(default)]
    pub lag_secs: Option<i64>,
    /// Snapshots marked damaged by scrub.
    #[serde(default)]
    pub damaged_snapshots: u64,
    /// Whether the catalog knows this dataset at all.
    #[serde(default)]
    pub known: bool,
}

/// A step of a runbook: what a person does, and the command if there is one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunbookStep {
    pub text: String,
    #[serde(default)]
    pub command: Option<String>,
    /// Expected seconds (from drills), when known.
    #[serde(default)]
    pub expected_secs: Option<i64>,
}

/// Restore of one dataset into a target directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreTarget {
    pub agent: String,
    pub dataset: String,
    /// Absolute directory on the DRC host.
    pub target: String,
}

/// A health check run after restore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthCheck {
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub timeout_secs: Option<i64>,
    /// What success looks like, for people.
    #[serde(default)]
    pub expect: Option<String>,
}

/// How a system is brought up at the DRC and taken down again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Runbook {
    #[serde(default)]
    pub restore: Vec<RestoreTarget>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    /// Bringing the restored system into service (DNS, services, notices).
    #[serde(default)]
    pub activation: Vec<RunbookStep>,
    /// Taking it out of service again (failback, cleanup).
    #[serde(default)]
    pub teardown: Vec<RunbookStep>,
}

/// A protected system as issue 5 defines it (plain data; the lead maps
/// issue 5's types onto this at merge).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SystemFacts {
    /// Key, e.g. `simpeg`.
    pub name: String,
    /// Title for people, e.g. "Sistem Informasi Kepegawaian".
    pub title: String,
    /// Code of the agency (OPD) that owns it; see `organisation.toml`.
    pub opd: String,
    /// Penanggung jawab sistem; `None` is a finding.
    #[serde(default)]
    pub owner: Option<Owner>,
    pub data_class: DataClass,
    /// 1 = most critical.
    pub tier: u8,
    /// Systems that must be running before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub rpo_target_secs: Option<i64>,
    #[serde(default)]
    pub rto_target_secs: Option<i64>,
    #[serde(default)]
    pub datasets: Vec<DatasetFacts>,
    #[serde(default)]
    pub runbook: Runbook,
    /// How often it must be drilled, seconds (`None`: yearly).
    #[serde(default)]
    pub drill_every_secs: Option<i64>,
    #[serde(default)]
    pub running_at: Site,
    /// Alternate procedures (`[[alternative]]` of the definition); empty
    /// means the system declares none, and the plan says so.
    #[serde(default)]
    pub alternatives: Vec<AlternativeFacts>,
}

/// An alternate procedure of a system (documentation, never run).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlternativeFacts {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub command: Option<String>,
}

/// Outcome of a drill.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DrillOutcome {
    Passed,
    Failed,
    Partial,
}

/// A health check as run in a drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    #[serde(default)]
    pub expected: String,
    #[serde(default)]
    pub actual: String,
    pub passed: bool,
}

/// A drill (sandbox restore or full failover) of one system.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillFacts {
    pub id: String,
    pub system: String,
    /// `sandbox` or `failover`.
    #[serde(default = "default_kind")]
    pub kind: String,
    pub started_at: i64,
    #[serde(default)]
    pub ended_at: Option<i64>,
    pub outcome: DrillOutcome,
    #[serde(default)]
    pub rto_achieved_secs: Option<i64>,
    #[serde(default)]
    pub rpo_achieved_secs: Option<i64>,
    /// Why it failed or was partial.
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// Who ran it.
    #[serde(default)]
    pub operator: Option<String>,
    /// blake3 of the drill's stored record, the evidence an auditor checks.
    #[serde(default)]
    pub record_blake3: Option<String>,
    /// The drill's own log, filled only for the drill report of this drill
    /// ([`super::live::drill_detail`]); `None` in the plan.
    #[serde(default)]
    pub detail: Option<DrillDetail>,
}

/// What a drill recorded for one system, for its report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillDetail {
    /// The system as the drill recorded it (its definition may change later).
    pub title: String,
    pub opd: String,
    #[serde(default)]
    pub owner: Option<String>,
    pub rto_target_secs: i64,
    pub rpo_target_secs: i64,
    /// This system's outcome as recorded (`running` while the drill runs).
    pub outcome: String,
    /// `manual` or `scheduled`.
    pub trigger: String,
    /// Verdict of the whole drill run (all its systems).
    pub run_outcome: String,
    /// Where it was restored (sandbox, standby agent).
    pub restore_place: String,
    pub files_restored: u64,
    pub bytes_restored: u64,
    /// What verification said.
    #[serde(default)]
    pub verify_result: Option<String>,
    /// RTO achieved, seconds with fractions (the plan rounds).
    #[serde(default)]
    pub rto_achieved: Option<f64>,
    #[serde(default)]
    pub rpo_achieved: Option<f64>,
    pub snapshots: Vec<DrillSnapshot>,
    /// The timestamped activity log.
    pub steps: Vec<DrillStep>,
}

/// A snapshot a drill restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrillSnapshot {
    pub agent: String,
    pub dataset: String,
    pub subdir: String,
    pub snapshot: String,
    /// Time of the data (start of the snapshot), Unix seconds.
    pub data_at: i64,
}

/// One step of a drill (restore, verify, check, activation, teardown).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillStep {
    pub seq: i64,
    /// `restore`, `verify`, `check`, `activation` or `teardown`.
    pub kind: String,
    pub name: String,
    pub started_at: i64,
    #[serde(default)]
    pub duration_secs: Option<f64>,
    /// `passed`, `failed`, `skipped`, `running`.
    pub outcome: String,
    /// Output of checks and verification (kept for the report).
    #[serde(default)]
    pub output: String,
}

/// A failover or failback of a system (Lampiran O, Bab VII.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SwitchFacts {
    /// `failover-N` / `failback-N`.
    pub id: String,
    pub system: String,
    /// `failover` or `failback`.
    pub kind: String,
    pub started_at: i64,
    #[serde(default)]
    pub ended_at: Option<i64>,
    /// `succeeded`, `failed`, ...
    pub outcome: String,
    #[serde(default)]
    pub actor: Option<String>,
    /// blake3 of the stored record.
    #[serde(default)]
    pub record_blake3: Option<String>,
}

fn default_kind() -> String {
    "sandbox".into()
}

/// What issue 5 hands to [`PlanData::gather`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SystemsInput {
    pub systems: Vec<SystemFacts>,
    pub drills: Vec<DrillFacts>,
    /// Every failover and failback (evidence).
    #[serde(default)]
    pub switches: Vec<SwitchFacts>,
}

/// An enrolled agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentFacts {
    pub name: String,
    pub status: String,
    pub last_seen_at: Option<i64>,
    pub cert_not_after: Option<i64>,
    pub datasets: Vec<DatasetFacts>,
}

/// The store and where it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageFacts {
    pub chunks: u64,
    pub trees: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Sum of the sizes of all snapshots.
    pub logical_bytes: u64,
    pub snapshots: u64,
    /// logical / stored, rounded to 0.1 (0 when the store is empty).
    pub dedup_ratio: f64,
    pub country: String,
    pub city: String,
    pub site: String,
    pub operator: String,
    /// Declared in Indonesia (Pasal 16 ayat 5).
    pub in_indonesia: bool,
}

/// A scrub run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScrubFacts {
    pub id: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `running`, `ok`, `damage` or `failed`.
    pub outcome: String,
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub damaged_found: u64,
    /// blake3 of the scrub's catalog record (Lampiran O).
    #[serde(default)]
    pub record_blake3: Option<String>,
}

/// Damage found by scrub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DamageFacts {
    /// Blobs still damaged (an agent may resend them).
    pub damaged: u64,
    /// Blobs no agent can resend.
    pub lost: u64,
    pub repaired: u64,
    /// Snapshots that reach a damaged blob.
    pub damaged_snapshots: u64,
}

/// The audit chain as verified when the plan was gathered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditFacts {
    pub ok: bool,
    pub rows: u64,
    pub head_seq: i64,
    /// Hash of the head row: pins the log as of this plan.
    pub head_hash: String,
    pub problem: Option<String>,
}

/// Everything the plan states.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanData {
    pub control: DocControl,
    pub organisation: Organisation,
    /// Name of the controller (the DRC).
    pub controller_name: String,
    /// Systems, in recovery order (dependencies first, then tier).
    pub systems: Vec<SystemFacts>,
    pub drills: Vec<DrillFacts>,
    pub agents: Vec<AgentFacts>,
    /// Datasets in the catalog that belong to no system (not covered).
    pub unassigned: Vec<DatasetFacts>,
    pub storage: StorageFacts,
    /// Newest first.
    pub scrubs: Vec<ScrubFacts>,
    pub damage: DamageFacts,
    pub audit: AuditFacts,
    pub in_force: Option<ApprovalFacts>,
    /// Earlier versions, newest first.
    pub history: Vec<VersionFacts>,
    /// Failovers and failbacks, newest first.
    #[serde(default)]
    pub switches: Vec<SwitchFacts>,
    /// Drill and integrity reports generated (after-action reports), newest first.
    #[serde(default)]
    pub reports: Vec<VersionFacts>,
    /// Gaps, most severe first (computed by [`super::findings::compute`]).
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// What changed since the previous version ([`super::changes::since`]).
    #[serde(default)]
    pub changes: Vec<super::changes::ChangeFacts>,
}

impl PlanData {
    /// The drills of a system, newest first.
    pub fn drills_of<'a>(&'a self, system: &'a str) -> impl Iterator<Item = &'a DrillFacts> + 'a {
        let mut v: Vec<&DrillFacts> = self.drills.iter().filter(|d| d.system == system).collect();
        v.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
        v.into_iter()
    }
}
