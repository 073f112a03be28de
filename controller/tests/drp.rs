//! The DR plan document (issue 6) from fixed fixture data: golden files
//! for both languages in Markdown and HTML, the PDF read back with poppler
//! (`pdftotext`, `pdftoppm`), the HTML opened in headless Chromium, a
//! tampered file failing verification, and template errors with their
//! location.
//!
//! Fixtures: `tests/fixtures/drp/{healthy,gaps}.json` (PlanData, made by
//! `make_fixtures.py`); findings are recomputed from the facts. Golden
//! files: `tests/fixtures/drp/golden/`; regenerate with `UPDATE_GOLDEN=1`.
//!
//! The poppler and Chromium tests fail (not skip) when the tool is missing
//! and `CI` or `PULIH_REQUIRE_SYSTEMD=1` is set (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use pulih_controller::catalog::DrpVersionRow;
use pulih_controller::drp::template::Templates;
use pulih_controller::drp::{self, findings, Format, PlanData};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drp")
}

fn plan(name: &str, lang: &str) -> PlanData {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.json"))).unwrap();
    let mut p: PlanData = serde_json::from_str(&text).unwrap();
    p.control.lang = lang.into();
    p.findings = findings::compute(&p);
    p
}

fn builtin() -> Templates {
    Templates { dir: None }
}

fn document(name: &str, lang: &str) -> drp::doc::Document {
    drp::build_document(&plan(name, lang), &builtin()).unwrap()
}

fn golden(file: &str, actual: &str) {
    let path = fixtures().join("golden").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1 to create it", path.display()));
    if expected != actual {
        let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).map_or(0, |i| i + 1);
        panic!(
            "{} differs from the rendering (first difference at line {line}):\n expected: {:?}\n actual:   {:?}\nrun with UPDATE_GOLDEN=1 if the change is intended",
            path.display(),
            expected.lines().nth(line.saturating_sub(1)).unwrap_or(""),
            actual.lines().nth(line.saturating_sub(1)).unwrap_or("")
        );
    }
}

fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var("PULIH_REQUIRE_SYSTEMD").is_ok_and(|v| v == "1")
}

