//! The plan's systems and drills from what is live: the system definitions
//! (`[systems] dir`, [`crate::systems`]) and the catalog's drill, failover
//! and system-state records. This is what [`super::DrpSettings::systems_input`]
//! feeds the plan unless `[drp] systems` names a fixed JSON file (fixtures).

use crate::catalog::{Catalog, CatalogError, DrillSystemRow};
use crate::systems::{CheckKind, RestorePlace, StepRun, System, Systems};

use super::model::{
    AlternativeFacts, CheckResult, DataClass, DatasetFacts, DrillDetail, DrillFacts, DrillOutcome, DrillSnapshot,
    DrillStep, HealthCheck, Owner, RestoreTarget, Runbook, RunbookStep, Site, SwitchFacts, SystemFacts, SystemsInput,
};

/// Drill runs read back for the plan (newest first).
const DRILLS_READ: u32 = 200;

fn hook_text(h: &pulih_core::hooks::Hook) -> String {
    match h {
        pulih_core::hooks::Hook::Shell(s) => s.clone(),
        pulih_core::hooks::Hook::Argv(v) => v.join(" "),
    }
}

fn dataset(agent: &str, dataset: &str) -> DatasetFacts {
    // Only agent and dataset are ours to fill; `PlanData::gather` adds the
    // catalog's facts. Through serde so new optional fields need no edit here.
    serde_json::from_value(serde_json::json!({ "agent": agent, "dataset": dataset }))
        .expect("agent and dataset are all a DatasetFacts needs")
}

fn facts(sys: &System, cat: &Catalog) -> Result<SystemFacts, CatalogError> {
    let restore = sys
        .datasets
        .iter()
        .map(|d| RestoreTarget {
            agent: d.agent.to_string(),
            dataset: d.dataset.to_string(),
            target: match &sys.restore {
                RestorePlace::Sandbox => format!("sandbox DRC: <data dir>/sandbox/<drill>/{}/{}", sys.name, d.subdir),
                RestorePlace::Standby { agent, path } => {
                    format!("{agent}: <standby root>/{}/{}", path.display(), d.subdir)
                }
            },
        })
        .collect();
    let health_checks = sys
        .health_checks
        .iter()
        .map(|c| {
            let (command, expect) = match &c.kind {
                CheckKind::Command(h) => (hook_text(h), Some("exit 0".to_string())),
                CheckKind::Http { url, expect_status, expect_body } => (
                    format!("GET {url}"),
                    Some(match expect_body {
                        Some(b) => format!("HTTP {expect_status}, body contains {b:?}"),
                        None => format!("HTTP {expect_status}"),
                    }),
                ),
                CheckKind::AgentAction(a) => (format!("agent action {a}"), Some("exit 0".to_string())),
            };
            HealthCheck { name: c.name.clone(), command, timeout_secs: Some(c.timeout.as_secs() as i64), expect }
        })
        .collect();
    let steps = |list: &[crate::systems::Step]| {
        list.iter()
            .map(|s| RunbookStep {
                text: s.name.clone(),
                command: Some(match &s.run {
                    StepRun::Command(h) => hook_text(h),
                    StepRun::AgentAction(a) => format!("agent action {a}"),
                }),
                expected_secs: None,
            })
            .collect()
    };
    let primaries: Vec<&str> = sys.datasets.iter().map(|d| d.agent.as_str()).collect();
    let running_at = match cat.system_state(sys.name.as_str())? {
        Some(st) if !primaries.contains(&st.running_at.as_str()) => Site::Drc,
        _ => Site::Primary,
    };
    Ok(SystemFacts {
        name: sys.name.to_string(),
        title: sys.title.clone(),
        opd: sys.opd.clone(),
        owner: sys.owner.as_ref().map(|o| Owner {
            name: o.name.clone(),
            position: o.position.clone().unwrap_or_default(),
            contact: o.contact.clone().unwrap_or_default(),
        }),
        data_class: match sys.data_class {
            crate::systems::DataClass::Pokok => DataClass::Pokok,
            crate::systems::DataClass::Transaksional => DataClass::Transaksional,
        },
        tier: sys.tier,
        depends_on: sys.depends_on.iter().map(|d| d.to_string()).collect(),
        rpo_target_secs: Some(sys.rpo_target.as_secs() as i64),
        rto_target_secs: Some(sys.rto_target.as_secs() as i64),
        datasets: sys.datasets.iter().map(|d| dataset(d.agent.as_str(), d.dataset.as_str())).collect(),
        runbook: Runbook { restore, health_checks, activation: steps(&sys.activation), teardown: steps(&sys.teardown) },
        drill_every_secs: sys.drill_every.map(|d| d.as_secs() as i64),
        running_at,
        alternatives: sys
            .alternatives
            .iter()
            .map(|a| AlternativeFacts {
                name: a.name.clone(),
                description: a.description.clone(),
                command: a.command.clone(),
            })
            .collect(),
    })
}

