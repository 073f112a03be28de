//! End to end: failover drills against the real binaries (issue 5). A real
//! PostgreSQL is protected, replicated, restored into the drill sandbox,
//! started there and queried; and drills that fail (a failing health
//! check, a damaged snapshot), miss a target, follow dependencies, or run
//! on the schedule inside `serve`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pulih_e2e::{bytes, free_port, ok, run, wait_until, Agent, Controller};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes the system file `<data dir>/systems/<name>.toml`.
fn system(ctl: &Controller, name: &str, body: &str) {
    let dir = ctl.dir.join("systems");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("{name}.toml")), body).unwrap();
}

/// A minimal system of one dataset with extra TOML appended.
fn simple(name: &str, agent: &str, dataset: &str, rto: &str, extra: &str) -> String {
    format!(
        "[system]\nname = {name:?}\ntitle = \"Sistem {name}\"\nopd = \"Diskominfo\"\ndata_class = \"pokok\"\ntier = 1\n\
         rpo_target = \"1h\"\nrto_target = {rto:?}\n{extra}\n\n[[dataset]]\nagent = {agent:?}\ndataset = {dataset:?}\n"
    )
}

fn system_of<'a>(show: &'a Value, name: &str) -> &'a Value {
    show["systems"].as_array().unwrap().iter().find(|s| s["system"] == name).unwrap_or_else(|| panic!("{show:#}"))
}

