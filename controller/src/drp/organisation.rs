//! `organisation.toml`: who the plan belongs to. Institution, the unit
//! responsible for it (Pasal 18 ayat 3), agencies (OPD), people, the DRP
//! committee, signatories, document numbering and review period, where the
//! DRC stores data (Pasal 16 ayat 5), distribution list, outside contacts
//! and further legal references. Nothing about one city is compiled in:
//! Kota Blitar is only the shipped example (`deploy/organisation.toml.example`).
//!
//! Validation reports every problem at once, each with the file, line and
//! key (toml spans), so a coordinator can fix the file without guessing.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A problem in `organisation.toml`, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgProblem {
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// `organisation.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{}", .problems.iter().map(|p| format!("{}:{}: {}: {}", .path, p.line, p.key, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, problems: Vec<OrgProblem> },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrg {
    institution: Institution,
    document: RawDocument,
    storage: StorageDeclaration,
    #[serde(default)]
    agencies: Vec<Agency>,
    #[serde(default)]
    people: Vec<Spanned<Person>>,
    committee: RawCommittee,
    #[serde(default)]
    approvals: Vec<RawApproval>,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    related_plans: Vec<Spanned<RelatedPlan>>,
    #[serde(default)]
    distribution: Vec<String>,
    #[serde(default)]
    contacts: Vec<ExternalContact>,
    #[serde(default)]
    vendors: Vec<Spanned<Vendor>>,
    #[serde(default)]
    training: Vec<Training>,
}

/// `[institution]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Institution {
    /// e.g. "Pemerintah Kota Blitar".
    pub name: String,
    /// Unit responsible for the plan (Pasal 18 ayat 3), full name.
    pub unit: String,
    /// Its usual short name, e.g. "Diskominfotik".
    pub unit_short: String,
    pub address: String,
    /// Place written before the signature date ("Blitar, 24 November 2026").
    pub city: String,
    /// The regional regulation that requires the plan, full title.
    pub regulation: String,
    /// Its short name as cited in the text, e.g. "Perwali Blitar 3/2018".
    pub regulation_short: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    number_prefix: String,
    #[serde(default = "default_classification")]
    classification: String,
    review_period: Spanned<String>,
    #[serde(default = "default_offset")]
    utc_offset: Spanned<String>,
    #[serde(default = "default_tz")]
    timezone_label: String,
}

fn default_classification() -> String {
    "TERBATAS".into()
}
fn default_offset() -> Spanned<String> {
    Spanned::new(0..0, "+07:00".into())
}
fn default_tz() -> String {
    "WIB".into()
}

/// `[document]`, resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocumentSettings {
    /// Document numbers are `PREFIX/VERSION/YEAR`.
    pub number_prefix: String,
    /// Printed on every page, e.g. "TERBATAS".
    pub classification: String,
    /// Seconds between approval and the next review.
    pub review_period_secs: i64,
    /// Local time offset in seconds east of UTC (dates in the document).
    pub utc_offset_secs: i32,
    /// Printed after times, e.g. "WIB".
    pub timezone_label: String,
}

/// `[storage]`: where the DRC keeps the data (Pasal 16 ayat 5).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageDeclaration {
    /// ISO 3166 code of the country the store is in, e.g. "ID".
    pub country: String,
    pub city: String,
    /// The site, e.g. the building and room of the DRC.
    pub site: String,
    /// Who runs the site (own data centre, provider name).
    #[serde(default)]
    pub operator: String,
    /// Street address of the DRC site (Lampiran F), optional.
    #[serde(default)]
    pub address: String,
    /// How the team gets in and works there (access, keys, desks), optional.
    #[serde(default)]
    pub access: String,
}

impl StorageDeclaration {
    /// Declared in Indonesia.
    pub fn in_indonesia(&self) -> bool {
        self.country.trim().eq_ignore_ascii_case("ID") || self.country.trim().eq_ignore_ascii_case("Indonesia")
    }
}

/// `[[agencies]]`: an OPD.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Agency {
    /// Short code systems refer to (`opd`).
    pub code: String,
    pub name: String,
}

