//! The disaster recovery plan document (Pasal 18 ayat 2 and 3 of the
//! regulation): generated from live evidence, versioned, verifiable.
//!
//! Pipeline:
//! 1. [`PlanData::gather`] reads the catalog, `organisation.toml` and the
//!    systems and drills ([`SystemsInput`]) into a plain view model;
//!    [`findings::compute`] states every gap.
//! 2. The language's template ([`template`], MiniJinja, `drp-templates/`)
//!    writes the plan in a small markup; [`doc::parse`] makes it a
//!    document tree.
//! 3. The tree is hashed ([`doc::Document::content_hash`]) and rendered to
//!    Markdown ([`doc::to_markdown`]), HTML ([`html`]) or PDF/A ([`pdf`]).
//! 4. [`record`] stores the file and the tree under `DATA/drp/` and a row
//!    in `drp_versions` with both hashes, in the audit log too.
//!
//! Verification scheme ([`verify`]): every file carries a marker (number,
//! version, language, content hash) in a Markdown/HTML comment or the
//! PDF's metadata. A file is an unaltered generated version when the
//! blake3 of its bytes equals a recorded `file_blake3`; the stored tree is
//! rehashed to confirm the recorded content hash, and the marker must
//! agree. A changed byte changes the file hash: the file is reported as
//! altered, naming the version it claims to be. The catalog's row of a
//! generation is covered by the hash-chained audit log (`drp-generate`
//! with both hashes), so rewriting it shows in `audit verify`.
//!
//! Locking: gathering and recording take the catalog briefly; rendering
//! (the slow part) runs without it. Two generations racing for one version
//! number: the second fails to insert and is retried with the next number.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, DrpVersionRow, NewAudit, NewDrpVersion};

pub mod changes;
pub mod doc;
pub mod findings;
pub mod format;
pub mod gather;
pub mod html;
pub mod labels;
pub mod live;
pub mod model;
pub mod organisation;
pub mod pdf;
pub mod template;

pub use format::Lang;
pub use model::{DrillFacts, PlanData, SystemFacts, SystemsInput};
pub use organisation::Organisation;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Md,
    Html,
    Pdf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "md" => Some(Format::Md),
            "html" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            _ => None,
        }
    }
    pub fn ext(self) -> &'static str {
        match self {
            Format::Md => "md",
            Format::Html => "html",
            Format::Pdf => "pdf",
        }
    }
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Md => "text/markdown; charset=utf-8",
            Format::Html => "text/html; charset=utf-8",
            Format::Pdf => "application/pdf",
        }
    }
}

/// DR plan failures.
#[derive(Debug, thiserror::Error)]
pub enum DrpError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Organisation(#[from] organisation::OrgError),
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error("template {file}: {source}")]
    Markup { file: String, source: doc::MarkupError },
    #[error(transparent)]
    Pdf(#[from] pdf::PdfError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DrpError {
    let what = what.into();
    move |source| DrpError::Io { what, source }
}

/// Where the plan's inputs are: `[drp]` of controller.toml, resolved.
#[derive(Debug, Clone)]
pub struct DrpSettings {
    /// The controller's data directory (files go to `drp/` in it).
    pub data_dir: PathBuf,
    pub organisation: PathBuf,
    /// Template directory; `None` = built-in templates.
    pub templates: Option<PathBuf>,
    /// A fixed JSON file with [`SystemsInput`] (`[drp] systems`, for
    /// fixtures and demonstrations); `None`: the live systems and drills.
    pub systems: Option<PathBuf>,
    /// The system definitions (`[systems] dir`).
    pub systems_dir: PathBuf,
}

impl DrpSettings {
    /// Reads `organisation.toml`.
    pub fn organisation(&self) -> Result<Organisation, DrpError> {
        Ok(Organisation::load(&self.organisation)?)
    }