fn drill_facts(cat: &Catalog, row: &DrillSystemRow, actor: &str, started_ns: i64) -> Result<DrillFacts, CatalogError> {
    let checks = cat
        .drill_steps(row.drill_id)?
        .into_iter()
        .filter(|s| s.system == row.system && s.kind == "check")
        .map(|s| CheckResult {
            name: s.name,
            expected: "passes".into(),
            actual: s.output.lines().last().unwrap_or("").chars().take(200).collect(),
            passed: s.outcome == "passed",
        })
        .collect();
    let record = serde_json::to_vec(row).unwrap_or_default();
    Ok(DrillFacts {
        id: row.drill_id.to_string(),
        system: row.system.clone(),
        kind: "sandbox".into(),
        started_at: started_ns.div_euclid(1_000_000_000),
        ended_at: row.ended_ns.map(|n| n.div_euclid(1_000_000_000)),
        outcome: match row.outcome.as_str() {
            "passed" => DrillOutcome::Passed,
            "partial" => DrillOutcome::Partial,
            _ => DrillOutcome::Failed,
        },
        rto_achieved_secs: row.rto_achieved_secs.map(|s| s.round() as i64),
        rpo_achieved_secs: row.rpo_achieved_secs.map(|s| s.round() as i64),
        reasons: row.reasons.clone(),
        checks,
        operator: Some(actor.to_owned()),
        record_blake3: Some(blake3::hash(&record).to_hex().to_string()),
        detail: None,
    })
}

/// The facts of catalog drill `id`, one per system, with [`DrillFacts::detail`]
/// filled from the activity log, snapshots and restored amounts: what a
/// drill report shows beyond the plan's summary. A running drill is
/// included (its report says so).
pub fn drill_run(cat: &Catalog, id: i64) -> Result<Vec<DrillFacts>, CatalogError> {
    let run = cat.drill(id)?;
    let steps = cat.drill_steps(id)?;
    let mut out = Vec::new();
    for row in cat.drill_systems(id)? {
        let mut facts = drill_facts(cat, &row, &run.actor, run.started_ns)?;
        facts.detail = Some(DrillDetail {
            title: row.title.clone(),
            opd: row.opd.clone(),
            owner: row.owner.clone(),
            rto_target_secs: row.rto_target_secs,
            rpo_target_secs: row.rpo_target_secs,
            outcome: row.outcome.clone(),
            trigger: run.trigger.clone(),
            run_outcome: run.outcome.clone(),
            restore_place: row.restore_place.clone(),
            files_restored: row.files_restored,
            bytes_restored: row.bytes_restored,
            verify_result: row.verify_result.clone(),
            rto_achieved: row.rto_achieved_secs,
            rpo_achieved: row.rpo_achieved_secs,
            snapshots: row
                .snapshots
                .iter()
                .map(|u| DrillSnapshot {
                    agent: u.agent.clone(),
                    dataset: u.dataset.clone(),
                    subdir: u.subdir.clone(),
                    snapshot: u.snapshot.clone(),
                    data_at: u.started_ns.div_euclid(1_000_000_000),
                })
                .collect(),
            steps: steps
                .iter()
                .filter(|x| x.system == row.system)
                .map(|x| DrillStep {
                    seq: x.seq,
                    kind: x.kind.clone(),
                    name: x.name.clone(),
                    started_at: x.started_ns.div_euclid(1_000_000_000),
                    duration_secs: x.ended_ns.map(|e| (e - x.started_ns) as f64 / 1e9),
                    outcome: x.outcome.clone(),
                    output: x.output.clone(),
                })
                .collect(),
        });
        out.push(facts);
    }
    Ok(out)
}

/// Systems from `systems`, drills (sandbox drills and failovers) from the catalog.
pub fn systems_input(systems: &Systems, cat: &Catalog) -> Result<SystemsInput, CatalogError> {
    let mut out = SystemsInput::default();
    for sys in systems.in_order() {
        out.systems.push(facts(sys, cat)?);
    }
    for d in cat.drills(DRILLS_READ)? {
        if d.outcome == "running" {
            continue;
        }
        for row in cat.drill_systems(d.id)? {
            out.drills.push(drill_facts(cat, &row, &d.actor, d.started_ns)?);
        }
    }
    // A real failover is the strongest evidence a system comes back.
    for f in cat.failovers(None)? {
        if f.outcome == "running" {
            continue;
        }
        let record = serde_json::to_vec(&f).unwrap_or_default();
        out.switches.push(SwitchFacts {
            id: format!("{}-{}", f.kind, f.id),
            system: f.system.clone(),
            kind: f.kind.clone(),
            started_at: f.started_at,
            ended_at: f.ended_at,
            outcome: f.outcome.clone(),
            actor: Some(f.actor.clone()),
            record_blake3: Some(blake3::hash(&record).to_hex().to_string()),
        });
        if f.kind != "failover" {
            continue;
        }
        out.drills.push(DrillFacts {
            id: format!("failover-{}", f.id),
            system: f.system.clone(),
            kind: "failover".into(),
            started_at: f.started_at,
            ended_at: f.ended_at,
            outcome: if f.outcome == "succeeded" { DrillOutcome::Passed } else { DrillOutcome::Failed },
            rto_achieved_secs: f.rto_achieved_secs,
            rpo_achieved_secs: f.rpo_achieved_secs,
            reasons: f.error.iter().cloned().collect(),
            checks: Vec::new(),
            operator: Some(f.actor.clone()),
            record_blake3: Some(blake3::hash(&record).to_hex().to_string()),
            detail: None,
        });
    }
    Ok(out)
}
