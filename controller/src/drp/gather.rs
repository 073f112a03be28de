//! Filling [`PlanData`] from what exists: the catalog (agents, datasets,
//! targets, lag, snapshots, scrubs, damage, audit chain, store totals,
//! plan versions), `organisation.toml`, and the systems and drills of
//! issue 5 handed in as [`SystemsInput`].

use std::collections::BTreeSet;

use super::findings;
use super::model::*;
use super::organisation::Organisation;
use crate::catalog::{Catalog, CatalogError};

/// Generated reports listed as evidence (Lampiran O), newest first.
const REPORTS_LISTED: usize = 50;

/// What the generator writes as its version.
pub fn generator_version() -> String {
    format!("pulih-controller {}", env!("CARGO_PKG_VERSION"))
}

/// Document number of a version: `PREFIX/VERSION/YEAR` for a plan,
/// `PREFIX/INTEGRITAS/VERSION/YEAR` and `PREFIX/UJI/VERSION/YEAR` for the
/// integrity and drill reports (year in local time).
pub fn document_number(org: &Organisation, kind: &str, version: i64, at: i64) -> String {
    let year = time::OffsetDateTime::from_unix_timestamp(at + i64::from(org.document.utc_offset_secs))
        .map_or(1970, |t| t.year());
    let infix = match kind {
        "integrity" => "INTEGRITAS/",
        "drill" => "UJI/",
        _ => "",
    };
    format!("{}/{infix}{version}/{year}", org.document.number_prefix)
}