    /// The systems and drills to document: the definitions in
    /// `[systems] dir` with the catalog's drills, failovers and system
    /// states, unless `[drp] systems` names a fixed JSON file.
    pub fn systems_input(&self, cat: &crate::catalog::Catalog) -> Result<SystemsInput, DrpError> {
        match &self.systems {
            None => {
                let systems = crate::systems::Systems::load(&self.systems_dir)
                    .map_err(|e| DrpError::Invalid(format!("systems in {}: {e}", self.systems_dir.display())))?;
                Ok(live::systems_input(&systems, cat)?)
            }
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(io(format!("reading {}", p.display())))?;
                serde_json::from_str(&text).map_err(|e| DrpError::Invalid(format!("{}: {e}", p.display())))
            }
        }
    }

    pub fn templates(&self) -> template::Templates {
        template::Templates { dir: self.templates.clone() }
    }
}

/// The document tree of a plan, with its content hash set.
pub fn build_document(plan: &PlanData, templates: &template::Templates) -> Result<doc::Document, DrpError> {
    let lang = Lang::parse(&plan.control.lang)
        .ok_or_else(|| DrpError::Invalid(format!("language {:?}", plan.control.lang)))?;
    // Templates list systems in recovery order, whoever filled the plan.
    let mut plan = plan.clone();
    let (order, _, _) = findings::recovery_order(&plan.systems);
    plan.systems.sort_by_key(|s| order.iter().position(|n| *n == s.name));
    let plan = &plan;
    let text = templates.render(lang, plan)?;
    let blocks = doc::parse(&text).map_err(|source| DrpError::Markup {
        file: format!("{}/{}.md.j2 (output)", lang.code(), plan.control.kind),
        source,
    })?;
    let title = blocks
        .iter()
        .find_map(|b| match b {
            doc::Block::Cover { title, .. } => Some(title.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "DRP".into());
    let mut d = doc::Document {
        meta: doc::DocMeta {
            title,
            institution: plan.organisation.institution.name.clone(),
            number: plan.control.number.clone(),
            version: plan.control.version,
            lang: plan.control.lang.clone(),
            classification: plan.organisation.document.classification.clone(),
            content_blake3: String::new(),
        },
        blocks,
    };
    d.meta.content_blake3 = d.content_hash();
    Ok(d)
}

/// The bytes of a document in a format.
pub fn render(d: &doc::Document, format: Format, generated_at: i64) -> Result<Vec<u8>, DrpError> {
    let lang = Lang::parse(&d.meta.lang).unwrap_or(Lang::Id);
    let l = labels::labels(lang);
    Ok(match format {
        Format::Md => doc::to_markdown(d).into_bytes(),
        Format::Html => html::render(d, &l).into_bytes(),
        Format::Pdf => pdf::render(d, &l, generated_at)?,
    })
}

/// A rendered plan, not yet recorded.
pub struct Produced {
    pub plan: PlanData,
    pub doc: doc::Document,
    pub format: Format,
    pub bytes: Vec<u8>,
}

/// Renders a gathered plan (no catalog access: run it outside the lock).
pub fn produce(plan: PlanData, templates: &template::Templates, format: Format) -> Result<Produced, DrpError> {
    let d = build_document(&plan, templates)?;
    let bytes = render(&d, format, plan.control.generated_at)?;
    Ok(Produced { plan, doc: d, format, bytes })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DrpError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes).map_err(io(format!("writing {}", tmp.display())))?;
    f.sync_all().map_err(io(format!("syncing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", dir.display())))?;
    }
    Ok(())
}