/// `[[people]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Key used by the committee and approvals.
    pub id: String,
    pub name: String,
    pub position: String,
    #[serde(default)]
    pub nip: Option<String>,
    /// Phone, e-mail or both, as people should use them.
    pub contact: String,
    /// Date the contact was last confirmed (YYYY-MM-DD), for the call tree.
    #[serde(default)]
    pub verified: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommittee {
    plan_owner: Spanned<String>,
    coordinator: Spanned<String>,
    #[serde(default)]
    deputy: Option<Spanned<String>>,
    activation_authority: Spanned<String>,
    activation_successor: Spanned<String>,
    #[serde(default)]
    technical_team: Vec<Spanned<String>>,
    #[serde(default)]
    auditors: Vec<Spanned<String>>,
}

/// The DRP committee, people resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Committee {
    pub plan_owner: Person,
    pub coordinator: Person,
    pub deputy: Option<Person>,
    pub activation_authority: Person,
    pub activation_successor: Person,
    pub technical_team: Vec<Person>,
    pub auditors: Vec<Person>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    role: Spanned<String>,
    person: Spanned<String>,
}

/// Roles of a signatory, in signing order.
pub const APPROVAL_ROLES: [&str; 4] = ["prepared", "checked", "approved", "ratified"];

/// A signatory of the approval sheet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Signatory {
    /// `prepared`, `checked`, `approved` or `ratified`.
    pub role: String,
    pub person: Person,
}

/// `[[contacts]]`: vendors, CSIRT, BSSN, providers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalContact {
    pub name: String,
    pub role: String,
    pub contact: String,
}

/// `[[vendors]]`: a provider (penyedia) the recovery may need: hardware,
/// network, application developer, cloud or data-centre operator.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Vendor {
    pub name: String,
    /// What they provide, e.g. "Pengembang aplikasi SIMPEG".
    pub service: String,
    /// Phone, e-mail or both, as people should use them.
    pub contact: String,
    /// Contract or service agreement (number, support hours), optional.
    #[serde(default)]
    pub contract: Option<String>,
    /// Systems they support (names of system definitions), optional.
    #[serde(default)]
    pub systems: Vec<String>,
    /// Date the contact was last confirmed (YYYY-MM-DD), optional.
    #[serde(default)]
    pub verified: Option<String>,
}

/// `related_plans`: a plan carried out together with this one (incident
/// response, an OPD's continuity plan). Either a title alone or a table
/// with `title`, `owner` and `reference` (where the document is kept).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelatedPlan {
    pub title: String,
    /// Who keeps it (unit or person), optional.
    pub owner: Option<String>,
    /// Its number or where it is kept, optional.
    pub reference: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelatedPlanTable {
    title: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RelatedPlanForm {
    Title(String),
    Table(RelatedPlanTable),
}

impl<'de> Deserialize<'de> for RelatedPlan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Versions before the table form stored plain titles; both stay readable.
        match RelatedPlanForm::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a related plan is a title (\"...\") or a table { title = \"...\", owner = \"...\", reference = \"...\" }",
            )
        })? {
            RelatedPlanForm::Title(title) => Ok(RelatedPlan { title, owner: None, reference: None }),
            RelatedPlanForm::Table(t) => Ok(RelatedPlan { title: t.title, owner: t.owner, reference: t.reference }),
        }
    }
}

/// `[[training]]`: a training or exercise of the DRP team.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// YYYY-MM-DD.
    pub date: String,
    pub topic: String,
    pub participants: String,
}

/// `organisation.toml`, validated and resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Organisation {
    pub institution: Institution,
    pub document: DocumentSettings,
    pub storage: StorageDeclaration,
    pub agencies: Vec<Agency>,
    pub people: Vec<Person>,
    pub committee: Committee,
    pub approvals: Vec<Signatory>,
    /// Further legal references the institution adds.
    pub references: Vec<String>,
    /// Related plans (incident response, OPD continuity plans).
    pub related_plans: Vec<RelatedPlan>,
    /// Recipients of controlled copies.
    pub distribution: Vec<String>,
    pub contacts: Vec<ExternalContact>,
    /// Providers (penyedia), Lampiran B; absent in plans made before it existed.
    #[serde(default)]
    pub vendors: Vec<Vendor>,
    pub training: Vec<Training>,
    /// No `organisation.toml` exists: [`Organisation::placeholder`] stands in
    /// so a drill report can still be read; documents say it is missing.
    #[serde(default)]
    pub placeholder: bool,
}

