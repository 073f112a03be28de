//! Rendering the plan's templates (MiniJinja) into the document markup.
//!
//! Templates live in `drp-templates/<lang>/` and are read at run time from
//! the configured directory (`[drp] templates` in controller.toml), so an
//! institution edits its wording without recompiling. A file missing there
//! falls back to the copy built into the binary, so a fresh install works.
//! Errors name the template file and line.
//!
//! Filters, in the template's language: `date`, `datetime`, `dur`, `bytes`,
//! `decimal`, `cell` (safe in a table cell), `pad(width)` (spaces up to a
//! width, for text diagrams), `fenced` (a code block that holds any text),
//! `secs` (seconds with one decimal); functions: `agency(code)`, `last_drill(system)`,
//! `drills(system)`, `findings_of(subject)`, `system_of(agent, dataset)`.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use super::format::{self, Lang};
use super::model::PlanData;

/// The templates built into the binary: (name, text).
pub const EMBEDDED: &[(&str, &str)] = &[
    ("id/plan.md.j2", include_str!("../../../drp-templates/id/plan.md.j2")),
    ("en/plan.md.j2", include_str!("../../../drp-templates/en/plan.md.j2")),
    ("id/integrity.md.j2", include_str!("../../../drp-templates/id/integrity.md.j2")),
    ("en/integrity.md.j2", include_str!("../../../drp-templates/en/integrity.md.j2")),
    ("id/drill.md.j2", include_str!("../../../drp-templates/id/drill.md.j2")),
    ("en/drill.md.j2", include_str!("../../../drp-templates/en/drill.md.j2")),
];

/// A template failed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {file}:{line}: {message}")]
    At { file: String, line: usize, message: String },
    #[error("template {file}: {message}")]
    File { file: String, message: String },
}

/// Where templates come from.
#[derive(Debug, Clone)]
pub struct Templates {
    /// Directory with `id/`, `en/`; `None` = only the built-in copies.
    pub dir: Option<PathBuf>,
}

impl Templates {
    fn file_of(&self, name: &str) -> String {
        match &self.dir {
            Some(d) if d.join(name).exists() => d.join(name).display().to_string(),
            _ => format!("(built-in) drp-templates/{name}"),
        }
    }