/// Stores the file, the tree and the plan data under `DATA/drp/` and
/// records the version (audited as `drp-generate`).
pub fn record(catalog: &mut Catalog, data_dir: &Path, p: &Produced) -> Result<DrpVersionRow, DrpError> {
    let dir = data_dir.join("drp");
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let c = &p.plan.control;
    let content = &p.doc.meta.content_blake3;
    let stem = format!("{}-v{}-{}-{}", c.kind, c.version, c.lang, &content[..16]);
    let file = format!("drp/{stem}.{}", p.format.ext());
    let tree = format!("drp/{stem}.content.json");
    let data = format!("drp/{stem}.data.json");
    write_atomic(&data_dir.join(&file), &p.bytes)?;
    write_atomic(&data_dir.join(&tree), &serde_json::to_vec_pretty(&p.doc).unwrap_or_default())?;
    write_atomic(&data_dir.join(&data), &serde_json::to_vec_pretty(&p.plan).unwrap_or_default())?;
    let file_blake3 = blake3::hash(&p.bytes).to_hex().to_string();
    let v = NewDrpVersion {
        version: c.version,
        kind: c.kind.clone(),
        subject: c.subject.clone(),
        number: c.number.clone(),
        lang: c.lang.clone(),
        format: p.format.ext().into(),
        generated_at: c.generated_at,
        generated_by: c.generated_by.clone(),
        data_as_of: c.data_as_of,
        generator_version: c.generator_version.clone(),
        content_blake3: content.clone(),
        file_blake3: file_blake3.clone(),
        file_path: file.clone(),
        content_path: tree,
    };
    let entry = NewAudit::new(
        &c.generated_by,
        "drp-generate",
        &format!("version {}", c.version),
        serde_json::json!({
            "kind": c.kind, "subject": c.subject, "number": c.number, "lang": c.lang, "format": p.format.ext(),
            "content_blake3": content, "file_blake3": file_blake3, "file": file,
            "findings": p.plan.findings.len(),
        }),
    );
    catalog.audited(&entry, |cat| cat.drp_insert(&v))?;
    Ok(catalog.drp_version(c.version)?)
}

/// Which document to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The disaster recovery plan.
    Plan,
    /// The integrity (scrub and audit chain) report.
    Integrity,
    /// The report of one drill, by id.
    Drill(String),
}

impl Kind {
    /// From `plan`, `integrity` or `drill` with the drill id.
    pub fn parse(kind: &str, drill: Option<&str>) -> Result<Self, DrpError> {
        match (kind, drill) {
            ("plan", None) => Ok(Kind::Plan),
            ("integrity", None) => Ok(Kind::Integrity),
            ("drill", Some(id)) if !id.trim().is_empty() => Ok(Kind::Drill(id.trim().to_owned())),
            ("drill", _) => Err(DrpError::Invalid("a drill report needs the drill id".into())),
            ("plan" | "integrity", Some(_)) => Err(DrpError::Invalid("a drill id is only for --kind drill".into())),
            (other, _) => Err(DrpError::Invalid(format!("kind {other:?}: use plan, integrity or drill"))),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Kind::Plan => "plan",
            Kind::Integrity => "integrity",
            Kind::Drill(_) => "drill",
        }
    }
}

/// Gathers, renders and records one plan version, taking the catalog
/// only for gathering and recording. `lock` gives access to the catalog.
pub fn generate<C: std::ops::DerefMut<Target = Catalog>>(
    lock: impl Fn() -> C,
    settings: &DrpSettings,
    lang: Lang,
    format: Format,
    actor: &str,
    now: i64,
) -> Result<(DrpVersionRow, Vec<u8>), DrpError> {
    generate_kind(lock, settings, &Kind::Plan, lang, format, actor, now)
}

