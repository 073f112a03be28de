//! The drill report: one document per drill, in Markdown or self-contained
//! HTML (no external files), in formal Bahasa Indonesia or English. Built
//! only from the catalog rows, so a report can be rendered again at any
//! time and says exactly what was recorded.

use crate::catalog::{rfc3339_ns, DrillRow, DrillStepRow, DrillSystemRow};
use crate::units::format_duration;

use super::run::secs_text;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Html,
}

/// Language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Id,
    En,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "md" | "markdown" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            _ => Err(format!("format {s:?}: use md or html")),
        }
    }
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "id" => Ok(Lang::Id),
            "en" => Ok(Lang::En),
            _ => Err(format!("lang {s:?}: use id or en")),
        }
    }
}

/// Texts of one language.
struct T {
    title: &'static str,
    drill: &'static str,
    started_by: &'static str,
    trigger_manual: &'static str,
    trigger_scheduled: &'static str,
    started: &'static str,
    ended: &'static str,
    verdict: &'static str,
    system: &'static str,
    opd: &'static str,
    owner: &'static str,
    place: &'static str,
    snapshots: &'static str,
    dataset: &'static str,
    snapshot: &'static str,
    data_time: &'static str,
    restored: &'static str,
    files: &'static str,
    verify: &'static str,
    targets: &'static str,
    measure: &'static str,
    achieved: &'static str,
    target: &'static str,
    met: &'static str,
    missed: &'static str,
    not_measured: &'static str,
    steps: &'static str,
    kind: &'static str,
    name: &'static str,
    outcome: &'static str,
    duration: &'static str,
    outputs: &'static str,
    reasons: &'static str,
    none: &'static str,
    footer: &'static str,
}

const ID: T = T {
    title: "Laporan Uji Pemulihan Bencana",
    drill: "Uji pemulihan",
    started_by: "Dimulai oleh",
    trigger_manual: "manual",
    trigger_scheduled: "terjadwal",
    started: "Mulai",
    ended: "Selesai",
    verdict: "Hasil",
    system: "Sistem",
    opd: "Perangkat daerah (OPD)",
    owner: "Penanggung jawab sistem",
    place: "Tempat pemulihan",
    snapshots: "Snapshot yang dipulihkan",
    dataset: "Dataset",
    snapshot: "Snapshot",
    data_time: "Waktu data",
    restored: "Dipulihkan",
    files: "berkas",
    verify: "Verifikasi",
    targets: "Capaian RTO dan RPO",
    measure: "Ukuran",
    achieved: "Capaian",
    target: "Target",
    met: "terpenuhi",
    missed: "tidak terpenuhi",
    not_measured: "tidak terukur",
    steps: "Langkah",
    kind: "Jenis",
    name: "Nama",
    outcome: "Hasil",
    duration: "Durasi",
    outputs: "Keluaran pemeriksaan kesehatan",
    reasons: "Alasan",
    none: "tidak ada",
    footer: "Dibuat oleh Pulih dari catatan katalog pengendali.",
};

const EN: T = T {
    title: "Disaster Recovery Drill Report",
    drill: "Drill",
    started_by: "Started by",
    trigger_manual: "manual",
    trigger_scheduled: "scheduled",
    started: "Started",
    ended: "Ended",
    verdict: "Verdict",
    system: "System",
    opd: "Agency (OPD)",
    owner: "System owner",
    place: "Restore place",
    snapshots: "Snapshots restored",
    dataset: "Dataset",
    snapshot: "Snapshot",
    data_time: "Data time",
    restored: "Restored",
    files: "files",
    verify: "Verification",
    targets: "RTO and RPO achieved",
    measure: "Measure",
    achieved: "Achieved",
    target: "Target",
    met: "met",
    missed: "missed",
    not_measured: "not measured",
    steps: "Steps",
    kind: "Kind",
    name: "Name",
    outcome: "Outcome",
    duration: "Duration",
    outputs: "Health check outputs",
    reasons: "Reasons",
    none: "none",
    footer: "Made by Pulih from the controller's catalog records.",
};