/// Whether `tool` runs; panics when it is missing and required.
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("-v").output().is_ok();
    if !found {
        assert!(!required(), "{tool} is not installed (apt-get install poppler-utils chromium; see .ci/run)");
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

#[test]
fn golden_markdown_and_html_in_both_languages() {
    for name in ["healthy", "gaps"] {
        for lang in ["id", "en"] {
            let d = document(name, lang);
            let md = String::from_utf8(drp::render(&d, Format::Md, 0).unwrap()).unwrap();
            golden(&format!("{name}-{lang}.md"), &md);
            let html = String::from_utf8(drp::render(&d, Format::Html, 0).unwrap()).unwrap();
            golden(&format!("{name}-{lang}.html"), &html);
            // The same content gives the same hash, whatever the format.
            assert_eq!(drp::doc::find_marker(md.as_bytes()).unwrap().content_blake3, d.meta.content_blake3);
            assert_eq!(drp::doc::find_marker(html.as_bytes()).unwrap().content_blake3, d.meta.content_blake3);
            assert!(md.contains(&d.meta.content_blake3) && html.contains(&d.meta.content_blake3));
        }
    }
}

#[test]
fn golden_integrity_and_drill_reports_in_both_languages() {
    for lang in ["id", "en"] {
        let mut p = plan("gaps", lang);
        p.control.kind = "integrity".into();
        let d = drp::build_document(&p, &builtin()).unwrap();
        let md = String::from_utf8(drp::render(&d, Format::Md, 0).unwrap()).unwrap();
        golden(&format!("integrity-gaps-{lang}.md"), &md);
        assert!(md.contains("T-") && md.contains("#3"), "integrity report lacks its findings or scrub");
        p.control.kind = "drill".into();
        p.control.subject = Some("drill-2026-040".into());
        let d = drp::build_document(&p, &builtin()).unwrap();
        let md = String::from_utf8(drp::render(&d, Format::Md, 0).unwrap()).unwrap();
        golden(&format!("drill-gaps-{lang}.md"), &md);
        assert!(md.contains("drill-2026-040") && md.contains("HTTP 502"));
        // The PDF renders too (signature without NIP, cover subtitle).
        assert!(drp::render(&d, Format::Pdf, 0).unwrap().starts_with(b"%PDF-"));
    }
}

/// A catalog drill's report carries its activity log and outputs; outputs
/// cannot break the markup (backticks) or the HTML (tags). Several systems
/// of one drill each get their section.
#[test]
fn drill_report_with_activity_log_escapes_outputs_in_every_format() {
    use pulih_controller::drp::model::{DrillDetail, DrillStep};
    for lang in ["id", "en"] {
        let mut p = plan("gaps", lang);
        p.control.kind = "drill".into();
        p.control.subject = Some("drill-2026-040".into());
        p.control.recorded = false;
        let mut second = p.drills.iter().find(|d| d.id == "drill-2026-041").unwrap().clone();
        second.id = "drill-2026-040".into();
        p.drills.push(second);
        let d = p.drills.iter_mut().find(|d| d.id == "drill-2026-040" && d.system == "sso").unwrap();
        d.detail = Some(DrillDetail {
            title: "SSO".into(),
            opd: "diskominfotik".into(),
            owner: Some("Budi".into()),
            rto_target_secs: 1,
            rpo_target_secs: 3600,
            outcome: "partial".into(),
            trigger: "manual".into(),
            run_outcome: "failed".into(),
            restore_place: "sandbox".into(),
            files_restored: 1,
            bytes_restored: 10,
            verify_result: Some("ok: 1 file match the snapshot".into()),
            rto_achieved: Some(2.5),
            rpo_achieved: Some(30.0),
            snapshots: vec![],
            steps: vec![DrillStep {
                seq: 1,
                kind: "check".into(),
                name: "db".into(),
                started_at: p.control.data_as_of - 60,
                duration_secs: Some(2.0),
                outcome: "passed".into(),
                output: "<script>x</script>\n```\nend".into(),
            }],
        });
        let doc = drp::build_document(&p, &builtin()).unwrap();
        let md = String::from_utf8(drp::render(&doc, Format::Md, 0).unwrap()).unwrap();
        let (overall, partial) = if lang == "id" { ("GAGAL", "SEBAGIAN") } else { ("FAILED", "PARTIAL") };
        assert!(md.contains(&format!("**{overall}**")) && md.contains(partial), "{md}");
        assert!(md.contains("````\n<script>x</script>\n```\nend\n````"), "{md}");
        assert!(md.contains("3.2 ") && md.contains("sipkd"), "second system of the drill missing: {md}");
        assert!(md.contains(if lang == "id" { "tidak bernomor" } else { "Number | none" }), "{md}");
        let html = String::from_utf8(drp::render(&doc, Format::Html, 0).unwrap()).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains(overall));
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;") && !html.contains("<script>"), "{html}");
        assert!(drp::render(&doc, Format::Pdf, 0).unwrap().starts_with(b"%PDF-"));
    }
}