fn steps_of(show: &Value, name: &str) -> Vec<(i64, String, String, String)> {
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["system"] == name)
        .map(|s| {
            (
                s["seq"].as_i64().unwrap(),
                s["kind"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
                s["output"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A health check that fails with its output in the report; an RTO target
/// missed (partial, by how much); systems in dependency order; a damaged
/// snapshot failing at verification with the file named; systems check
/// and an invalid systems set refusing the drill.
#[test]
fn drills_report_failures_missed_targets_and_dependency_order() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut ctl = Controller::init(base);
    ctl.serve();
    let agent: Agent = ctl.enroll(base, "dc-app01");
    for ds in ["base", "app", "slow", "broken", "hurt"] {
        let src = base.join(ds);
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/data.txt"), format!("data of {ds}\n")).unwrap();
        if ds == "hurt" {
            fs::write(src.join("sub/big.bin"), bytes(42, 3 << 20)).unwrap();
        }
        agent.add_dataset(ds, &[&src], &[]);
    }
    let snap = agent.snapshot();
    assert!(!snap.id.is_empty());
    let token = ctl.api_token("koordinator", "coordinator");

    let check_file = "[[health_check]]\nname = \"berkas ada\"\ncommand = [\"sh\", \"-c\", \"test -s \\\"$PULIH_RESTORE_DIR/base/sub/data.txt\\\" && echo ok $PULIH_SYSTEM $PULIH_DRILL_ID\"]\n";
    system(&ctl, "base", &format!("{}\n{check_file}", simple("base", "dc-app01", "base", "1h", "")));
    system(
        &ctl,
        "app",
        &format!(
            "{}\n[[health_check]]\nname = \"app\"\ncommand = \"test -s \\\"$PULIH_RESTORE_DIR/app/sub/data.txt\\\"\"\n",
            simple("app", "dc-app01", "app", "1h", "depends_on = [\"base\"]")
        ),
    );
    system(
        &ctl,
        "slow",
        &format!(
            "{}\n[[health_check]]\nname = \"lambat\"\ncommand = \"sleep 2\"\n",
            simple("slow", "dc-app01", "slow", "1s", "")
        ),
    );
    let marker = base.join("teardown-ran");
    system(
        &ctl,
        "broken",
        &format!(
            "{}\n[[health_check]]\nname = \"basis data\"\ncommand = \"echo 'FATAL: database simpeg does not exist' >&2; exit 3\"\n\
             [[health_check]]\nname = \"tidak dijalankan\"\ncommand = \"true\"\n\
             [[teardown]]\nname = \"bersihkan\"\ncommand = \"touch {}\"\n",
            simple("broken", "dc-app01", "broken", "1h", ""),
            marker.display()
        ),
    );
    system(&ctl, "hurt", &simple("hurt", "dc-app01", "hurt", "1h", ""));
    let check = run(&mut ctl.cmd(&["systems", "check"]));
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    assert!(stdout(&check).contains("5 system(s)"), "{}", stdout(&check));

    // Dependency order: base's steps all come before app's.
    let (code, show, text) = ctl.drill_run(&token, &["app", "base"]);
    assert_eq!(code, 0, "{text}\n{show:#}");
    assert_eq!(show["drill"]["outcome"], "passed");
    let b = steps_of(&show, "base");
    let a = steps_of(&show, "app");
    assert_eq!(b.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["restore", "verify", "check"], "{show:#}");
    assert!(b.iter().map(|s| s.0).max() < a.iter().map(|s| s.0).min(), "base before app: {show:#}");
    assert!(b[2].3.contains("ok base"), "check output recorded: {show:#}");
    assert!(b[1].3.contains("match the snapshot"), "{show:#}");
    let sb = system_of(&show, "base");
    assert!(sb["rto_achieved_secs"].as_f64().unwrap() > 0.0);
    assert!(sb["rpo_achieved_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(sb["snapshots"][0]["snapshot"].as_str().unwrap().len(), 64);
    let id = show["drill"]["id"].as_i64().unwrap();
    assert!(!ctl.dir.join(format!("sandbox/{id}")).exists(), "sandbox removed");

    // RTO target of 1s with a check that takes 2s: partial, RTO missed.
    let (code, show, _) = ctl.drill_run(&token, &["slow"]);
    assert_eq!(code, 2);
    let s = system_of(&show, "slow");
    assert_eq!(s["outcome"], "partial", "{show:#}");
    assert!(s["rto_achieved_secs"].as_f64().unwrap() >= 2.0);
    let reasons = s["reasons"].to_string();
    assert!(reasons.contains("RTO target missed") && reasons.contains("over by"), "{reasons}");

    // A failing check: failed with its output; later checks skipped; teardown ran.
    let broken_snap =
        ctl.snapshots().into_iter().find(|s| s["dataset"] == "broken").unwrap()["id"].as_str().unwrap().to_owned();
    let (code, show, text) = ctl.drill_run(&token, &["broken", "--snapshot", &broken_snap[..12]]);
    assert_eq!(system_of(&show, "broken")["snapshots"][0]["snapshot"], broken_snap.as_str());
    assert_eq!(code, 2, "{text}");
    let s = system_of(&show, "broken");
    assert_eq!(s["outcome"], "failed");
    assert!(s["reasons"].to_string().contains("FATAL: database simpeg does not exist"), "{show:#}");
    let st = steps_of(&show, "broken");
    let kinds: Vec<(&str, &str)> = st.iter().map(|s| (s.1.as_str(), s.2.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("restore", "passed"),
            ("verify", "passed"),
            ("check", "failed"),
            ("check", "skipped"),
            ("teardown", "passed")
        ]
    );
    assert!(marker.exists(), "teardown ran after the failure");
    let id = show["drill"]["id"].as_i64().unwrap().to_string();
    for (fmt, lang, want) in [("md", "id", "GAGAL"), ("html", "en", "FAILED")] {
        let out = ok(&mut ctl.pulihctl(&token, &["drill", "report", &id, "--format", fmt, "--lang", lang]));
        assert!(out.contains(want) && out.contains("FATAL: database simpeg does not exist"), "{out}");
    }
    let file = base.join("report.html");
    ok(&mut ctl.pulihctl(&token, &["drill", "report", &id, "--format", "html", "--out", file.to_str().unwrap()]));
    assert!(fs::read_to_string(&file).unwrap().starts_with("<!DOCTYPE html>"));
    // The report is the DR plan's drill template: its activity log names the
    // skipped check, and it renders as PDF/A too (only with --out).
    let md = ok(&mut ctl.pulihctl(&token, &["drill", "report", &id, "--lang", "id"]));
    assert!(md.contains("LAPORAN UJI COBA PEMULIHAN") && md.contains("Catatan Kegiatan"), "{md}");
    assert!(md.contains("| pemeriksaan | tidak dijalankan |") && md.contains("| dilewati |"), "{md}");
    assert!(md.contains("tidak bernomor"), "an unrecorded report claims a number: {md}");
    let pdf = base.join("report.pdf");
    ok(&mut ctl.pulihctl(&token, &["drill", "report", &id, "--format", "pdf", "--out", pdf.to_str().unwrap()]));
    assert!(fs::read(&pdf).unwrap().starts_with(b"%PDF-"));
    let no_out = run(&mut ctl.pulihctl(&token, &["drill", "report", &id, "--format", "pdf"]));
    assert_eq!(no_out.status.code(), Some(1));
    assert!(stderr(&no_out).contains("--out"), "{}", stderr(&no_out));
    let missing = run(&mut ctl.pulihctl(&token, &["drill", "report", "999999"]));
    assert_eq!(missing.status.code(), Some(1), "{}", stdout(&missing));

    // A damaged chunk: the drill fails at verification and names the file.
    pulih_e2e::stored::largest_chunk(&ctl.dir).flip();
    let (code, show, _) = ctl.drill_run(&token, &["hurt"]);
    assert_eq!(code, 2);
    let s = system_of(&show, "hurt");
    assert_eq!(s["outcome"], "failed");
    assert!(s["verify_result"].as_str().unwrap().starts_with("failed"), "{show:#}");
    let reasons = s["reasons"].to_string();
    assert!(reasons.contains("verification failed") && reasons.contains("big.bin"), "{reasons}");
    let st = steps_of(&show, "hurt");
    assert!(st.iter().any(|s| s.1 == "verify" && s.2 == "failed" && s.3.contains("big.bin")), "{show:#}");

    // The systems endpoint shows the last drill of each.
    let list = ok(&mut ctl.pulihctl(&token, &["systems"]));
    assert!(list.contains("hurt") && list.contains("failed") && list.contains("partial"), "{list}");

    // The DR plan is generated from these live systems and drills (no
    // fixture file): every system is in it, with its drill evidence.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/organisation.toml.example"),
        ctl.dir.join("organisation.toml"),
    )
    .unwrap();
    let plan = ctl.dir.join("plan-en.md");
    let out = format!("--out={}", plan.display());
    let gen = run(&mut ctl.cmd(&["drp", "generate", "--lang", "en", "--format", "md", &out]));
    assert!(gen.status.success(), "{}", stderr(&gen));
    let text = std::fs::read_to_string(&plan).unwrap().to_lowercase();
    for name in ["hurt", "base"] {
        assert!(text.contains(name), "system {name} missing from the plan");
    }
    assert!(text.contains("partly passed") && text.contains("failed"), "drill outcomes missing from the plan");
    assert!(!text.contains("no recovery drill is recorded"), "the drills are not in the plan");
    // Appendices from the live data: every one, alternates stated as none,
    // the drill evidence with the blake3 of its record.
    for letter in 'a'..='o' {
        assert!(text.contains(&format!("## appendix {letter}. ")), "appendix {letter} missing");
    }
    assert!(text.contains("| hurt | **none** | this system's definition declares no alternate procedure."));
    let evidence = &text[text.find("## appendix o.").unwrap()..];
    assert!(evidence.lines().any(|l| l.contains("| hurt |") && l.contains("| failed | `")), "{evidence}");

    // An invalid set: check names file, line and key; the drill is refused.
    system(&ctl, "bad", &simple("bad", "dc-app01", "nothing", "1 hour", ""));
    let check = run(&mut ctl.cmd(&["systems", "check"]));
    assert_eq!(check.status.code(), Some(1));
    assert!(stderr(&check).contains("bad.toml:8: system.rto_target"), "{}", stderr(&check));
    let refused = run(&mut ctl.pulihctl(&token, &["drill", "run", "base"]));
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("bad.toml"), "{}", stderr(&refused));
    // Auditors may read but not start drills; every start is audited.
    let auditor = ctl.api_token("pemeriksa", "auditor");
    assert_eq!(run(&mut ctl.pulihctl(&auditor, &["drill", "run", "base"])).status.code(), Some(1));
    let audit = ok(&mut ctl.pulihctl(&auditor, &["--json", "audit", "list", "--limit", "1000"]));
    assert!(audit.matches("drill-start").count() >= 5, "{audit}");
    assert!(ctl.stop());
}

/// `pulih_drill_overdue` of a system with `drill_every = "2s"` is 1 before
/// its first drill; `serve` runs it on its own (trigger scheduled) and the
/// metric goes to 0.
#[test]
fn scheduled_drill_runs_inside_serve_and_clears_overdue() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut ctl = Controller::init(base);
    ctl.edit_config(|t| t.replace("check_interval = \"1m\"", "check_interval = \"2s\""));
    ctl.serve();
    let agent = ctl.enroll(base, "web01");
    let src = base.join("www");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("index.html"), b"<h1>Pemkot</h1>\n").unwrap();
    agent.add_dataset("www", &[&src], &[]);
    agent.snapshot();
    system(
        &ctl,
        "web",
        &format!(
            "{}\n[[health_check]]\nname = \"halaman\"\ncommand = \"grep -q Pemkot \\\"$PULIH_RESTORE_DIR/www/index.html\\\"\"\n",
            simple("web", "web01", "www", "1h", "drill_every = \"2s\"")
        ),
    );
    let overdue = |ctl: &Controller| -> Option<String> {
        let (st, body) = ctl.http("GET", "/metrics", None, None);
        assert_eq!(st, 200);
        let text = body.as_str().unwrap_or_default().to_owned();
        text.lines().find(|l| l.starts_with("pulih_drill_overdue{system=\"web\"}")).map(str::to_owned)
    };
    assert_eq!(overdue(&ctl).as_deref(), Some("pulih_drill_overdue{system=\"web\"} 1"));
    assert!(
        wait_until(Duration::from_secs(60), || overdue(&ctl).as_deref()
            == Some("pulih_drill_overdue{system=\"web\"} 0")),
        "log:\n{}",
        ctl.log()
    );
    let token = ctl.api_token("auditor", "auditor");
    let drills: Value = serde_json::from_str(&ok(&mut ctl.pulihctl(&token, &["--json", "drill", "list"]))).unwrap();
    let first = drills.as_array().unwrap().last().unwrap();
    assert_eq!((first["trigger"].as_str(), first["actor"].as_str()), (Some("scheduled"), Some("scheduler")));
    let (_, m) = ctl.http("GET", "/metrics", None, None);
    let m = m.as_str().unwrap().to_owned();
    assert!(m.contains("pulih_drill_last_timestamp_seconds{outcome=\"passed\",system=\"web\"}"), "{m}");
    assert!(m.contains("pulih_drill_rto_achieved_seconds{system=\"web\"}"), "{m}");
    assert!(m.contains("pulih_system_rto_target_seconds{system=\"web\"} 3600"), "{m}");
    assert!(ctl.stop());
}

// ---- a real PostgreSQL -------------------------------------------------------

/// The directory of PostgreSQL's programs (Debian: /usr/lib/postgresql/N/bin).
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pgbench").exists() && b.join("pg_basebackup").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Stops the primary cluster however the test ends.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-w", "stop", "-D"])
            .arg(&self.data)
            .output();
    }
}

