//! Gaps the plan must state (findings, with a corrective action each): the
//! plan never hides a missing drill, a missed target, a system nobody is
//! responsible for, damage, storage outside Indonesia, a silent agent, an
//! overdue review or a broken audit chain. Computed from [`PlanData`]
//! facts only, so the same facts always give the same findings.
//!
//! Also the recovery order: dependencies first, then tier, then name
//! (a stable topological sort); a cycle is a finding, and the systems in
//! it are put last in tier order so the plan still lists them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::format::{self, Lang};
use super::model::{DrillOutcome, PlanData, SystemFacts};

/// How bad a gap is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Low,
}

/// One gap, with its evidence and corrective action in both languages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    /// `T-01`, `T-02`, ... in the order of the list.
    pub id: String,
    pub severity: Severity,
    /// Stable kind, e.g. `never-drilled`.
    pub code: String,
    /// The system, agent or dataset concerned (empty for the whole plan).
    pub subject: String,
    pub evidence_id: String,
    pub evidence_en: String,
    pub action_id: String,
    pub action_en: String,
    /// Who must act.
    pub owner: String,
    /// Due date of the corrective action.
    pub due: i64,
}

/// Drill interval when a system names none: yearly (ISO 22301 8.5; the
/// outline's "no drill in 12 months").
pub const DEFAULT_DRILL_EVERY: i64 = 365 * 86_400;
/// Days to close a finding by severity.
const DUE_DAYS: [(Severity, i64); 3] = [(Severity::High, 30), (Severity::Medium, 90), (Severity::Low, 180)];
/// A certificate expiring within this is a finding.
const CERT_WARNING: i64 = 30 * 86_400;
/// A scrub older than this (or none) is a finding.
const SCRUB_MAX_AGE: i64 = 35 * 86_400;

struct Out<'a> {
    plan: &'a PlanData,
    list: Vec<Finding>,
}

impl Out<'_> {
    #[allow(clippy::too_many_arguments)]
    fn add(&mut self, sev: Severity, code: &str, subject: &str, owner: &str, ev: (String, String), act: (&str, &str)) {
        let days = DUE_DAYS.iter().find(|(s, _)| *s == sev).map_or(90, |(_, d)| *d);
        self.list.push(Finding {
            id: String::new(),
            severity: sev,
            code: code.into(),
            subject: subject.into(),
            evidence_id: ev.0,
            evidence_en: ev.1,
            action_id: act.0.into(),
            action_en: act.1.into(),
            owner: owner.into(),
            due: self.plan.control.data_as_of + days * 86_400,
        });
    }
    fn d(&self, secs: i64) -> (String, String) {
        (format::dur(Lang::Id, secs), format::dur(Lang::En, secs))
    }
    fn day(&self, secs: i64) -> (String, String) {
        let off = self.plan.organisation.document.utc_offset_secs;
        (format::date(Lang::Id, secs, off), format::date(Lang::En, secs, off))
    }
}

fn owner_of(plan: &PlanData, s: &SystemFacts) -> String {
    s.owner.as_ref().map_or_else(|| plan.organisation.committee.coordinator.name.clone(), |o| o.name.clone())
}

/// The recovery order and the systems caught in dependency cycles or
/// naming unknown systems.
pub fn recovery_order(systems: &[SystemFacts]) -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
    let names: BTreeSet<&str> = systems.iter().map(|s| s.name.as_str()).collect();
    let key = |s: &SystemFacts| (s.tier, s.name.clone());
    let mut unknown = Vec::new();
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in systems {
        let mut set = BTreeSet::new();
        for d in &s.depends_on {
            if names.contains(d.as_str()) {
                set.insert(d.as_str());
            } else {
                unknown.push((s.name.clone(), d.clone()));
            }
        }
        deps.insert(s.name.as_str(), set);
    }
    let mut done: Vec<String> = Vec::new();
    let mut left: Vec<&SystemFacts> = systems.iter().collect();
    left.sort_by_key(|s| key(s));
    loop {
        // The most critical system whose dependencies are all up.
        let ready = left.iter().position(|s| deps[s.name.as_str()].iter().all(|d| done.iter().any(|x| x == d)));
        match ready {
            Some(i) => done.push(left.remove(i).name.clone()),
            None => break,
        }
    }
    let cyclic: Vec<String> = left.iter().map(|s| s.name.clone()).collect();
    done.extend(cyclic.iter().cloned());
    (done, cyclic, unknown)
}