/// `YYYY-MM-DD` with a real month and day.
fn is_date(s: &str) -> bool {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s.trim(), &fmt).is_ok()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

impl Organisation {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, OrgError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| OrgError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|problems| OrgError::Invalid { path: path.display().to_string(), problems })
    }

    /// Parses and validates text; every problem at once.
    pub fn parse(text: &str) -> Result<Self, Vec<OrgProblem>> {
        let raw: RawOrg = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            vec![OrgProblem { line, key: "-".into(), message: e.message().trim().to_owned() }]
        })?;
        let mut problems = Vec::new();
        let at = |s: &std::ops::Range<usize>| line_of(text, s.start);
        let mut ids = BTreeSet::new();
        for p in &raw.people {
            if !ids.insert(p.get_ref().id.clone()) {
                problems.push(OrgProblem {
                    line: at(&p.span()),
                    key: "people.id".into(),
                    message: format!("person {:?} is listed twice", p.get_ref().id),
                });
            }
            if p.get_ref().name.trim().is_empty() || p.get_ref().position.trim().is_empty() {
                problems.push(OrgProblem {
                    line: at(&p.span()),
                    key: "people".into(),
                    message: format!("person {:?} needs a name and a position", p.get_ref().id),
                });
            }
        }
        let people: Vec<Person> = raw.people.iter().map(|p| p.get_ref().clone()).collect();
        let mut missing = Vec::new();
        let mut find = |key: &str, id: &Spanned<String>| -> Option<Person> {
            let found = people.iter().find(|p| &p.id == id.get_ref()).cloned();
            if found.is_none() {
                missing.push(OrgProblem {
                    line: at(&id.span()),
                    key: key.into(),
                    message: format!("no [[people]] entry with id = {:?}", id.get_ref()),
                });
            }
            found
        };
        let c = &raw.committee;
        let plan_owner = find("committee.plan_owner", &c.plan_owner);
        let coordinator = find("committee.coordinator", &c.coordinator);
        let deputy = c.deputy.as_ref().map(|d| find("committee.deputy", d));
        let authority = find("committee.activation_authority", &c.activation_authority);
        let successor = find("committee.activation_successor", &c.activation_successor);
        let technical_team: Vec<Option<Person>> =
            c.technical_team.iter().map(|p| find("committee.technical_team", p)).collect();
        let auditors: Vec<Option<Person>> = c.auditors.iter().map(|p| find("committee.auditors", p)).collect();
        let mut approvals = Vec::new();
        let mut bad_roles = Vec::new();
        for a in &raw.approvals {
            let person = find("approvals.person", &a.person);
            if !APPROVAL_ROLES.contains(&a.role.get_ref().as_str()) {
                bad_roles.push(OrgProblem {
                    line: at(&a.role.span()),
                    key: "approvals.role".into(),
                    message: format!("{:?} is not one of {}", a.role.get_ref(), APPROVAL_ROLES.join(", ")),
                });
            } else if let Some(person) = person {
                approvals.push(Signatory { role: a.role.get_ref().clone(), person });
            }
        }
        problems.extend(missing);
        problems.extend(bad_roles);
        let review = match crate::units::parse_duration(raw.document.review_period.get_ref()) {
            Ok(s) if s > 0 => s,
            Ok(_) => {
                problems.push(OrgProblem {
                    line: at(&raw.document.review_period.span()),
                    key: "document.review_period".into(),
                    message: "must be longer than 0s (e.g. \"1y\")".into(),
                });
                0
            }
            Err(e) => {
                problems.push(OrgProblem {
                    line: at(&raw.document.review_period.span()),
                    key: "document.review_period".into(),
                    message: e,
                });
                0
            }
        };
        let offset = match crate::units::parse_offset(raw.document.utc_offset.get_ref()) {
            Ok(o) => o.whole_seconds(),
            Err(e) => {
                problems.push(OrgProblem {
                    line: at(&raw.document.utc_offset.span()),
                    key: "document.utc_offset".into(),
                    message: e,
                });
                0
            }
        };
        let mut codes = BTreeSet::new();
        for a in &raw.agencies {
            if !codes.insert(a.code.clone()) {
                problems.push(OrgProblem {
                    line: 0,
                    key: "agencies.code".into(),
                    message: format!("agency code {:?} is listed twice", a.code),
                });
            }
        }
        for (key, v) in [
            ("institution.name", &raw.institution.name),
            ("institution.unit", &raw.institution.unit),
            ("institution.unit_short", &raw.institution.unit_short),
            ("document.number_prefix", &raw.document.number_prefix),
            ("storage.country", &raw.storage.country),
        ] {
            if v.trim().is_empty() {
                problems.push(OrgProblem { line: 0, key: key.into(), message: "must not be empty".into() });
            }
        }
        for v in &raw.vendors {
            let r = v.get_ref();
            for (key, val) in
                [("vendors.name", &r.name), ("vendors.service", &r.service), ("vendors.contact", &r.contact)]
            {
                if val.trim().is_empty() {
                    problems.push(OrgProblem {
                        line: at(&v.span()),
                        key: key.into(),
                        message: "must not be empty".into(),
                    });
                }
            }
            if let Some(d) = &r.verified {
                if !is_date(d) {
                    problems.push(OrgProblem {
                        line: at(&v.span()),
                        key: "vendors.verified".into(),
                        message: format!("{d:?} is not a date YYYY-MM-DD"),
                    });
                }
            }
        }
        for p in &raw.related_plans {
            if p.get_ref().title.trim().is_empty() {
                problems.push(OrgProblem {
                    line: at(&p.span()),
                    key: "related_plans.title".into(),
                    message: "must not be empty".into(),
                });
            }
        }
        if approvals.is_empty() && problems.is_empty() {
            problems.push(OrgProblem {
                line: 0,
                key: "approvals".into(),
                message: "name at least one [[approvals]] signatory (role = \"approved\")".into(),
            });
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.line);
            return Err(problems);
        }
        let (Some(plan_owner), Some(coordinator), Some(activation_authority), Some(activation_successor)) =
            (plan_owner, coordinator, authority, successor)
        else {
            unreachable!("missing people were reported as problems");
        };
        Ok(Organisation {
            institution: raw.institution,
            document: DocumentSettings {
                number_prefix: raw.document.number_prefix,
                classification: raw.document.classification,
                review_period_secs: review,
                utc_offset_secs: offset,
                timezone_label: raw.document.timezone_label,
            },
            storage: raw.storage,
            agencies: raw.agencies,
            people,
            committee: Committee {
                plan_owner,
                coordinator,
                deputy: deputy.flatten(),
                activation_authority,
                activation_successor,
                technical_team: technical_team.into_iter().flatten().collect(),
                auditors: auditors.into_iter().flatten().collect(),
            },
            approvals,
            references: raw.references,
            related_plans: raw.related_plans.into_iter().map(Spanned::into_inner).collect(),
            distribution: raw.distribution,
            contacts: raw.contacts,
            vendors: raw.vendors.into_iter().map(Spanned::into_inner).collect(),
            training: raw.training,
            placeholder: false,
        })
    }

    /// What stands in when `organisation.toml` does not exist yet: dashes
    /// for every name, so a drill report (which needs little of it) can be
    /// shown; a recorded plan still requires the real file.
    pub fn placeholder() -> Self {
        let nobody = Person {
            id: "-".into(),
            name: "—".into(),
            position: "—".into(),
            nip: None,
            contact: "—".into(),
            verified: None,
        };
        Organisation {
            institution: Institution {
                name: "—".into(),
                unit: "—".into(),
                unit_short: "—".into(),
                address: "—".into(),
                city: "—".into(),
                regulation: "—".into(),
                regulation_short: "—".into(),
            },
            document: DocumentSettings {
                number_prefix: "—".into(),
                classification: default_classification(),
                review_period_secs: 365 * 86_400,
                utc_offset_secs: crate::units::parse_offset(default_offset().get_ref())
                    .map_or(0, |o| o.whole_seconds()),
                timezone_label: default_tz(),
            },
            storage: StorageDeclaration {
                country: String::new(),
                city: "—".into(),
                site: "—".into(),
                operator: String::new(),
                address: String::new(),
                access: String::new(),
            },
            agencies: Vec::new(),
            people: Vec::new(),
            committee: Committee {
                plan_owner: nobody.clone(),
                coordinator: nobody.clone(),
                deputy: None,
                activation_authority: nobody.clone(),
                activation_successor: nobody,
                technical_team: Vec::new(),
                auditors: Vec::new(),
            },
            approvals: Vec::new(),
            references: Vec::new(),
            related_plans: Vec::new(),
            distribution: Vec::new(),
            contacts: Vec::new(),
            vendors: Vec::new(),
            training: Vec::new(),
            placeholder: true,
        }
    }

    /// Name of an agency by code (the code itself when unknown).
    pub fn agency_name(&self, code: &str) -> String {
        self.agencies.iter().find(|a| a.code == code).map_or_else(|| code.to_owned(), |a| a.name.clone())
    }
}