#[test]
fn healthy_plan_states_no_serious_gap_and_the_gaps_plan_states_every_one() {
    let healthy = plan("healthy", "id");
    let serious: Vec<_> = healthy.findings.iter().filter(|f| f.severity != findings::Severity::Low).collect();
    assert!(serious.is_empty(), "{serious:#?}");
    let gaps = plan("gaps", "id");
    let codes: Vec<&str> = gaps.findings.iter().map(|f| f.code.as_str()).collect();
    for code in [
        "no-owner",
        "never-drilled",
        "drill-overdue",
        "drill-failed",
        "rto-missed",
        "rpo-missed",
        "rpo-missed-drill",
        "no-snapshot",
        "no-target",
        "dependency-cycle",
        "unrepaired-damage",
        "storage-outside-indonesia",
        "agent-silent",
        "certificate-expiring",
        "review-overdue",
        "audit-chain-broken",
        "scrub-overdue",
        "dataset-without-system",
        "no-training",
    ] {
        assert!(codes.contains(&code), "finding {code} missing from {codes:?}");
    }
    // Every finding appears in both languages, with its evidence.
    for lang in ["id", "en"] {
        let md = String::from_utf8(drp::render(&document("gaps", lang), Format::Md, 0).unwrap()).unwrap();
        for f in &gaps.findings {
            let ev = if lang == "id" { &f.evidence_id } else { &f.evidence_en };
            assert!(md.contains(&format!("| {} |", f.id)), "{lang}: {} missing", f.id);
            assert!(md.contains(&ev.replace('|', "\\|")), "{lang}: evidence of {} missing", f.id);
        }
        assert!(md.contains("Pasal 16 ayat (5)") || md.contains("Article 16(5)"));
    }
}

/// Appendices A to O come from the data, and say so where it is missing.
#[test]
fn appendices_state_their_data_or_that_it_is_missing() {
    let (healthy, gaps) = (plan("healthy", "id"), plan("gaps", "id"));
    let md = |p: &PlanData| {
        let d = drp::build_document(p, &builtin()).unwrap();
        String::from_utf8(drp::render(&d, Format::Md, 0).unwrap()).unwrap()
    };
    let (h, g) = (md(&healthy), md(&gaps));
    for letter in 'A'..='O' {
        assert_eq!(h.matches(&format!("### Lampiran {letter}. ")).count(), 1, "Lampiran {letter}");
    }
    // B: vendors from organisation.toml, or a statement that there are none.
    let vendor = &healthy.organisation.vendors[0];
    assert!(h.contains(&vendor.name) && h.contains(vendor.contract.as_deref().unwrap()));
    assert!(g.contains("Belum ada kontak penyedia"));
    // D: declared alternatives, and plainly none for a system without.
    let alt = &healthy.systems.iter().find(|s| s.name == "simpeg").unwrap().alternatives[0];
    assert!(h.contains(&alt.description));
    assert!(h.contains("| sso | **tidak ada** | Definisi sistem ini tidak menyatakan prosedur alternatif."));
    // E: the last drill's actual result next to the expected one; a failed check says No.
    assert!(g.contains("| sso | Layanan web menjawab: `curl -fsS http://127.0.0.1:8443/health` | HTTP 200 dan teks OK | HTTP 502 | **Tidak** |"), "{g}");
    assert!(g.contains("| portal | **runbook belum menetapkan pemeriksaan kesehatan**"));
    // F: the DRC site, address and access.
    assert!(
        h.contains(&healthy.organisation.storage.address)
            && h.contains("| Di wilayah Indonesia (Pasal 16 ayat (5)) | Ya |")
    );
    assert!(g.contains("| Di wilayah Indonesia (Pasal 16 ayat (5)) | **Tidak** |"));
    // I: who needs whom.
    assert!(h.contains("| sso | — | simpeg, sipkd | srv-sso |"), "{h}");
    // J: overdue review and drill are marked.
    assert!(g.contains("| Tinjauan dokumen rencana |") && g.contains("**terlambat sejak"));
    // K: related plans in their table form, or none.
    assert!(h.contains("| Prosedur Penanganan Insiden Siber (contoh) | Blitarkota-CSIRT |"));
    assert!(g.contains("Belum ada rencana terkait yang dicatat"));
    // M: the versions with their content hashes.
    assert!(h.contains(&format!("`{}`", healthy.history[0].content_blake3)));
    // O: drills, failback, scrubs, reports and the audit head, each with its hash.
    for hash in [
        healthy.drills[0].record_blake3.clone().unwrap(),
        healthy.switches[0].record_blake3.clone().unwrap(),
        healthy.scrubs[0].record_blake3.clone().unwrap(),
        healthy.reports[0].file_blake3.clone().unwrap(),
        healthy.audit.head_hash.clone(),
    ] {
        assert!(h.contains(&format!("`{hash}`")), "{hash} missing from Lampiran O");
    }
    // A failover recorded both as a drill and as a switch is listed once.
    let o = &h[h.find("### Lampiran O.").unwrap()..];
    assert_eq!(o.matches("failover-1 |").count(), 1, "{o}");
    assert_eq!(o.matches("failback-2 |").count(), 1, "{o}");
    // English has every appendix too.
    let e = md(&plan("gaps", "en"));
    for letter in 'A'..='O' {
        assert_eq!(e.matches(&format!("### Appendix {letter}. ")).count(), 1, "Appendix {letter}");
    }
    assert!(e.contains("No vendor contact") && e.contains("declares no alternate procedure"));
}