impl PlanData {
    /// Gathers the plan as of `now` (Unix seconds). `version` is the
    /// number this document will carry; `lang` is `id` or `en`.
    pub fn gather(
        catalog: &Catalog,
        org: &Organisation,
        input: SystemsInput,
        now: i64,
        version: i64,
        lang: &str,
        generated_by: &str,
    ) -> Result<PlanData, CatalogError> {
        let overview = catalog.agent_overview(now)?;
        let latest = catalog.latest_snapshots()?;
        let facts_of = |agent: &str, dataset: &str| -> DatasetFacts {
            let d =
                overview.iter().find(|a| a.name == agent).and_then(|a| a.datasets.iter().find(|d| d.name == dataset));
            let l = latest.iter().find(|l| l.agent == agent && l.dataset == dataset);
            DatasetFacts {
                agent: agent.into(),
                dataset: dataset.into(),
                rpo_target_secs: d.and_then(|d| d.rpo_target_secs),
                schedule: d.and_then(|d| d.schedule.clone()),
                snapshots: d.map_or(0, |d| d.snapshots),
                last_snapshot_at: d.and_then(|d| d.last_snapshot_ns).map(|ns| ns.div_euclid(1_000_000_000)),
                last_snapshot_id: l.map(|l| l.id.clone()),
                last_snapshot_bytes: l.map(|l| l.bytes),
                lag_secs: d.and_then(|d| d.lag_secs),
                damaged_snapshots: l.map_or(0, |l| l.damaged),
                known: d.is_some(),
            }
        };
        let agents: Vec<AgentFacts> = overview
            .iter()
            .map(|a| AgentFacts {
                name: a.name.clone(),
                status: a.status.clone(),
                last_seen_at: a.last_seen_at,
                cert_not_after: a.cert_not_after,
                datasets: a.datasets.iter().map(|d| facts_of(&a.name, &d.name)).collect(),
            })
            .collect();
        let mut systems = input.systems;
        let mut covered = BTreeSet::new();
        for s in &mut systems {
            for d in &mut s.datasets {
                covered.insert((d.agent.clone(), d.dataset.clone()));
                *d = facts_of(&d.agent, &d.dataset);
            }
        }
        let unassigned = agents
            .iter()
            .filter(|a| a.status == "active")
            .flat_map(|a| a.datasets.iter())
            .filter(|d| !covered.contains(&(d.agent.clone(), d.dataset.clone())))
            .cloned()
            .collect();
        let (order, _, _) = findings::recovery_order(&systems);
        systems.sort_by_key(|s| order.iter().position(|n| *n == s.name));
        let totals = catalog.store_totals()?;
        let ratio = if totals.stored_bytes == 0 {
            0.0
        } else {
            (totals.logical_bytes as f64 / totals.stored_bytes as f64 * 10.0).round() / 10.0
        };
        let st = &org.storage;
        let storage = StorageFacts {
            chunks: totals.chunks,
            trees: totals.trees,
            raw_bytes: totals.raw_bytes,
            stored_bytes: totals.stored_bytes,
            logical_bytes: totals.logical_bytes,
            snapshots: totals.snapshots,
            dedup_ratio: ratio,
            country: st.country.clone(),
            city: st.city.clone(),
            site: st.site.clone(),
            operator: st.operator.clone(),
            in_indonesia: st.in_indonesia(),
        };
        let scrubs = catalog
            .scrub_runs(10)?
            .into_iter()
            .map(|r| ScrubFacts {
                record_blake3: Some(blake3::hash(&serde_json::to_vec(&r).unwrap_or_default()).to_hex().to_string()),
                id: r.id,
                started_at: r.started_at,
                finished_at: r.finished_at,
                outcome: r.outcome,
                blobs_checked: r.blobs_checked,
                bytes_checked: r.bytes_checked,
                damaged_found: r.damaged_found,
            })
            .collect();
        let (damaged, lost, repaired) = catalog.damage_counts()?;
        let damage =
            DamageFacts { damaged, lost, repaired, damaged_snapshots: catalog.damaged_snapshots()?.len() as u64 };
        let av = catalog.audit_verify()?;
        let audit = AuditFacts {
            ok: av.ok,
            rows: av.rows,
            head_seq: av.head_seq,
            head_hash: catalog.meta_get("audit_head_hash")?.unwrap_or_else(|| crate::catalog::AUDIT_GENESIS.into()),
            problem: av.problem,
        };
        let in_force = catalog.drp_in_force()?.and_then(|v| {
            Some(ApprovalFacts {
                version: v.version,
                number: v.number,
                approved_by: v.approved_by?,
                approved_position: v.approved_position.unwrap_or_default(),
                approved_at: v.approved_at?,
                next_review: v.next_review?,
            })
        });
        let facts = |v: crate::catalog::DrpVersionRow| VersionFacts {
            version: v.version,
            number: v.number,
            lang: v.lang,
            format: v.format,
            generated_at: v.generated_at,
            content_blake3: v.content_blake3,
            approved_by: v.approved_by,
            approved_at: v.approved_at,
            kind: v.kind,
            subject: v.subject,
            file_blake3: Some(v.file_blake3),
        };
        let versions = catalog.drp_versions()?;
        let history = versions.iter().filter(|v| v.kind == "plan").take(20).cloned().map(facts).collect();
        // After-action reports (drill and integrity reports) for Lampiran O.
        let reports = versions.into_iter().filter(|v| v.kind != "plan").take(REPORTS_LISTED).map(facts).collect();
        let mut switches = input.switches;
        switches.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
        let controller_name = catalog.meta_get("controller_name")?.unwrap_or_else(|| "drc".into());
        let mut plan = PlanData {
            control: DocControl {
                number: document_number(org, "plan", version, now),
                version,
                lang: lang.into(),
                generated_at: now,
                data_as_of: now,
                generator_version: generator_version(),
                generated_by: generated_by.into(),
                kind: "plan".into(),
                subject: None,
                recorded: true,
            },
            organisation: org.clone(),
            controller_name,
            systems,
            drills: input.drills,
            agents,
            unassigned,
            storage,
            scrubs,
            damage,
            audit,
            in_force,
            history,
            switches,
            reports,
            findings: Vec::new(),
            changes: Vec::new(),
        };
        plan.findings = findings::compute(&plan);
        Ok(plan)
    }
}
