//! The record of changes (Riwayat Perubahan): what changed since the
//! previous generated version, from its stored [`PlanData`]: systems added
//! or removed, targets, tiers, data classes, responsible persons, the
//! committee's contacts and the storage location.

use serde::{Deserialize, Serialize};

use super::format::Lang;
use super::model::{PlanData, SystemFacts};
use super::organisation::Person;

/// One change, in both languages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeFacts {
    /// Version compared with.
    pub since_version: i64,
    pub id: String,
    pub en: String,
}

fn secs(v: Option<i64>, lang: Lang) -> String {
    v.map_or_else(|| "-".into(), |v| super::format::dur(lang, v))
}

fn owner(s: &SystemFacts) -> String {
    s.owner.as_ref().map_or_else(|| "-".into(), |o| format!("{} ({})", o.name, o.contact))
}

/// Changes from `prev` to `cur`.
pub fn since(prev: &PlanData, cur: &PlanData) -> Vec<ChangeFacts> {
    let v = prev.control.version;
    let mut out = Vec::new();
    let mut add = |id: String, en: String| out.push(ChangeFacts { since_version: v, id, en });
    for s in &cur.systems {
        match prev.systems.iter().find(|p| p.name == s.name) {
            None => add(
                format!("Sistem {} ({}) ditambahkan.", s.name, s.title),
                format!("System {} ({}) added.", s.name, s.title),
            ),
            Some(p) => {
                if p.rto_target_secs != s.rto_target_secs {
                    let (a, b) = (secs(p.rto_target_secs, Lang::Id), secs(s.rto_target_secs, Lang::Id));
                    let (c, d) = (secs(p.rto_target_secs, Lang::En), secs(s.rto_target_secs, Lang::En));
                    add(
                        format!("Sasaran RTO sistem {} diubah dari {a} menjadi {b}.", s.name),
                        format!("RTO target of {} changed from {c} to {d}.", s.name),
                    );
                }
                if p.rpo_target_secs != s.rpo_target_secs {
                    let (a, b) = (secs(p.rpo_target_secs, Lang::Id), secs(s.rpo_target_secs, Lang::Id));
                    let (c, d) = (secs(p.rpo_target_secs, Lang::En), secs(s.rpo_target_secs, Lang::En));
                    add(
                        format!("Sasaran RPO sistem {} diubah dari {a} menjadi {b}.", s.name),
                        format!("RPO target of {} changed from {c} to {d}.", s.name),
                    );
                }
                if p.tier != s.tier {
                    add(
                        format!("Tingkat kekritisan sistem {} diubah dari {} menjadi {}.", s.name, p.tier, s.tier),
                        format!("Criticality tier of {} changed from {} to {}.", s.name, p.tier, s.tier),
                    );
                }
                if p.data_class != s.data_class {
                    add(
                        format!("Klasifikasi data sistem {} diubah.", s.name),
                        format!("Data class of {} changed.", s.name),
                    );
                }
                if p.owner != s.owner {
                    let (a, b) = (owner(p), owner(s));
                    add(
                        format!("Penanggung jawab sistem {} diubah dari {a} menjadi {b}.", s.name),
                        format!("Responsible person of {} changed from {a} to {b}.", s.name),
                    );
                }
                if p.depends_on != s.depends_on {
                    add(
                        format!("Ketergantungan sistem {} diubah.", s.name),
                        format!("Dependencies of {} changed.", s.name),
                    );
                }
            }
        }
    }
    for p in &prev.systems {
        if !cur.systems.iter().any(|s| s.name == p.name) {
            add(
                format!("Sistem {} ({}) dihapus dari inventaris.", p.name, p.title),
                format!("System {} ({}) removed from the inventory.", p.name, p.title),
            );
        }
    }
    let (pc, cc) = (&prev.organisation.committee, &cur.organisation.committee);
    let roles: [(&str, &str, &Person, &Person); 4] = [
        ("Pemilik rencana", "Plan owner", &pc.plan_owner, &cc.plan_owner),
        ("Koordinator DRP", "DRP coordinator", &pc.coordinator, &cc.coordinator),
        ("Pejabat aktivasi", "Activation official", &pc.activation_authority, &cc.activation_authority),
        (
            "Pengganti pejabat aktivasi",
            "Successor of the activation official",
            &pc.activation_successor,
            &cc.activation_successor,
        ),
    ];
    for (rid, ren, a, b) in roles {
        if a.name != b.name {
            add(
                format!("{rid} diganti dari {} menjadi {}.", a.name, b.name),
                format!("{ren} changed from {} to {}.", a.name, b.name),
            );
        } else if a.contact != b.contact {
            add(
                format!("Kontak {rid} ({}) diperbarui.", b.name),
                format!("Contact of the {} ({}) updated.", ren.to_lowercase(), b.name),
            );
        }
    }
    let (ps, cs) = (&prev.storage, &cur.storage);
    if (ps.country.as_str(), ps.city.as_str(), ps.site.as_str())
        != (cs.country.as_str(), cs.city.as_str(), cs.site.as_str())
    {
        add(
            format!("Lokasi penyimpanan diubah dari {}, {} menjadi {}, {}.", ps.city, ps.country, cs.city, cs.country),
            format!("Storage location changed from {}, {} to {}, {}.", ps.city, ps.country, cs.city, cs.country),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_systems_and_people_changes_are_listed() {
        let text = include_str!("../../tests/fixtures/drp/healthy.json");
        let prev: PlanData = serde_json::from_str(text).unwrap();
        let mut cur = prev.clone();
        assert!(since(&prev, &cur).is_empty());
        cur.systems[0].rto_target_secs = Some(7200);
        cur.systems.pop();
        cur.organisation.committee.coordinator.contact = "0800".into();
        let c = since(&prev, &cur);
        assert_eq!(c.len(), 3, "{c:#?}");
        assert!(c[0].id.contains("Sasaran RTO sistem simpeg diubah dari 4 jam menjadi 2 jam"), "{}", c[0].id);
        assert!(c[1].en.contains("removed"));
        assert!(c[2].id.starts_with("Kontak Koordinator DRP"));
    }
}
