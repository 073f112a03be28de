//! `pulih-controller drp ...`: the DR plan document on the DRC host.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use pulih_controller::catalog::{actor_local, now_secs, NewAudit};
use pulih_controller::datadir::DataDir;
use pulih_controller::drp::{self, Format, Lang};
use pulih_core::out;

use crate::DataDirArg;

#[derive(Subcommand)]
pub enum DrpCmd {
    /// Generate a new version of the plan from the catalog and organisation.toml.
    Generate {
        #[command(flatten)]
        dir: DataDirArg,
        /// id (Bahasa Indonesia, default) or en.
        #[arg(long, default_value = "id")]
        lang: String,
        /// pdf (default), html or md.
        #[arg(long, default_value = "pdf")]
        format: String,
        /// plan (default), integrity (report) or drill (report, with --drill).
        #[arg(long, default_value = "plan")]
        kind: String,
        /// The drill a drill report is about.
        #[arg(long)]
        drill: Option<String>,
        /// Also write the file here (it is always kept under DATA_DIR/drp/).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List generated versions and the version in force.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// Check whether a file is an unaltered generated version (exit 2 when not).
    Verify {
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// Record the approval of a version (who approved it and their position).
    Approve {
        version: i64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        position: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// What changed between two versions, section by section.
    Diff {
        v1: i64,
        v2: i64,
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// Validate organisation.toml and render the templates without recording anything.
    Check {
        #[command(flatten)]
        dir: DataDirArg,
    },
}

pub fn run(cmd: DrpCmd) -> Result<ExitCode> {
    match cmd {
        DrpCmd::Generate { dir, lang, format, kind, drill, out, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let cfg = dd.config()?;
            let settings = dd.drp_settings(&cfg)?;
            let lang = Lang::parse(&lang).with_context(|| format!("--lang {lang}: use id or en"))?;
            let format = Format::parse(&format).with_context(|| format!("--format {format}: use pdf, html or md"))?;
            let kind = drp::Kind::parse(&kind, drill.as_deref())?;
            let cat = std::sync::Mutex::new(dd.catalog()?);
            let (row, bytes) = drp::generate_kind(
                || cat.lock().unwrap_or_else(|e| e.into_inner()),
                &settings,
                &kind,
                lang,
                format,
                &actor_local(),
                now_secs(),
            )?;
            if let Some(o) = &out {
                std::fs::write(o, &bytes).with_context(|| format!("writing {}", o.display()))?;
            }
            if json {
                out!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                out!("Version {} generated: {}", row.version, row.number);
                out!(
                    "File:            {}",
                    out.as_ref().map_or_else(|| dd.root.join(&row.file_path), |o| o.clone()).display()
                );
                out!("Content blake3:  {}", row.content_blake3);
                out!("File blake3:     {}", row.file_blake3);
            }
        }
        DrpCmd::List { dir, json } => {
            let cat = DataDir::new(&dir.data_dir).catalog()?;
            let (versions, in_force) = (cat.drp_versions()?, cat.drp_in_force()?);
            if json {
                out!("{}", serde_json::json!({"versions": versions, "in_force": in_force}));
            } else {
                out!("{}", drp::format::versions_table(&versions, in_force.as_ref()));
            }
        }
        DrpCmd::Verify { file, dir, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let cat = dd.catalog()?;
            let versions = cat.drp_versions()?;
            let report = drp::verify(&bytes, &versions, |v| drp::stored_document(&dd.root, v));
            let outcome: Result<(), String> = if report.ok { Ok(()) } else { Err(report.message.clone()) };
            let entry = NewAudit::new(
                &actor_local(),
                "drp-verify",
                &file.display().to_string(),
                serde_json::json!({"file_blake3": report.file_blake3}),
            );
            let mut cat = cat;
            if let Err(e) = cat.audit(&entry, &outcome) {
                tracing::warn!(error = %e, "drp verify could not be audited");
            }
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}: {}", file.display(), report.message);
            }
            if !report.ok {
                return Ok(ExitCode::from(2));
            }
        }
        DrpCmd::Approve { version, name, position, dir } => {
            let dd = DataDir::new(&dir.data_dir);
            let cfg = dd.config()?;
            let org = dd.drp_settings(&cfg)?.organisation()?;
            let (name, position) = (name.trim().to_owned(), position.trim().to_owned());
            if name.is_empty() || position.is_empty() {
                bail!("--name and --position must not be empty");
            }
            let now = now_secs();
            let next = now + org.document.review_period_secs;
            let entry = NewAudit::new(
                &actor_local(),
                "drp-approve",
                &format!("version {version}"),
                serde_json::json!({"name": name, "position": position, "next_review": next}),
            );
            let row = dd.catalog()?.audited(&entry, |c| c.drp_approve(version, &name, &position, now, next))?;
            out!(
                "Version {} ({}) approved by {name}, {position}; next review by {}",
                row.version,
                row.number,
                drp::format::utc_day(next)
            );
        }
        DrpCmd::Diff { v1, v2, dir, json } => {
            let dd = DataDir::new(&dir.data_dir);
            let cat = dd.catalog()?;
            let load = |v: i64| -> Result<drp::doc::Document> {
                let row = cat.drp_version(v)?;
                drp::stored_document(&dd.root, &row)
                    .with_context(|| format!("the stored content of version {v} ({}) cannot be read", row.content_path))
            };
            let d = drp::diff(&load(v1)?, &load(v2)?);
            if json {
                out!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                out!("{}", drp::diff_text(v1, v2, &d).trim_end());
            }
        }
        DrpCmd::Check { dir } => {
            let dd = DataDir::new(&dir.data_dir);
            let cfg = dd.config()?;
            let settings = dd.drp_settings(&cfg)?;
            let org = settings.organisation()?;
            let cat = dd.catalog()?;
            let templates = settings.templates();
            for lang in [Lang::Id, Lang::En] {
                let input = settings.systems_input(&cat)?;
                let plan = drp::PlanData::gather(
                    &cat,
                    &org,
                    input,
                    now_secs(),
                    cat.drp_next_version()?,
                    lang.code(),
                    &actor_local(),
                )?;
                let d = drp::build_document(&plan, &templates)?;
                out!("{}: {} section(s), {} finding(s): ok", lang.code(), d.headings().count(), plan.findings.len());
            }
            out!(
                "organisation.toml and templates are valid ({})",
                settings.templates.as_ref().map_or("built-in templates".into(), |p| p.display().to_string())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