fn outcome_word(lang: Lang, o: &str) -> &str {
    match (lang, o) {
        (Lang::Id, "passed") => "LULUS",
        (Lang::Id, "partial") => "SEBAGIAN",
        (Lang::Id, "failed") => "GAGAL",
        (Lang::Id, "running") => "BERJALAN",
        (Lang::Id, "skipped") => "dilewati",
        (Lang::En, "passed") => "PASSED",
        (Lang::En, "partial") => "PARTIAL",
        (Lang::En, "failed") => "FAILED",
        (Lang::En, "running") => "RUNNING",
        (Lang::En, "skipped") => "skipped",
        _ => o,
    }
}

fn kind_word(lang: Lang, k: &str) -> &str {
    match (lang, k) {
        (Lang::Id, "restore") => "pemulihan",
        (Lang::Id, "verify") => "verifikasi",
        (Lang::Id, "check") => "pemeriksaan",
        (Lang::Id, "activation") => "aktivasi",
        (Lang::Id, "teardown") => "pembongkaran",
        _ => k,
    }
}

fn time(ns: Option<i64>) -> String {
    ns.map_or("-".into(), |n| {
        let t = rfc3339_ns(n);
        format!("{}Z", &t[..t.len().min(19)])
    })
}

/// A neutral document model both formats render.
enum Block {
    H1(String),
    H2(String),
    H3(String),
    Para(String),
    Table(Vec<String>, Vec<Vec<String>>),
    List(Vec<String>),
    Pre(String, String),
}