/// A command run as the `postgres` user (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn chown_postgres(p: &Path) {
    ok(Command::new("chown").args(["-R", "postgres:postgres"]).arg(p));
}

/// The issue's real system: pgbench data in a PostgreSQL, copied by the
/// agent's pre_hook with pg_basebackup into a staging directory, replicated,
/// then drilled: restored into the sandbox, verified, started on a free
/// port by the health check, queried for the 100000 pgbench_accounts rows,
/// and stopped by teardown. Passed, with RTO and RPO recorded.
#[test]
fn postgres_drill_restores_starts_and_queries_the_replicated_database() {
    let Some(bin) = pg_bin() else {
        if std::env::var("PULIH_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
            panic!("PostgreSQL (postgresql, postgresql-contrib) is required: no /usr/lib/postgresql/*/bin with initdb, pgbench and pg_basebackup");
        }
        eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql postgresql-contrib)");
        return;
    };
    if !rustix::process::geteuid().is_root() {
        if std::env::var("PULIH_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
            panic!("this test runs PostgreSQL as the postgres user and needs root");
        }
        eprintln!("SKIPPED: needs root to run PostgreSQL as the postgres user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    // The postgres user must reach its directories below the test's.
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
    let (primary, sock, staging) = (base.join("pg-primary"), base.join("pg-sock"), base.join("staging"));
    for d in [&primary, &sock, &staging] {
        fs::create_dir_all(d).unwrap();
        chown_postgres(d);
    }
    let port = free_port();
    ok(as_postgres(&bin.join("initdb")).args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&primary));
    ok(as_postgres(&bin.join("pg_ctl"))
        .arg("-o")
        .arg(format!("-p {port} -k {} -h ''", sock.display()))
        .arg("-l")
        .arg(sock.join("primary.log"))
        .args(["-w", "-t", "60", "start", "-D"])
        .arg(&primary));
    let _cluster = Cluster { bin: bin.clone(), data: primary.clone() };
    let sock_s = sock.to_str().unwrap().to_owned();
    let port_s = port.to_string();
    ok(as_postgres(&bin.join("pgbench")).args(["-i", "-s", "1", "-q", "-h", &sock_s, "-p", &port_s, "postgres"]));

    let mut ctl = Controller::init(base);
    // The drill's check starts PostgreSQL (as postgres) on the restored data inside the data dir.
    fs::set_permissions(&ctl.dir, fs::Permissions::from_mode(0o711)).unwrap();
    ctl.serve();
    let agent = ctl.enroll(base, "bkpsdm-db01");
    let pre_hook = format!(
        "find {st} -mindepth 1 -delete && runuser -u postgres -- {bb} -D {st} -X stream -c fast -h {sock_s} -p {port} -U postgres",
        st = staging.display(),
        bb = bin.join("pg_basebackup").display()
    );
    agent.add_dataset_with(
        "pg",
        &[&staging],
        &format!("schedule = \"1h\"\npre_hook = {pre_hook:?}\nhook_timeout = \"2m\""),
    );
    let daemon = agent.start_daemon();
    assert!(wait_until(Duration::from_secs(120), || !ctl.snapshots().is_empty()), "agent log:\n{}", daemon.log());
    drop(daemon);
    assert!(staging.join("PG_VERSION").exists(), "the pre_hook filled the staging directory");

    let port2 = free_port();
    let sock2 = base.join("pg-sock2");
    fs::create_dir_all(&sock2).unwrap();
    chown_postgres(&sock2);
    let check = format!(
        r#"set -e
D="$PULIH_RESTORE_DIR/db"
# The sandbox belongs to the controller's user (0700): let postgres reach its data.
p="$PULIH_RESTORE_DIR"; while [ "$p" != "/" ]; do chmod o+x "$p"; p=$(dirname "$p"); done
chown postgres:postgres "$D"; chmod 0700 "$D"
runuser -u postgres -- {pg_ctl} -D "$D" -o "-p {port2} -k {sock2} -h ''" -l {sock2}/restored.log -w -t 120 start
n=$(runuser -u postgres -- {psql} -h {sock2} -p {port2} -U postgres -Atc 'select count(*) from pgbench_accounts' postgres)
echo "pgbench_accounts: $n rows"
test "$n" = 100000"#,
        pg_ctl = bin.join("pg_ctl").display(),
        psql = bin.join("psql").display(),
        sock2 = sock2.display()
    );
    let teardown =
        format!("runuser -u postgres -- {} -D \"$PULIH_RESTORE_DIR/db\" -m fast -w stop", bin.join("pg_ctl").display());
    system(
        &ctl,
        "simpeg",
        &format!(
            "[system]\nname = \"simpeg\"\ntitle = \"SIMPEG — BKPSDM\"\nopd = \"BKPSDM\"\ndata_class = \"transaksional\"\ntier = 1\n\
             rpo_target = \"1h\"\nrto_target = \"10m\"\n\n[system.owner]\nname = \"Budi Santoso\"\ncontact = \"budi@example.go.id\"\n\n\
             [[dataset]]\nagent = \"bkpsdm-db01\"\ndataset = \"pg\"\nsubdir = \"db\"\n\n\
             [[health_check]]\nname = \"PostgreSQL menjawab dengan data pgbench\"\ncommand = {check:?}\ntimeout = \"3m\"\n\n\
             [[teardown]]\nname = \"hentikan PostgreSQL\"\ncommand = {teardown:?}\ntimeout = \"2m\"\n"
        ),
    );
    let token = ctl.api_token("koordinator", "coordinator");
    let (code, show, text) = ctl.drill_run(&token, &["simpeg"]);
    let s = system_of(&show, "simpeg");
    assert_eq!(code, 0, "{text}\n{show:#}\nserve log:\n{}", ctl.log());
    assert_eq!(s["outcome"], "passed");
    let steps = steps_of(&show, "simpeg");
    let kinds: Vec<&str> = steps.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(kinds, ["restore", "verify", "check", "teardown"], "{show:#}");
    assert!(steps.iter().all(|s| s.2 == "passed"), "{show:#}");
    assert!(steps[2].3.contains("pgbench_accounts: 100000 rows"), "{show:#}");
    let rto = s["rto_achieved_secs"].as_f64().unwrap();
    let rpo = s["rpo_achieved_secs"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < 600.0 && rpo > 0.0 && rpo < 3600.0, "RTO {rto} RPO {rpo}");
    assert!(s["files_restored"].as_u64().unwrap() > 100, "{show:#}");
    let id = show["drill"]["id"].as_i64().unwrap();
    assert!(!ctl.dir.join(format!("sandbox/{id}")).exists(), "sandbox removed");
    let report = ok(&mut ctl.pulihctl(&token, &["drill", "report", &id.to_string(), "--lang", "id"]));
    assert!(report.contains("LULUS") && report.contains("Budi Santoso") && report.contains("100000"), "{report}");
    eprintln!("postgres drill: RTO achieved {rto:.1}s, RPO achieved {rpo:.1}s, {} files", s["files_restored"]);
    assert!(ctl.stop());
}