/// [`generate`] for any document kind (plan, integrity report, drill report).
pub fn generate_kind<C: std::ops::DerefMut<Target = Catalog>>(
    lock: impl Fn() -> C,
    settings: &DrpSettings,
    kind: &Kind,
    lang: Lang,
    format: Format,
    actor: &str,
    now: i64,
) -> Result<(DrpVersionRow, Vec<u8>), DrpError> {
    let org = settings.organisation()?;
    let templates = settings.templates();
    for _ in 0..3 {
        let mut input = settings.systems_input(&lock())?;
        if let Kind::Drill(id) = kind {
            // A catalog drill brings its activity log into the report.
            if let (None, Ok(n)) = (&settings.systems, id.parse::<i64>()) {
                let run = live::drill_run(&lock(), n)?;
                input.drills.retain(|d| &d.id != id);
                input.drills.extend(run);
            }
            if !input.drills.iter().any(|d| &d.id == id) {
                return Err(DrpError::Catalog(CatalogError::NotFound(format!("no drill {id:?}"))));
            }
        }
        let (mut plan, previous) = {
            let cat = lock();
            let version = cat.drp_next_version()?;
            let previous = cat.drp_versions()?.into_iter().find(|v| v.kind == "plan");
            (PlanData::gather(&cat, &org, input, now, version, lang.code(), actor)?, previous)
        };
        if let Some(prev) = previous.and_then(|v| stored_plan(&settings.data_dir, &v)) {
            plan.changes = changes::since(&prev, &plan);
        }
        plan.control.kind = kind.name().into();
        plan.control.number = gather::document_number(&org, kind.name(), plan.control.version, now);
        if let Kind::Drill(id) = kind {
            plan.control.subject = Some(id.clone());
        }
        let produced = produce(plan, &templates, format)?;
        let mut cat = lock();
        match record(&mut cat, &settings.data_dir, &produced) {
            Ok(row) => return Ok((row, produced.bytes)),
            Err(DrpError::Catalog(CatalogError::Ambiguous(_))) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DrpError::Invalid("could not get a plan version number (three generations raced); try again".into()))
}

/// The report of catalog drill `id`, rendered on request and NOT recorded
/// (the drills API, `pulihctl drill report`): the same template
/// (`drill.md.j2`) and renderers as `drp generate --kind drill`, which
/// records a numbered, verifiable version. Systems come from the live
/// definitions (a broken systems directory leaves the drill's own record);
/// without `organisation.toml` the report is still made, saying so.
pub fn drill_report<C: std::ops::DerefMut<Target = Catalog>>(
    lock: impl Fn() -> C,
    settings: &DrpSettings,
    id: i64,
    lang: Lang,
    format: Format,
    actor: &str,
    now: i64,
) -> Result<Vec<u8>, DrpError> {
    let org = match settings.organisation() {
        Ok(org) => org,
        Err(DrpError::Organisation(organisation::OrgError::Read { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Organisation::placeholder()
        }
        Err(e) => return Err(e),
    };
    let systems = crate::systems::Systems::load(&settings.systems_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "drill report without the system definitions");
        crate::systems::Systems::default()
    });
    let mut plan = {
        let cat = lock();
        let run = live::drill_run(&cat, id)?;
        let mut input = live::systems_input(&systems, &cat)?;
        input.drills.retain(|d| d.id != id.to_string());
        input.drills.extend(run);
        PlanData::gather(&cat, &org, input, now, 0, lang.code(), actor)?
    };
    plan.control.kind = "drill".into();
    plan.control.subject = Some(id.to_string());
    plan.control.recorded = false;
    plan.control.number = String::new();
    Ok(produce(plan, &settings.templates(), format)?.bytes)
}

/// What `drp verify` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyReport {
    /// The file is an unaltered generated version.
    pub ok: bool,
    pub file_blake3: String,
    /// What the file says it is.
    pub claimed: Option<doc::Claimed>,
    /// The matching (or claimed) version record.
    pub version: Option<DrpVersionRow>,
    /// For people: what is wrong, or what it is.
    pub message: String,
}