/// Every finding of the plan, most severe first, numbered.
pub fn compute(plan: &PlanData) -> Vec<Finding> {
    let now = plan.control.data_as_of;
    let mut o = Out { plan, list: Vec::new() };
    let coordinator = plan.organisation.committee.coordinator.name.clone();
    let plan_owner = plan.organisation.committee.plan_owner.name.clone();

    let (_, cyclic, unknown) = recovery_order(&plan.systems);
    if !cyclic.is_empty() {
        let list = cyclic.join(", ");
        o.add(
            Severity::High,
            "dependency-cycle",
            &list,
            &coordinator,
            (
                format!("Ketergantungan antarsistem membentuk siklus: {list}. Urutan pemulihan sistem-sistem ini tidak dapat ditentukan."),
                format!("The dependencies between systems form a cycle: {list}. Their recovery order cannot be determined."),
            ),
            ("Perbaiki definisi ketergantungan sistem sehingga tidak ada siklus.", "Correct the system dependencies so that no cycle remains."),
        );
    }
    for (s, d) in &unknown {
        o.add(
            Severity::Medium,
            "unknown-dependency",
            s,
            &coordinator,
            (
                format!("Sistem {s} bergantung pada sistem {d:?} yang tidak terdaftar dalam inventaris."),
                format!("System {s} depends on {d:?}, which is not in the inventory."),
            ),
            (
                "Daftarkan sistem tersebut atau hapus ketergantungannya.",
                "Register that system or remove the dependency.",
            ),
        );
    }

    for s in &plan.systems {
        let owner = owner_of(plan, s);
        if s.owner.is_none() {
            o.add(
                Severity::High,
                "no-owner",
                &s.name,
                &coordinator,
                (
                    format!(
                        "{} ({}) belum memiliki penanggung jawab sistem sebagaimana dimaksud Pasal 19 ayat (3).",
                        s.title, s.name
                    ),
                    format!(
                        "{} ({}) has no responsible person (penanggung jawab sistem, Article 19(3)).",
                        s.title, s.name
                    ),
                ),
                (
                    "Kepala OPD menunjuk penanggung jawab sistem dan datanya dicatat dalam definisi sistem.",
                    "The head of the agency appoints a responsible person, recorded in the system definition.",
                ),
            );
        }
        if s.rto_target_secs.is_none() || s.rpo_target_secs.is_none() {
            o.add(
                Severity::Medium,
                "no-target",
                &s.name,
                &owner,
                (
                    format!("Sistem {} belum memiliki sasaran RTO dan/atau RPO.", s.name),
                    format!("System {} has no RTO and/or RPO target.", s.name),
                ),
                (
                    "Tetapkan sasaran RTO dan RPO berdasarkan analisis dampak bisnis.",
                    "Set RTO and RPO targets from the business impact analysis.",
                ),
            );
        }
        let drills: Vec<_> = plan.drills_of(&s.name).collect();
        let every = s.drill_every_secs.unwrap_or(DEFAULT_DRILL_EVERY);
        match drills.first() {
            None => o.add(
                if s.tier <= 2 { Severity::High } else { Severity::Medium },
                "never-drilled",
                &s.name,
                &owner,
                (
                    format!("Sistem {} belum pernah diuji coba pemulihannya; kemampuan pulih belum terbukti.", s.name),
                    format!("System {} has never been drilled; its recovery is unproven.", s.name),
                ),
                ("Laksanakan uji coba pemulihan dan catat hasilnya.", "Run a recovery drill and record its result."),
            ),
            Some(last) => {
                let age = now - last.started_at;
                if age > every {
                    let (a, b) = o.d(age);
                    let (ea, eb) = o.d(every);
                    let (da, db) = o.day(last.started_at);
                    o.add(
                        Severity::Medium,
                        "drill-overdue",
                        &s.name,
                        &owner,
                        (
                            format!("Uji coba terakhir sistem {} ({}) dilaksanakan {da}, {a} yang lalu; jadwalnya setiap {ea}.", s.name, last.id),
                            format!("The last drill of system {} ({}) was on {db}, {b} ago; it is due every {eb}.", s.name, last.id),
                        ),
                        ("Laksanakan uji coba pemulihan sesuai jadwal.", "Run the overdue recovery drill."),
                    );
                }
                if last.outcome != DrillOutcome::Passed {
                    let why = last.reasons.join("; ");
                    let (ida, idb) = if last.outcome == DrillOutcome::Failed {
                        ("gagal", "failed")
                    } else {
                        ("berhasil sebagian", "partly passed")
                    };
                    o.add(
                        Severity::High,
                        "drill-failed",
                        &s.name,
                        &owner,
                        (
                            format!("Uji coba terakhir sistem {} ({}) {ida}: {why}.", s.name, last.id),
                            format!("The last drill of system {} ({}) {idb}: {why}.", s.name, last.id),
                        ),
                        ("Perbaiki penyebabnya dan ulangi uji coba.", "Fix the cause and repeat the drill."),
                    );
                }
                if let (Some(t), Some(a)) = (s.rto_target_secs, last.rto_achieved_secs) {
                    if a > t {
                        let ((aa, ab), (ta, tb)) = (o.d(a), o.d(t));
                        o.add(
                            Severity::High,
                            "rto-missed",
                            &s.name,
                            &owner,
                            (
                                format!("Capaian waktu pemulihan (RTO) sistem {} pada uji coba {} adalah {aa}, melebihi sasaran {ta}.", s.name, last.id),
                                format!("The recovery time achieved for system {} in drill {} was {ab}, above the {tb} target (RTO).", s.name, last.id),
                            ),
                            (
                                "Percepat prosedur pemulihan atau tinjau ulang sasaran RTO bersama pemilik layanan.",
                                "Speed up the recovery procedure or review the RTO target with the service owner.",
                            ),
                        );
                    }
                }
                if let (Some(t), Some(a)) = (s.rpo_target_secs, last.rpo_achieved_secs) {
                    if a > t {
                        let ((aa, ab), (ta, tb)) = (o.d(a), o.d(t));
                        o.add(
                            Severity::High,
                            "rpo-missed-drill",
                            &s.name,
                            &owner,
                            (
                                format!(
                                    "Data yang dipulihkan pada uji coba {} berumur {aa}, melebihi sasaran RPO {ta}.",
                                    last.id
                                ),
                                format!(
                                    "The data restored in drill {} was {ab} old, above the {tb} RPO target.",
                                    last.id
                                ),
                            ),
                            ("Perpendek selang waktu pencadangan sistem ini.", "Back this system up more often."),
                        );
                    }
                }
            }
        }
        if s.datasets.is_empty() {
            o.add(
                Severity::High,
                "no-datasets",
                &s.name,
                &owner,
                (
                    format!("Sistem {} tidak memiliki dataset yang direplikasi ke Pusat Pemulihan Bencana.", s.name),
                    format!("System {} has no dataset replicated to the DRC.", s.name),
                ),
                (
                    "Tambahkan dataset sistem ini pada agen di server utamanya.",
                    "Add the system's datasets to the agent on its primary server.",
                ),
            );
        }
        for d in &s.datasets {
            let subject = format!("{}/{}", d.agent, d.dataset);
            let target = s.rpo_target_secs.or(d.rpo_target_secs);
            match (d.lag_secs, target) {
                (None, _) => o.add(
                    Severity::High,
                    "no-snapshot",
                    &subject,
                    &owner,
                    (
                        format!("Dataset {subject} (sistem {}) belum memiliki satu pun cadangan di Pusat Pemulihan Bencana.", s.name),
                        format!("Dataset {subject} (system {}) has no backup at the DRC.", s.name),
                    ),
                    ("Pastikan agen berjalan dan dataset terdaftar, lalu periksa cadangan pertama.", "Make sure the agent runs and lists the dataset, then check the first backup."),
                ),
                (Some(lag), Some(t)) if lag > t => {
                    let ((la, lb), (ta, tb)) = (o.d(lag), o.d(t));
                    o.add(
                        Severity::High,
                        "rpo-missed",
                        &subject,
                        &owner,
                        (
                            format!("Cadangan terbaru dataset {subject} (sistem {}) berumur {la}, melebihi sasaran RPO {ta}.", s.name),
                            format!("The newest backup of dataset {subject} (system {}) is {lb} old, above the {tb} RPO target.", s.name),
                        ),
                        ("Periksa agen dan jaringan ke Pusat Pemulihan Bencana; pulihkan replikasi.", "Check the agent and the network to the DRC; restore replication."),
                    );
                }
                _ => {}
            }
        }
    }

    for a in &plan.agents {
        if a.status != "active" {
            continue;
        }
        let limit = a.datasets.iter().filter_map(|d| d.rpo_target_secs).min();
        let silent = match (a.last_seen_at, limit) {
            (None, _) => Some(None),
            (Some(seen), Some(l)) if now - seen > l => Some(Some(now - seen)),
            _ => None,
        };
        if let Some(age) = silent {
            let (ida, en) = match age {
                None => (
                    format!("Agen {} belum pernah terhubung ke pengendali.", a.name),
                    format!("Agent {} has never connected to the controller.", a.name),
                ),
                Some(age) => {
                    let ((aa, ab), (la, lb)) = (o.d(age), o.d(limit.unwrap_or(0)));
                    (
                        format!(
                            "Agen {} tidak terhubung selama {aa}, lebih lama dari sasaran RPO terketatnya ({la}).",
                            a.name
                        ),
                        format!(
                            "Agent {} has been silent for {ab}, longer than its tightest RPO target ({lb}).",
                            a.name
                        ),
                    )
                }
            };
            o.add(
                Severity::High,
                "agent-silent",
                &a.name,
                &coordinator,
                (ida, en),
                ("Periksa layanan pulih-agent dan jaringannya.", "Check the pulih-agent service and its network."),
            );
        }
        if let Some(exp) = a.cert_not_after {
            if exp - now < CERT_WARNING {
                let (da, db) = o.day(exp);
                o.add(
                    Severity::Medium,
                    "certificate-expiring",
                    &a.name,
                    &coordinator,
                    (
                        format!("Sertifikat agen {} berakhir pada {da}.", a.name),
                        format!("The certificate of agent {} expires on {db}.", a.name),
                    ),
                    (
                        "Pastikan agen memperbarui sertifikatnya (berjalan sebagai layanan).",
                        "Make sure the agent renews its certificate (runs as a service).",
                    ),
                );
            }
        }
    }

    if plan.damage.damaged + plan.damage.lost > 0 {
        let dm = &plan.damage;
        o.add(
            Severity::High,
            "unrepaired-damage",
            "",
            &coordinator,
            (
                format!(
                    "Verifikasi keutuhan menemukan {} blob rusak yang belum diperbaiki dan {} blob hilang; {} snapshot terdampak.",
                    dm.damaged, dm.lost, dm.damaged_snapshots
                ),
                format!(
                    "Integrity verification found {} damaged blobs not yet repaired and {} lost; {} snapshots are affected.",
                    dm.damaged, dm.lost, dm.damaged_snapshots
                ),
            ),
            (
                "Periksa media penyimpanan, biarkan agen mengirim ulang blob rusak, dan ambil cadangan baru.",
                "Check the storage media, let agents resend damaged blobs, and take fresh backups.",
            ),
        );
    }
    match plan.scrubs.iter().find(|s| s.finished_at.is_some()) {
        None => o.add(
            Severity::Medium,
            "no-scrub",
            "",
            &coordinator,
            (
                "Belum ada verifikasi keutuhan (scrub) seluruh cadangan yang selesai.".into(),
                "No integrity verification (scrub) of the whole store has completed.".into(),
            ),
            (
                "Aktifkan scrub terjadwal atau jalankan `pulih-controller scrub`.",
                "Enable the scheduled scrub or run `pulih-controller scrub`.",
            ),
        ),
        Some(s) if now - s.finished_at.unwrap_or(now) > SCRUB_MAX_AGE => {
            let (da, db) = o.day(s.finished_at.unwrap_or(now));
            o.add(
                Severity::Medium,
                "scrub-overdue",
                "",
                &coordinator,
                (
                    format!("Verifikasi keutuhan terakhir selesai pada {da}."),
                    format!("The last integrity verification finished on {db}."),
                ),
                (
                    "Jalankan verifikasi keutuhan paling sedikit bulanan.",
                    "Run integrity verification at least monthly.",
                ),
            );
        }
        _ => {}
    }
    if !plan.storage.in_indonesia {
        let st = &plan.storage;
        o.add(
            Severity::High,
            "storage-outside-indonesia",
            "",
            &plan_owner,
            (
                format!(
                    "Lokasi penyimpanan Pusat Pemulihan Bencana dinyatakan di {} ({}), bukan di wilayah Negara Kesatuan Republik Indonesia sebagaimana diwajibkan Pasal 16 ayat (5).",
                    st.city, st.country
                ),
                format!(
                    "The DRC storage is declared in {} ({}), not within the Republic of Indonesia as Article 16(5) requires.",
                    st.city, st.country
                ),
            ),
            ("Pindahkan penyimpanan ke server di wilayah Indonesia, atau perbaiki deklarasi lokasi bila keliru.", "Move the storage to a server in Indonesia, or correct the declaration if it is wrong."),
        );
    }
    match &plan.in_force {
        None => o.add(
            Severity::Medium,
            "not-approved",
            "",
            &plan_owner,
            (
                "Belum ada versi dokumen rencana pemulihan bencana yang disahkan.".into(),
                "No version of the disaster recovery plan has been approved.".into(),
            ),
            (
                "Periksa dan sahkan dokumen ini (`pulihctl drp approve`).",
                "Review and approve this document (`pulihctl drp approve`).",
            ),
        ),
        Some(a) if a.next_review < now => {
            let (da, db) = o.day(a.next_review);
            o.add(
                Severity::Medium,
                "review-overdue",
                "",
                &plan_owner,
                (
                    format!(
                        "Versi yang berlaku (versi {}, {}) seharusnya ditinjau paling lambat {da}.",
                        a.version, a.number
                    ),
                    format!("The version in force (version {}, {}) was due for review on {db}.", a.version, a.number),
                ),
                ("Tinjau dan sahkan versi terbaru dokumen ini.", "Review and approve the newest version of this plan."),
            );
        }
        _ => {}
    }
    if !plan.audit.ok {
        let why = plan.audit.problem.clone().unwrap_or_default();
        o.add(
            Severity::High,
            "audit-chain-broken",
            "",
            &plan_owner,
            (
                format!("Rantai hash log audit tidak utuh: {why}."),
                format!("The audit log's hash chain is broken: {why}."),
            ),
            (
                "Selidiki perubahan pada catalog.db dan laporkan sebagai insiden keamanan.",
                "Investigate the change to catalog.db and report it as a security incident.",
            ),
        );
    }
    if !plan.unassigned.is_empty() {
        let list: Vec<String> = plan.unassigned.iter().map(|d| format!("{}/{}", d.agent, d.dataset)).collect();
        let list = list.join(", ");
        o.add(
            Severity::Low,
            "dataset-without-system",
            "",
            &coordinator,
            (
                format!("Dataset berikut direplikasi tetapi tidak termasuk sistem mana pun, sehingga tidak memiliki prosedur pemulihan: {list}."),
                format!("These datasets are replicated but belong to no system, so they have no recovery procedure: {list}."),
            ),
            ("Masukkan dataset ke definisi sistem yang sesuai.", "Add the datasets to the right system definition."),
        );
    }
    if plan.organisation.training.is_empty() {
        o.add(
            Severity::Low,
            "no-training",
            "",
            &coordinator,
            ("Tidak ada catatan pelatihan tim DRP.".into(), "There is no record of training for the DRP team.".into()),
            (
                "Selenggarakan pelatihan tim DRP dan catat dalam organisation.toml.",
                "Train the DRP team and record it in organisation.toml.",
            ),
        );
    }

    let mut list = o.list;
    list.sort_by(|a, b| {
        a.severity.cmp(&b.severity).then_with(|| a.code.cmp(&b.code)).then_with(|| a.subject.cmp(&b.subject))
    });
    for (i, f) in list.iter_mut().enumerate() {
        f.id = format!("T-{:02}", i + 1);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drp::model::{DataClass, Runbook, Site};

    fn sys(name: &str, tier: u8, deps: &[&str]) -> SystemFacts {
        SystemFacts {
            name: name.into(),
            title: name.into(),
            opd: "x".into(),
            owner: None,
            data_class: DataClass::Pokok,
            tier,
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            rpo_target_secs: None,
            rto_target_secs: None,
            datasets: vec![],
            runbook: Runbook::default(),
            drill_every_secs: None,
            running_at: Site::Primary,
            alternatives: vec![],
        }
    }

    #[test]
    fn order_puts_dependencies_first_then_tier() {
        let s = vec![sys("web", 1, &["db", "auth"]), sys("db", 2, &[]), sys("auth", 1, &["db"]), sys("mail", 3, &[])];
        let (order, cyclic, unknown) = recovery_order(&s);
        assert_eq!(order, ["db", "auth", "web", "mail"]);
        assert!(cyclic.is_empty() && unknown.is_empty());
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_reported() {
        let s = vec![sys("a", 1, &["b"]), sys("b", 1, &["a"]), sys("c", 2, &["zz"])];
        let (order, cyclic, unknown) = recovery_order(&s);
        assert_eq!(order, ["c", "a", "b"]);
        assert_eq!(cyclic, ["a", "b"]);
        assert_eq!(unknown, [("c".to_string(), "zz".to_string())]);
    }
}