#[test]
fn recovery_order_puts_dependencies_first() {
    let p = plan("healthy", "id");
    let names: Vec<&str> = p.systems.iter().map(|s| s.name.as_str()).collect();
    // gather() sorts; the fixture is in definition order, so sort as gather does.
    let (order, cyclic, _) = findings::recovery_order(&p.systems);
    assert!(cyclic.is_empty());
    assert_eq!(order, ["sso", "simpeg", "sipkd"], "from {names:?}");
}

fn pdf_of(name: &str, lang: &str) -> (drp::doc::Document, Vec<u8>) {
    let d = document(name, lang);
    let bytes = drp::render(&d, Format::Pdf, 1_795_521_600).unwrap();
    (d, bytes)
}

fn pdftotext(bytes: &[u8], dir: &Path, layout: bool) -> String {
    let f = dir.join("p.pdf");
    std::fs::write(&f, bytes).unwrap();
    let mut c = Command::new("pdftotext");
    if layout {
        c.arg("-layout");
    }
    let out = c.arg(&f).arg("-").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pdf_has_toc_page_numbers_headers_every_system_and_finding() {
    if !have("pdftotext") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["id", "en"] {
        let (d, bytes) = pdf_of("gaps", lang);
        assert!(bytes.starts_with(b"%PDF-"));
        // PDF/A-2b identification in the XMP metadata, and our marker.
        let raw = String::from_utf8_lossy(&bytes);
        assert!(raw.contains("pdfaid:part") && raw.contains("pdfaid:conformance"), "no PDF/A identification");
        let claimed = drp::doc::find_marker(&bytes).expect("marker in the PDF metadata");
        assert_eq!(claimed.content_blake3, d.meta.content_blake3);
        // Same content, same bytes.
        assert_eq!(bytes, pdf_of("gaps", lang).1, "PDF output is not deterministic");
        let text = pdftotext(&bytes, tmp.path(), false);
        let pages: Vec<&str> = text.split('\u{c}').filter(|p| !p.trim().is_empty()).collect();
        let n = pages.len();
        assert!(n >= 10, "only {n} pages");
        let (toc, page_of) = if lang == "id" { ("DAFTAR ISI", "Halaman") } else { ("TABLE OF CONTENTS", "Page") };
        assert!(pages[1].contains(toc), "page 2 is not the table of contents:\n{}", pages[1]);
        for (i, p) in pages.iter().enumerate().skip(1) {
            let want =
                if lang == "id" { format!("Halaman {} dari {n}", i + 1) } else { format!("Page {} of {n}", i + 1) };
            assert!(p.contains(&want), "page {} lacks {want:?} ({page_of})", i + 1);
            assert!(p.contains("TERBATAS"), "page {} lacks the running header", i + 1);
            assert!(
                p.replace(['\n', ' '], "").contains(&d.meta.content_blake3),
                "page {} lacks the content hash",
                i + 1
            );
        }
        // The table of contents lists every appendix, A to O.
        let toc_text: Vec<&str> = pages.iter().skip(1).take_while(|p| p.contains(toc)).copied().collect();
        let toc_text = toc_text.join("\n");
        for letter in 'A'..='O' {
            let want = if lang == "id" { format!("Lampiran {letter}.") } else { format!("Appendix {letter}.") };
            assert!(toc_text.contains(&want), "{want} missing from the table of contents:\n{toc_text}");
        }
        // The text diagram keeps its columns in the PDF.
        let layout_all = pdftotext(&bytes, tmp.path(), true);
        assert!(
            layout_all.lines().any(|l| l.contains("[srv-simpeg] db, uploads") && l.contains("--TLS--> |")),
            "diagram line missing or broken"
        );
        // The TOC's page numbers point at the pages that hold the headings.
        let layout = pdftotext(&bytes, tmp.path(), true);
        let lpages: Vec<&str> = layout.split('\u{c}').collect();
        let chapter = if lang == "id" { "BAB VI PEMULIHAN" } else { "CHAPTER VI RECOVERY" };
        let toc_line = lpages[1..4]
            .iter()
            .flat_map(|p| p.lines())
            .find(|l| l.trim_start().starts_with(chapter))
            .unwrap_or_else(|| panic!("{chapter} not in the table of contents"));
        let num: usize = toc_line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(lpages[num - 1].lines().any(|l| l.trim() == chapter), "{chapter} is not on page {num}");
        let flat = text.replace('\n', " ");
        for s in &plan("gaps", lang).systems {
            assert!(flat.contains(&s.title), "system {} missing", s.title);
        }
        for f in &plan("gaps", lang).findings {
            assert!(flat.contains(&format!("{} ", f.id)), "finding {} missing", f.id);
        }
        // The findings table spans pages: its header row is repeated.
        let header = if lang == "id" { "Tindak lanjut" } else { "Corrective action" };
        let with_header = pages.iter().filter(|p| p.contains(header)).count();
        assert!(with_header >= 2, "findings table header on {with_header} page(s)");
    }
}

#[test]
fn pdf_pages_render_as_images() {
    if !have("pdftoppm") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, bytes) = pdf_of("healthy", "id");
    let f = tmp.path().join("p.pdf");
    std::fs::write(&f, &bytes).unwrap();
    let out = Command::new("pdftoppm")
        .args(["-png", "-r", "40", "-f", "1", "-l", "3"])
        .arg(&f)
        .arg(tmp.path().join("page"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "pdftoppm complained: {}", String::from_utf8_lossy(&out.stderr));
    let pngs: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .collect();
    assert_eq!(pngs.len(), 3);
    for p in pngs {
        let png = std::fs::read(p.path()).unwrap();
        // A4 at 40 dpi is 331 x 468; the IHDR holds width and height.
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, h), (331, 468), "not an A4 page");
    }
}