/// Checks `bytes` against the versions the catalog recorded; `stored`
/// reads a recorded version's canonical tree (local file or API).
pub fn verify(
    bytes: &[u8],
    versions: &[DrpVersionRow],
    stored: impl Fn(&DrpVersionRow) -> Option<doc::Document>,
) -> VerifyReport {
    let file_blake3 = blake3::hash(bytes).to_hex().to_string();
    let claimed = doc::find_marker(bytes);
    let by_file = versions.iter().find(|v| v.file_blake3 == file_blake3);
    let report = |ok, version: Option<&DrpVersionRow>, message: String| VerifyReport {
        ok,
        file_blake3: file_blake3.clone(),
        claimed: claimed.clone(),
        version: version.cloned(),
        message,
    };
    if let Some(v) = by_file {
        if claimed.as_ref().is_some_and(|c| c.content_blake3 != v.content_blake3 || c.version != v.version) {
            return report(
                false,
                Some(v),
                format!("the file matches version {} but its marker disagrees with the record", v.version),
            );
        }
        match stored(v) {
            Some(d) if d.content_hash() == v.content_blake3 => report(
                true,
                Some(v),
                format!(
                    "unaltered: version {} ({}, {} {}), content blake3 {}",
                    v.version, v.number, v.lang, v.format, v.content_blake3
                ),
            ),
            Some(_) => report(
                false,
                Some(v),
                format!("the stored content of version {} no longer matches its recorded hash", v.version),
            ),
            None => report(false, Some(v), format!("the stored content of version {} is missing", v.version)),
        }
    } else {
        match &claimed {
            Some(c) => match versions.iter().find(|v| v.version == c.version) {
                Some(v) => report(
                    false,
                    Some(v),
                    format!(
                        "ALTERED: the file claims to be version {} ({}) but its blake3 {} is not the recorded {}",
                        v.version, v.number, file_blake3, v.file_blake3
                    ),
                ),
                None => report(
                    false,
                    None,
                    format!("the file claims version {}, which this controller never generated", c.version),
                ),
            },
            None => {
                report(false, None, "not a plan generated by this controller (no Pulih marker, unknown hash)".into())
            }
        }
    }
}

/// Reads the [`PlanData`] a recorded version was generated from.
pub fn stored_plan(data_dir: &Path, v: &DrpVersionRow) -> Option<PlanData> {
    let path = data_dir.join(v.content_path.strip_suffix(".content.json")?.to_owned() + ".data.json");
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Reads a recorded version's canonical tree from the data directory.
pub fn stored_document(data_dir: &Path, v: &DrpVersionRow) -> Option<doc::Document> {
    let bytes = std::fs::read(data_dir.join(&v.content_path)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// One section's change between two versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SectionDiff {
    pub section: String,
    /// `added`, `removed`, `changed`.
    pub status: String,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

fn section_lines(blocks: &[&doc::Block]) -> Vec<String> {
    let d = doc::Document {
        meta: doc::DocMeta {
            title: String::new(),
            institution: String::new(),
            number: String::new(),
            version: 0,
            lang: String::new(),
            classification: String::new(),
            content_blake3: String::new(),
        },
        blocks: blocks.iter().map(|b| (*b).clone()).collect(),
    };
    let md = doc::to_markdown(&d);
    md.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("<!-- pulih-drp")).map(str::to_owned).collect()
}

/// What changed from `a` to `b`, section by section (level-1/2 headings).
pub fn diff(a: &doc::Document, b: &doc::Document) -> Vec<SectionDiff> {
    let sa = a.sections();
    let sb = b.sections();
    let mut out = Vec::new();
    for (title, blocks) in &sb {
        let lb = section_lines(blocks);
        match sa.iter().find(|(t, _)| t == title) {
            None => {
                out.push(SectionDiff { section: title.clone(), status: "added".into(), removed: vec![], added: lb })
            }
            Some((_, ablocks)) => {
                let la = section_lines(ablocks);
                if la != lb {
                    let removed = la.iter().filter(|l| !lb.contains(l)).cloned().collect();
                    let added = lb.iter().filter(|l| !la.contains(l)).cloned().collect();
                    out.push(SectionDiff { section: title.clone(), status: "changed".into(), removed, added });
                }
            }
        }
    }
    for (title, blocks) in &sa {
        if !sb.iter().any(|(t, _)| t == title) {
            out.push(SectionDiff {
                section: title.clone(),
                status: "removed".into(),
                removed: section_lines(blocks),
                added: vec![],
            });
        }
    }
    out
}

/// The diff as text for people.
pub fn diff_text(a: i64, b: i64, d: &[SectionDiff]) -> String {
    if d.is_empty() {
        return format!("versions {a} and {b} have the same content\n");
    }
    let mut o = format!("changes from version {a} to version {b}: {} section(s)\n", d.len());
    for s in d {
        o.push_str(&format!("\n== {} ({})\n", s.section, s.status));
        for l in &s.removed {
            o.push_str(&format!("- {l}\n"));
        }
        for l in &s.added {
            o.push_str(&format!("+ {l}\n"));
        }
    }
    o
}