/// The shipped example (Kota Blitar, fictional people).
pub const EXAMPLE: &str = include_str!("../../../deploy/organisation.toml.example");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_valid() {
        let org = Organisation::parse(EXAMPLE).unwrap();
        assert!(org.storage.in_indonesia());
        assert!(!org.approvals.is_empty());
        assert_eq!(org.document.review_period_secs, 365 * 86_400);
    }

    #[test]
    fn vendors_and_related_plans_are_optional_and_validated() {
        let org = Organisation::parse(EXAMPLE).unwrap();
        assert!(org.vendors.len() >= 2 && org.vendors[0].systems == ["simpeg"]);
        assert!(
            org.related_plans.iter().any(|p| p.owner.is_some()) && org.related_plans.iter().any(|p| p.owner.is_none())
        );
        assert!(!org.storage.address.is_empty());
        // Without them the file is still valid.
        let cut = EXAMPLE.find("\n[[vendors]]").unwrap();
        let bare = EXAMPLE[..cut]
            .replace("address = \"Jl. Contoh No. 2", "# address = \"")
            .replace("\naccess = ", "\n# access = ");
        let org = Organisation::parse(&bare).unwrap();
        assert!(org.vendors.is_empty() && org.storage.access.is_empty());
        // An empty contact and a bad date name their line.
        let bad =
            EXAMPLE.replacen("contact = \"0800-000-000 (24 jam)\"", "contact = \" \"\nverified = \"2026-13-01\"", 1);
        let problems = Organisation::parse(&bad).unwrap_err();
        let line = bad.lines().position(|l| l.contains("PT Contoh Jaringan")).unwrap() + 1;
        assert!(problems.iter().any(|p| p.key == "vendors.contact" && p.line.abs_diff(line) <= 1), "{problems:?}");
        assert!(problems.iter().any(|p| p.key == "vendors.verified"), "{problems:?}");
        let bad = EXAMPLE.replacen("{ title = \"Prosedur", "{ titel = \"Prosedur", 1);
        let problems = Organisation::parse(&bad).unwrap_err();
        assert!(problems[0].message.contains("related plan is a title"), "{problems:?}");
    }

    #[test]
    fn problems_name_line_and_key() {
        let bad = EXAMPLE.replacen("coordinator = \"", "coordinator = \"nobody-", 1);
        let problems = Organisation::parse(&bad).unwrap_err();
        let line = bad.lines().position(|l| l.contains("nobody-")).unwrap() + 1;
        assert!(problems.iter().any(|p| p.key == "committee.coordinator" && p.line == line), "{problems:?}");
        let bad = EXAMPLE.replacen("[institution]\n", "[institution]\nmayor = \"x\"\n", 1);
        let problems = Organisation::parse(&bad).unwrap_err();
        assert!(problems[0].message.contains("mayor") && problems[0].line > 0, "{problems:?}");
    }
}