fn blocks(lang: Lang, d: &DrillRow, systems: &[DrillSystemRow], steps: &[DrillStepRow]) -> Vec<Block> {
    let t = if lang == Lang::Id { &ID } else { &EN };
    let mut b = vec![Block::H1(format!("{} #{}", t.title, d.id))];
    let trigger = if d.trigger == "scheduled" { t.trigger_scheduled } else { t.trigger_manual };
    b.push(Block::Table(
        vec![String::new(), String::new()],
        vec![
            vec![t.drill.into(), format!("#{} ({trigger})", d.id)],
            vec![t.started_by.into(), d.actor.clone()],
            vec![t.started.into(), time(Some(d.started_ns))],
            vec![t.ended.into(), time(d.ended_ns)],
            vec![t.verdict.into(), outcome_word(lang, &d.outcome).into()],
        ],
    ));
    for s in systems {
        b.push(Block::H2(format!("{}: {} ({})", t.system, s.title, s.system)));
        b.push(Block::Table(
            vec![String::new(), String::new()],
            vec![
                vec![t.opd.into(), s.opd.clone()],
                vec![t.owner.into(), s.owner.clone().unwrap_or_else(|| "-".into())],
                vec![t.place.into(), s.restore_place.clone()],
                vec![
                    t.restored.into(),
                    format!("{} {}, {}", s.files_restored, t.files, crate::units::human_bytes(s.bytes_restored)),
                ],
                vec![t.verify.into(), s.verify_result.clone().unwrap_or_else(|| "-".into())],
                vec![t.verdict.into(), outcome_word(lang, &s.outcome).into()],
            ],
        ));
        b.push(Block::H3(t.snapshots.into()));
        if s.snapshots.is_empty() {
            b.push(Block::Para(t.none.into()));
        } else {
            b.push(Block::Table(
                vec![t.dataset.into(), t.snapshot.into(), t.data_time.into()],
                s.snapshots
                    .iter()
                    .map(|u| {
                        vec![
                            format!("{}/{} → {}", u.agent, u.dataset, u.subdir),
                            u.snapshot.clone(),
                            time(Some(u.started_ns)),
                        ]
                    })
                    .collect(),
            ));
        }
        b.push(Block::H3(t.targets.into()));
        let judge = |achieved: Option<f64>, target: i64| match achieved {
            None => t.not_measured.to_string(),
            Some(a) if a <= target as f64 => t.met.to_string(),
            Some(_) => t.missed.to_string(),
        };
        b.push(Block::Table(
            vec![t.measure.into(), t.achieved.into(), t.target.into(), t.verdict.into()],
            vec![
                vec![
                    "RTO".into(),
                    s.rto_achieved_secs.map_or("-".into(), secs_text),
                    format_duration(s.rto_target_secs),
                    judge(s.rto_achieved_secs, s.rto_target_secs),
                ],
                vec![
                    "RPO".into(),
                    s.rpo_achieved_secs.map_or("-".into(), secs_text),
                    format_duration(s.rpo_target_secs),
                    judge(s.rpo_achieved_secs, s.rpo_target_secs),
                ],
            ],
        ));
        let mine: Vec<&DrillStepRow> = steps.iter().filter(|x| x.system == s.system).collect();
        b.push(Block::H3(t.steps.into()));
        if mine.is_empty() {
            b.push(Block::Para(t.none.into()));
        } else {
            b.push(Block::Table(
                vec!["#".into(), t.kind.into(), t.name.into(), t.started.into(), t.duration.into(), t.outcome.into()],
                mine.iter()
                    .map(|x| {
                        vec![
                            x.seq.to_string(),
                            kind_word(lang, &x.kind).into(),
                            x.name.clone(),
                            time(Some(x.started_ns)),
                            x.ended_ns.map_or("-".into(), |e| secs_text((e - x.started_ns) as f64 / 1e9)),
                            outcome_word(lang, &x.outcome).into(),
                        ]
                    })
                    .collect(),
            ));
        }
        let outputs: Vec<&&DrillStepRow> =
            mine.iter().filter(|x| matches!(x.kind.as_str(), "check" | "verify") && !x.output.is_empty()).collect();
        if !outputs.is_empty() {
            b.push(Block::H3(t.outputs.into()));
            for x in outputs {
                b.push(Block::Pre(format!("{} — {}", kind_word(lang, &x.kind), x.name), x.output.clone()));
            }
        }
        b.push(Block::H3(t.reasons.into()));
        if s.reasons.is_empty() {
            b.push(Block::Para(t.none.into()));
        } else {
            b.push(Block::List(s.reasons.clone()));
        }
    }
    b.push(Block::Para(t.footer.into()));
    b
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(blocks: &[Block]) -> String {
    let mut o = String::new();
    for b in blocks {
        match b {
            Block::H1(s) => o.push_str(&format!("# {s}\n\n")),
            Block::H2(s) => o.push_str(&format!("## {s}\n\n")),
            Block::H3(s) => o.push_str(&format!("### {s}\n\n")),
            Block::Para(s) => o.push_str(&format!("{s}\n\n")),
            Block::List(items) => {
                for i in items {
                    o.push_str(&format!("- {}\n", i.replace('\n', " ")));
                }
                o.push('\n');
            }
            Block::Table(head, rows) => {
                o.push_str(&format!("| {} |\n", head.iter().map(|h| md_cell(h)).collect::<Vec<_>>().join(" | ")));
                o.push_str(&format!("|{}\n", "---|".repeat(head.len())));
                for r in rows {
                    o.push_str(&format!("| {} |\n", r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")));
                }
                o.push('\n');
            }
            Block::Pre(title, text) => {
                // A fence longer than any backtick run inside the output.
                let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
                let fence = "`".repeat(longest.max(2) + 1);
                o.push_str(&format!("**{}**\n\n{fence}\n{}\n{fence}\n\n", md_cell(title), text.trim_end()));
            }
        }
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html(lang: Lang, blocks: &[Block]) -> String {
    let title = match blocks.first() {
        Some(Block::H1(s)) => s.clone(),
        _ => String::new(),
    };
    let mut o = format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
         body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}\n\
         table{{border-collapse:collapse;margin:0.5em 0 1em}}td,th{{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left;vertical-align:top}}\n\
         pre{{background:#f4f4f4;padding:0.6em;overflow-x:auto;white-space:pre-wrap}}\n\
         </style>\n</head>\n<body>\n",
        if lang == Lang::Id { "id" } else { "en" },
        esc(&title)
    );
    for b in blocks {
        match b {
            Block::H1(s) => o.push_str(&format!("<h1>{}</h1>\n", esc(s))),
            Block::H2(s) => o.push_str(&format!("<h2>{}</h2>\n", esc(s))),
            Block::H3(s) => o.push_str(&format!("<h3>{}</h3>\n", esc(s))),
            Block::Para(s) => o.push_str(&format!("<p>{}</p>\n", esc(s))),
            Block::List(items) => {
                o.push_str("<ul>\n");
                for i in items {
                    o.push_str(&format!("<li>{}</li>\n", esc(i)));
                }
                o.push_str("</ul>\n");
            }
            Block::Table(head, rows) => {
                o.push_str("<table>\n");
                if head.iter().any(|h| !h.is_empty()) {
                    o.push_str(&format!(
                        "<tr>{}</tr>\n",
                        head.iter().map(|h| format!("<th>{}</th>", esc(h))).collect::<String>()
                    ));
                }
                for r in rows {
                    o.push_str(&format!(
                        "<tr>{}</tr>\n",
                        r.iter().map(|c| format!("<td>{}</td>", esc(c))).collect::<String>()
                    ));
                }
                o.push_str("</table>\n");
            }
            Block::Pre(title, text) => {
                o.push_str(&format!("<p><strong>{}</strong></p>\n<pre>{}</pre>\n", esc(title), esc(text)))
            }
        }
    }
    o.push_str("</body>\n</html>\n");
    o
}

/// Renders the report of one drill.
pub fn render(format: Format, lang: Lang, d: &DrillRow, systems: &[DrillSystemRow], steps: &[DrillStepRow]) -> String {
    let b = blocks(lang, d, systems, steps);
    match format {
        Format::Markdown => markdown(&b),
        Format::Html => html(lang, &b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_and_languages_carry_the_verdict_and_escape_outputs() {
        let d = DrillRow {
            id: 7,
            trigger: "manual".into(),
            actor: "token:alice".into(),
            request: "{}".into(),
            started_ns: 1_700_000_000_000_000_000,
            ended_ns: Some(1_700_000_010_000_000_000),
            outcome: "partial".into(),
        };
        let s = DrillSystemRow {
            drill_id: 7,
            system: "simpeg".into(),
            title: "SIMPEG".into(),
            opd: "BKPSDM".into(),
            owner: Some("Budi".into()),
            restore_place: "sandbox".into(),
            snapshots: vec![],
            bytes_restored: 10,
            files_restored: 1,
            verify_result: Some("ok".into()),
            rto_achieved_secs: Some(2.5),
            rpo_achieved_secs: Some(30.0),
            rto_target_secs: 1,
            rpo_target_secs: 3600,
            outcome: "partial".into(),
            reasons: vec!["RTO target missed".into()],
            ended_ns: None,
        };
        let step = DrillStepRow {
            seq: 1,
            system: "simpeg".into(),
            kind: "check".into(),
            name: "db".into(),
            started_ns: d.started_ns,
            ended_ns: Some(d.started_ns + 2_000_000_000),
            outcome: "passed".into(),
            output: "<script>x</script> ```".into(),
        };
        let md = render(Format::Markdown, Lang::Id, &d, std::slice::from_ref(&s), std::slice::from_ref(&step));
        assert!(md.contains("SEBAGIAN") && md.contains("tidak terpenuhi") && md.contains("````"), "{md}");
        let h = render(Format::Html, Lang::En, &d, &[s], &[step]);
        assert!(h.contains("PARTIAL") && h.contains("&lt;script&gt;") && !h.contains("<script>"), "{h}");
    }
}
