//! End to end: the DR plan document (issue 6) generated through `pulihctl`
//! by a real controller that holds a real agent's snapshot: generate as a
//! coordinator, list and verify as an auditor, a tampered file refused,
//! approval by an admin shown in the next version, diff between versions,
//! and the local `pulih-controller drp` commands on the same catalog.

use std::fs;
use std::path::Path;

use pulih_e2e::{bytes, ok, Controller};
use serde_json::{json, Value};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn plan_generated_verified_approved_and_diffed_through_pulihctl() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let src = base.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("index.html"), b"<h1>Pemkot</h1>\n").unwrap();
    fs::write(src.join("data.bin"), bytes(3, 200_000)).unwrap();

    let mut ctl = Controller::init(base);
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/organisation.toml.example"),
        ctl.dir.join("organisation.toml"),
    )
    .unwrap();
    // The systems of issue 5, as the JSON input the plan accepts until then.
    let systems = json!({
        "systems": [{
            "name": "portal", "title": "Portal Layanan Publik", "opd": "diskominfotik",
            "owner": {"name": "Penanggung jawab uji", "position": "Pranata Komputer", "contact": "0812"},
            "data_class": "transaksional", "tier": 1, "depends_on": [],
            "rpo_target_secs": 86400, "rto_target_secs": 14400,
            "datasets": [{"agent": "web-pemkot", "dataset": "web"}],
            "runbook": {"restore": [{"agent": "web-pemkot", "dataset": "web", "target": "/srv/drc/portal"}]}
        }],
        "drills": []
    });
    fs::write(ctl.dir.join("systems.json"), systems.to_string()).unwrap();
    ctl.edit_config(|t| t.replace("# systems = \"systems.json\"", "systems = \"systems.json\""));
    ctl.serve();
    let agent = ctl.enroll(base, "web-pemkot");
    agent.add_dataset("web", &[&src], &[]);
    let snap = agent.snapshot();

    let admin = ctl.api_token("admin1", "admin");
    let coord = ctl.api_token("koordinator", "coordinator");
    let auditor = ctl.api_token("inspektorat", "auditor");

    // Coordinator generates the PDF (Bahasa Indonesia by default).
    let pdf = base.join("rpb-v1.pdf");
    let out = ok(&mut ctl.pulihctl(&coord, &["drp", "generate", "--out", pdf.to_str().unwrap()]));
    assert!(out.contains("Version 1 generated"), "{out}");
    let bytes1 = fs::read(&pdf).unwrap();
    assert!(bytes1.starts_with(b"%PDF-"));

    // The auditor lists and verifies it.
    let list = ok(&mut ctl.pulihctl(&auditor, &["drp", "list"]));
    assert!(list.contains("DRP/DISKOMINFOTIK/1/") && list.contains("not approved"), "{list}");
    let v = ok(&mut ctl.pulihctl(&auditor, &["drp", "verify", pdf.to_str().unwrap()]));
    assert!(v.contains("unaltered: version 1"), "{v}");

    // One changed byte: refused, exit status 2, naming the version claimed.
    let mut bad = bytes1.clone();
    let i = bad.len() / 3;
    bad[i] ^= 0x20;
    let badf = base.join("rpb-v1-edited.pdf");
    fs::write(&badf, &bad).unwrap();
    let o = ctl.pulihctl(&auditor, &["drp", "verify", badf.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ALTERED"), "{:?}", o);

    // An auditor may not generate, a coordinator may not approve.
    let o = ctl.pulihctl(&auditor, &["drp", "generate", "--out", "/dev/null"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("role auditor may not"), "{}", stderr(&o));
    let o = ctl.pulihctl(&coord, &["drp", "approve", "1", "--name", "X", "--position", "Y"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("role coordinator may not"), "{}", stderr(&o));

    // The admin approves version 1; approving it again is refused.
    let a = ok(&mut ctl.pulihctl(
        &admin,
        &["drp", "approve", "1", "--name", "Kepala Dinas Uji", "--position", "Kepala Dinas Kominfotik"],
    ));
    assert!(a.contains("approved by Kepala Dinas Uji"), "{a}");
    let o = ctl.pulihctl(&admin, &["drp", "approve", "1", "--name", "Lain", "--position", "Lain"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("already approved"), "{}", stderr(&o));

    // Version 2, in Markdown: it states the approved version in force and
    // the real dataset with its snapshot, and no gap for its backup age.
    let md = base.join("rpb-v2.md");
    ok(&mut ctl.pulihctl(&coord, &["drp", "generate", "--format", "md", "--out", md.to_str().unwrap()]));
    let text = fs::read_to_string(&md).unwrap();
    assert!(text.contains("versi 1, disahkan") && text.contains("Kepala Dinas Uji"), "approval not shown");
    assert!(text.contains("| web-pemkot/web | portal | "), "dataset row missing");
    assert!(text.contains("Portal Layanan Publik"));
    assert!(!text.contains("Dataset web-pemkot/web (sistem portal) belum memiliki"), "the snapshot was not seen");
    // Never drilled: stated as a finding.
    assert!(text.contains("Sistem portal belum pernah diuji coba pemulihannya"), "never-drilled finding missing");
    let j: Value = serde_json::from_str(&ok(&mut ctl.pulihctl(&auditor, &["--json", "drp", "list"]))).unwrap();
    assert_eq!(j["in_force"]["version"], 1);
    assert_eq!(j["versions"].as_array().unwrap().len(), 2);
    assert!(ok(&mut ctl.pulihctl(&auditor, &["drp", "verify", md.to_str().unwrap()])).contains("version 2"));

    // A target changes (issue 5 would do this in the catalog): version 3
    // records it in its record of changes. English HTML this time.
    let edited = systems.to_string().replace("\"rto_target_secs\":14400", "\"rto_target_secs\":7200");
    assert_ne!(edited, systems.to_string());
    fs::write(ctl.dir.join("systems.json"), edited).unwrap();
    let html = base.join("rpb-v3.html");
    ok(&mut ctl
        .pulihctl(&coord, &["drp", "generate", "--lang", "en", "--format", "html", "--out", html.to_str().unwrap()]));
    let h = fs::read_to_string(&html).unwrap();
    assert!(h.contains("DISASTER RECOVERY PLAN"));
    assert!(h.contains("RTO target of portal changed from 4 hours to 2 hours."), "record of changes");
    let d = ok(&mut ctl.pulihctl(&auditor, &["drp", "diff", "1", "2"]));
    assert!(d.contains("changes from version 1 to version 2"), "{d}");
    assert!(d.contains("Kepala Dinas Uji"), "the approval is a change between 1 and 2: {d}");

    // The integrity report, from the same catalog, cannot be approved.
    let integ = base.join("integritas.pdf");
    let out =
        ok(&mut ctl.pulihctl(&coord, &["drp", "generate", "--kind", "integrity", "--out", integ.to_str().unwrap()]));
    assert!(out.contains("Version 4 generated") && out.contains("/INTEGRITAS/4/"), "{out}");
    assert!(
        ok(&mut ctl.pulihctl(&auditor, &["drp", "verify", integ.to_str().unwrap()])).contains("unaltered: version 4")
    );
    let o = ctl.pulihctl(&admin, &["drp", "approve", "4", "--name", "X", "--position", "Y"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("only plans are approved"), "{}", stderr(&o));
    let o = ctl
        .pulihctl(&coord, &["drp", "generate", "--kind", "drill", "--drill", "nope", "--out", "/dev/null"])
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("no drill"), "{}", stderr(&o));

    // Download gives the same bytes as generate wrote.
    let dl = base.join("dl.pdf");
    ok(&mut ctl.pulihctl(&auditor, &["drp", "download", "1", "--out", dl.to_str().unwrap()]));
    assert_eq!(fs::read(&dl).unwrap(), bytes1);

    // The same catalog locally: list and verify agree; the audit log has the actions.
    let local = ok(&mut ctl.cmd(&["drp", "verify", pdf.to_str().unwrap()]));
    assert!(local.contains("unaltered: version 1"), "{local}");
    let audit = ok(&mut ctl.pulihctl(&auditor, &["audit", "list"]));
    assert!(audit.contains("drp-generate") && audit.contains("drp-approve"), "{audit}");
    assert!(ok(&mut ctl.pulihctl(&auditor, &["audit", "verify"])).contains("intact"));
    let _ = snap;
}

#[test]
fn a_broken_template_directory_is_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path());
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/organisation.toml.example"),
        ctl.dir.join("organisation.toml"),
    )
    .unwrap();
    let tdir = tmp.path().join("templates/id");
    fs::create_dir_all(&tdir).unwrap();
    fs::write(tdir.join("plan.md.j2"), "# Judul\n\n{% if plan.systems %}\nteks\n").unwrap();
    let tpath = tmp.path().join("templates");
    ctl.edit_config(|t| {
        t.replace(
            "# templates = \"/usr/local/share/pulih/drp-templates\"",
            &format!("templates = {:?}", tpath.display().to_string()),
        )
    });
    let o = ctl.cmd(&["drp", "check"]).output().unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&tdir.join("plan.md.j2").display().to_string()) && e.contains(":4"), "{e}");
    // Over the API the coordinator gets the same location as a 422.
    ctl.serve();
    let coord = ctl.api_token("k", "coordinator");
    let (status, v) = ctl.http("POST", "/api/v1/drp/generate", Some(&coord), Some(br#"{"format":"md"}"#));
    assert_eq!(status, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("plan.md.j2"), "{v}");
}