#[test]
fn html_opens_in_headless_chromium_without_console_errors() {
    let chromium =
        ["chromium", "chromium-browser"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok());
    let Some(chromium) = chromium else {
        assert!(!required(), "chromium is not installed (see .ci/run)");
        eprintln!("SKIPPED: chromium is not installed");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = document("gaps", "id");
    let html = String::from_utf8(drp::render(&d, Format::Html, 0).unwrap()).unwrap();
    // Self-contained: nothing is fetched from anywhere.
    for bad in ["src=\"http", "href=\"http", "<link", "<script", "@import", "url("] {
        assert!(!html.contains(bad), "HTML refers to an external resource: {bad}");
    }
    let file = tmp.path().join("plan.html");
    std::fs::write(&file, &html).unwrap();
    let shot = tmp.path().join("page1.png");
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", tmp.path().join("profile").display()))
        .arg("--window-size=900,1270")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {stderr}");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let png = std::fs::read(&shot).expect("screenshot of page 1");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "screenshot is empty");
    // The page really rendered the plan (DOM dump).
    let dom = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", tmp.path().join("profile2").display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("RENCANA PEMULIHAN BENCANA") && dom.contains(&d.meta.content_blake3));
    if let Ok(dir) = std::env::var("PULIH_DRP_SCREENSHOT_DIR") {
        std::fs::copy(&shot, Path::new(&dir).join("drp-page1.png")).unwrap();
    }
}

fn row_for(d: &drp::doc::Document, bytes: &[u8], format: &str) -> DrpVersionRow {
    DrpVersionRow {
        version: d.meta.version,
        kind: "plan".into(),
        subject: None,
        number: d.meta.number.clone(),
        lang: d.meta.lang.clone(),
        format: format.into(),
        generated_at: 0,
        generated_by: "test".into(),
        data_as_of: 0,
        generator_version: "test".into(),
        content_blake3: d.meta.content_blake3.clone(),
        file_blake3: blake3::hash(bytes).to_hex().to_string(),
        file_path: String::new(),
        content_path: String::new(),
        approved_by: None,
        approved_position: None,
        approved_at: None,
        next_review: None,
    }
}

#[test]
fn a_tampered_file_fails_verification() {
    for (format, fmt) in [(Format::Pdf, "pdf"), (Format::Html, "html"), (Format::Md, "md")] {
        let d = document("healthy", "id");
        let bytes = drp::render(&d, format, 1_795_521_600).unwrap();
        let rows = vec![row_for(&d, &bytes, fmt)];
        let ok = drp::verify(&bytes, &rows, |_| Some(d.clone()));
        assert!(ok.ok, "{fmt}: {}", ok.message);
        // Change one byte in the middle of the file.
        let mut bad = bytes.clone();
        let i = bad.len() / 2;
        bad[i] = bad[i].wrapping_add(1);
        let r = drp::verify(&bad, &rows, |_| Some(d.clone()));
        assert!(!r.ok && r.message.contains("ALTERED"), "{fmt}: {}", r.message);
        // A stored tree that no longer matches its hash is reported too.
        let mut other = d.clone();
        other.blocks.pop();
        let r = drp::verify(&bytes, &rows, |_| Some(other.clone()));
        assert!(!r.ok, "{fmt}: edited stored content accepted");
        // A file that is no plan at all.
        assert!(!drp::verify(b"hello", &rows, |_| None).ok);
    }
}

#[test]
fn a_broken_template_is_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("id")).unwrap();
    let file = tmp.path().join("id/plan.md.j2");
    std::fs::write(&file, "# Judul\n\nbaris dua\n{% for s in plan.systems %}\n{{ s.name }\n{% endfor %}\n").unwrap();
    let t = Templates { dir: Some(tmp.path().to_owned()) };
    let err = drp::build_document(&plan("healthy", "id"), &t).unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains(":5:"), "{err}");
    // An unknown variable is a runtime error with its line too.
    std::fs::write(&file, "# Judul\n\n{{ plan.no_such_field }}\n").unwrap();
    let err = drp::build_document(&plan("healthy", "id"), &t).unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()) && err.contains(":3:"), "{err}");
    // Markup the parser cannot read names its line in the rendered output.
    std::fs::write(&file, "# Judul\n\n| A | B |\n| 1 | 2 |\n").unwrap();
    let err = drp::build_document(&plan("healthy", "id"), &t).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
    // The English template is not in the directory: the built-in copy is used.
    let mut p = plan("healthy", "en");
    p.control.lang = "en".into();
    assert!(drp::build_document(&p, &t).is_ok());
}

#[test]
fn diff_shows_changed_sections() {
    let a = document("healthy", "id");
    let b = document("gaps", "id");
    let d = drp::diff(&a, &b);
    assert!(d.iter().any(|s| s.section.contains("Temuan") && s.status == "changed"), "{d:#?}");
    assert!(drp::diff(&a, &a).is_empty());
    let text = drp::diff_text(4, 5, &d);
    assert!(text.contains("+ ") && text.contains("Portal Layanan Publik"));
}