    /// Renders `<kind>.md.j2` (plan, integrity, drill) of the language into markup.
    pub fn render(&self, lang: Lang, plan: &PlanData) -> Result<String, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        let dir = self.dir.clone();
        env.set_loader(move |name: &str| {
            if name.contains("..") || name.starts_with('/') {
                return Ok(None);
            }
            if let Some(d) = &dir {
                let p = d.join(name);
                if p.exists() {
                    return std::fs::read_to_string(&p).map(Some).map_err(|e| {
                        minijinja::Error::new(ErrorKind::InvalidOperation, format!("reading {}: {e}", p.display()))
                    });
                }
            }
            Ok(EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, t)| (*t).to_owned()))
        });
        let off = plan.organisation.document.utc_offset_secs;
        let tz = plan.organisation.document.timezone_label.clone();
        env.add_filter("date", move |v: i64| format::date(lang, v, off));
        env.add_filter("datetime", move |v: i64| format::datetime(lang, v, off, &tz));
        env.add_filter("dur", move |v: i64| format::dur(lang, v));
        env.add_filter("bytes", move |v: u64| format::bytes(lang, v));
        env.add_filter("decimal", move |v: f64| format::decimal(lang, v));
        env.add_filter("cell", |v: Value| {
            let s = if v.is_none() || v.is_undefined() { String::new() } else { v.to_string() };
            s.replace('|', "\\|").replace('\n', " ")
        });
        env.add_filter("fenced", |v: String| super::doc::fenced(&v));
        env.add_filter("secs", move |v: f64| format::decimal(lang, v));
        env.add_filter("pad", |v: Value, width: usize| {
            let s = if v.is_none() || v.is_undefined() { String::new() } else { v.to_string() };
            let n = s.chars().count();
            if n >= width {
                s
            } else {
                format!("{s}{}", " ".repeat(width - n))
            }
        });
        let systems: Vec<(String, String, String)> = plan
            .systems
            .iter()
            .flat_map(|s| s.datasets.iter().map(|d| (d.agent.clone(), d.dataset.clone(), s.name.clone())))
            .collect();
        env.add_function("system_of", move |agent: String, dataset: String| {
            systems
                .iter()
                .find(|(a, d, _)| *a == agent && *d == dataset)
                .map_or(Value::from(()), |(_, _, s)| Value::from(s.clone()))
        });
        let org = plan.organisation.clone();
        env.add_function("agency", move |code: String| org.agency_name(&code));
        let drills = plan.drills.clone();
        let d2 = drills.clone();
        env.add_function("drills", move |system: String| {
            let mut v: Vec<_> = d2.iter().filter(|d| d.system == system).cloned().collect();
            v.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
            Value::from_serialize(&v)
        });
        env.add_function("last_drill", move |system: String| {
            let best = drills
                .iter()
                .filter(|d| d.system == system)
                .max_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
            best.map_or(Value::from(()), Value::from_serialize)
        });
        let findings = plan.findings.clone();
        env.add_function("findings_of", move |subject: String| {
            let v: Vec<_> = findings
                .iter()
                .filter(|f| f.subject == subject || f.subject.starts_with(&format!("{subject}/")))
                .cloned()
                .collect();
            Value::from_serialize(&v)
        });
        let kind = match plan.control.kind.as_str() {
            k @ ("plan" | "integrity" | "drill") => k,
            other => return Err(TemplateError::File { file: other.into(), message: "unknown document kind".into() }),
        };
        let name = format!("{}/{kind}.md.j2", lang.code());
        let wrap = |e: minijinja::Error| {
            let file = e.name().map_or_else(|| self.file_of(&name), |n| self.file_of(n));
            let mut message = e.kind().to_string();
            if let Some(d) = e.detail() {
                message = format!("{message}: {d}");
            }
            match e.line() {
                Some(line) => TemplateError::At { file, line, message },
                None => TemplateError::File { file, message },
            }
        };
        let tmpl = env.get_template(&name).map_err(wrap)?;
        // A drill covers one or more systems: one DrillFacts each, same id.
        let runs: Vec<_> = match &plan.control.subject {
            Some(id) => plan
                .drills
                .iter()
                .filter(|d| &d.id == id)
                .map(|d| {
                    let system = plan.systems.iter().find(|s| s.name == d.system);
                    minijinja::context! { drill => Value::from_serialize(d), system => Value::from_serialize(system) }
                })
                .collect(),
            None => Vec::new(),
        };
        let drill = plan.control.subject.as_ref().and_then(|id| plan.drills.iter().find(|d| &d.id == id));
        let system = drill.and_then(|d| plan.systems.iter().find(|s| s.name == d.system));
        tmpl.render(minijinja::context! {
            plan => Value::from_serialize(plan),
            drill => Value::from_serialize(drill),
            system => Value::from_serialize(system),
            runs => Value::from(runs),
        })
        .map_err(wrap)
    }
}

/// Directories of installed templates tried when none is configured
/// (`deploy/install.sh` installs under `$PREFIX/share`).
pub const DEFAULT_DIRS: [&str; 2] = ["/usr/local/share/pulih/drp-templates", "/usr/share/pulih/drp-templates"];

/// Resolves the configured directory: a configured one must exist; the
/// default is used only when present.
pub fn resolve_dir(configured: Option<&Path>) -> Result<Option<PathBuf>, TemplateError> {
    match configured {
        Some(p) if p.is_dir() => Ok(Some(p.to_owned())),
        Some(p) => Err(TemplateError::File {
            file: p.display().to_string(),
            message: "[drp] templates is not a directory".into(),
        }),
        None => Ok(DEFAULT_DIRS.iter().map(PathBuf::from).find(|p| p.is_dir())),
    }
}
