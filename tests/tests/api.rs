//! End to end: the controller's HTTPS API and `pulihctl` against the real
//! binaries, real TLS on loopback and a real catalog: the role matrix,
//! input validation, the audit chain under tampering, metrics and the
//! rate limit on failed authentication.

use std::fs;
use std::path::Path;
use std::process::Output;

use pulih_e2e::{assert_same_tree, bytes, ok, run, Agent, Controller};
use serde_json::{json, Value};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A controller serving the API, an enrolled agent and one snapshot of a
/// small tree; `failures` is `[api] auth_failures_per_minute`.
fn setup(base: &Path, failures: u32) -> (Controller, Agent, String, std::path::PathBuf) {
    let src = base.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"hello DRC\n").unwrap();
    fs::write(src.join("sub/big.bin"), bytes(7, 300_000)).unwrap();
    let mut ctl = Controller::init(base);
    ctl.edit_config(|t| t.replace("auth_failures_per_minute = 10", &format!("auth_failures_per_minute = {failures}")));
    ctl.serve();
    let agent = ctl.enroll(base, "web-pemkot");
    agent.add_dataset("web", &[&src], &[]);
    let snap = agent.snapshot();
    (ctl, agent, snap.id, src)
}

/// What a route needs, as the tests see it: the roles allowed.
fn allowed(access: &str, role: &str) -> bool {
    match access {
        "read" => true,
        "operate" => role != "auditor",
        "admin" => role == "admin",
        other => panic!("unknown access {other}"),
    }
}

/// A fresh request body for one call (restores need a new target each
/// time, relative to the controller's restore root).
fn body_for(kind: &str, snap: &str, counter: &mut u32) -> Option<Vec<u8>> {
    *counter += 1;
    let v = match kind {
        "" => return None,
        "enroll" => json!({"agent": "new-opd"}),
        "verify" => json!({"snapshots": [snap]}),
        "restore" => json!({"snapshot": snap, "target": format!("r{counter}")}),
        "token" => json!({"name": format!("n{counter}"), "role": "auditor"}),
        "prune" => json!({"dry_run": true}),
        "scrub" => json!({}),
        "drp-generate" => json!({"lang": "id", "format": "md"}),
        "drp-approve" => json!({"name": "Kepala Dinas (contoh)", "position": "Kepala Dinas"}),
        // No such system: allowed roles get 404 (nothing runs), others 403.
        "failover" => json!({"system": "no-such-system", "to": "nobody"}),
        // No system is defined: refused with 422, after the role check.
        "drill" => json!({"all": true}),
        other => panic!("{other}"),
    };
    Some(v.to_string().into_bytes())
}

#[test]
fn role_matrix_each_role_each_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, snap, _src) = setup(tmp.path(), 10_000);
    let tokens: Vec<(&str, String)> =
        ["admin", "coordinator", "auditor"].iter().map(|r| (*r, ctl.api_token(&format!("t-{r}"), r))).collect();
    let revoked = ctl.api_token("gone", "admin");
    ok(&mut ctl.cmd(&["token", "revoke", "gone"]));
    let restores = ctl.dir.join("restores");
    let snap_path = format!("/api/v1/snapshots/{snap}");
    // An id no snapshot has: allowed callers get 404, the snapshot stays.
    let forget_path = format!("/api/v1/snapshots/{}/forget", "0".repeat(64));
    // (method, path, documented path, access, body)
    // The DR plan needs organisation data: the shipped example.
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/organisation.toml.example"),
        ctl.dir.join("organisation.toml"),
    )
    .unwrap();
    let table: [(&str, &str, &str, &str, &str); 34] = [
        ("GET", "/api/v1/agents", "/api/v1/agents", "read", ""),
        ("POST", "/api/v1/agents/ghost/revoke", "/api/v1/agents/{name}/revoke", "admin", ""),
        ("POST", "/api/v1/enroll-tokens", "/api/v1/enroll-tokens", "admin", "enroll"),
        ("GET", "/api/v1/snapshots", "/api/v1/snapshots", "read", ""),
        ("GET", &snap_path, "/api/v1/snapshots/{id}", "read", ""),
        ("POST", "/api/v1/verify", "/api/v1/verify", "operate", "verify"),
        ("POST", "/api/v1/restore", "/api/v1/restore", "operate", "restore"),
        ("GET", "/api/v1/tokens", "/api/v1/tokens", "admin", ""),
        ("POST", "/api/v1/tokens", "/api/v1/tokens", "admin", "token"),
        ("DELETE", "/api/v1/tokens/nobody", "/api/v1/tokens/{name}", "admin", ""),
        ("GET", "/api/v1/audit", "/api/v1/audit", "read", ""),
        ("GET", "/api/v1/audit/verify", "/api/v1/audit/verify", "read", ""),
        ("POST", "/api/v1/prune", "/api/v1/prune", "operate", "prune"),
        ("POST", &forget_path, "/api/v1/snapshots/{id}/forget", "operate", ""),
        ("POST", "/api/v1/gc", "/api/v1/gc", "operate", ""),
        ("POST", "/api/v1/scrub", "/api/v1/scrub", "operate", "scrub"),
        ("GET", "/api/v1/scrub", "/api/v1/scrub", "read", ""),
        ("GET", "/api/v1/damage", "/api/v1/damage", "read", ""),
        ("POST", "/api/v1/drp/generate", "/api/v1/drp/generate", "operate", "drp-generate"),
        ("GET", "/api/v1/drp/versions", "/api/v1/drp/versions", "read", ""),
        ("GET", "/api/v1/drp/versions/1", "/api/v1/drp/versions/{version}", "read", ""),
        ("GET", "/api/v1/drp/versions/1/file", "/api/v1/drp/versions/{version}/file", "read", ""),
        ("GET", "/api/v1/drp/versions/1/content", "/api/v1/drp/versions/{version}/content", "read", ""),
        ("POST", "/api/v1/drp/versions/1/approve", "/api/v1/drp/versions/{version}/approve", "admin", "drp-approve"),
        ("POST", "/api/v1/failover", "/api/v1/failover", "operate", "failover"),
        ("POST", "/api/v1/failback", "/api/v1/failback", "operate", "failover"),
        ("GET", "/api/v1/failovers", "/api/v1/failovers", "read", ""),
        ("GET", "/api/v1/failovers/1", "/api/v1/failovers/{id}", "read", ""),
        ("GET", "/api/v1/standby-jobs", "/api/v1/standby-jobs", "read", ""),
        ("GET", "/api/v1/systems", "/api/v1/systems", "read", ""),
        ("POST", "/api/v1/drills", "/api/v1/drills", "operate", "drill"),
        ("GET", "/api/v1/drills", "/api/v1/drills", "read", ""),
        ("GET", "/api/v1/drills/1", "/api/v1/drills/{id}", "read", ""),
        ("GET", "/api/v1/drills/1/report", "/api/v1/drills/{id}/report", "read", ""),
    ];
    let mut counter = 0;
    let mut covered =
        vec![("GET".to_string(), "/api/v1/openapi.json".to_string()), ("GET".to_string(), "/metrics".to_string())];
    for (method, path, documented, access, body) in table {
        covered.push((method.to_string(), documented.to_string()));
        for (role, token) in &tokens {
            let (status, v) = ctl.http(method, path, Some(token), body_for(body, &snap, &mut counter).as_deref());
            if allowed(access, role) {
                assert!(
                    ![401, 403].contains(&status) && status < 500,
                    "{role} {method} {path} must be allowed, got {status} {v}"
                );
            } else {
                assert_eq!(status, 403, "{role} {method} {path}: {v}");
                assert_eq!(v["error"]["code"], "forbidden");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains(&format!("role {role} may not")), "{msg}");
            }
        }
        let b = || body_for(body, &snap, &mut 1000);
        let (status, v) = ctl.http(method, path, None, b().as_deref());
        assert_eq!(status, 401, "no token {method} {path}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
        let (status, v) = ctl.http(method, path, Some(&revoked), b().as_deref());
        assert_eq!(status, 401, "revoked token {method} {path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("revoked"), "{v}");
        let (status, _) = ctl.http(method, path, Some("pulih-api-not-a-token"), b().as_deref());
        assert_eq!(status, 401);
    }
    // Public endpoints need no token.
    assert_eq!(ctl.http("GET", "/metrics", None, None).0, 200);
    // Every operation of the served OpenAPI document is in the table above.
    let (st, doc) = ctl.http("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(st, 200);
    let mut in_doc: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            in_doc.push((m.to_uppercase(), path.clone()));
        }
    }
    in_doc.sort();
    covered.sort();
    assert_eq!(in_doc, covered, "the role matrix test must cover every documented route");
    // The allowed restores really restored, below the restore root: admin's and coordinator's.
    assert_eq!(fs::read_dir(&restores).unwrap().count(), 2);
    // Nothing was forgotten and the snapshot is intact.
    assert_eq!(ctl.snapshots().len(), 1);
}

#[test]
fn bad_input_gets_json_4xx() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, snap, _src) = setup(tmp.path(), 10_000);
    let admin = ctl.api_token("root", "admin");
    let t = Some(admin.as_str());
    let check = |method: &str, path: &str, body: Option<&[u8]>, want: u16, code: &str| {
        let (status, v) = ctl.http(method, path, t, body);
        assert_eq!(status, want, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    };
    check("POST", "/api/v1/verify", Some(br#"{"all":true,"extra":1}"#), 422, "invalid");
    check("POST", "/api/v1/tokens", Some(br#"{"name":"x","role":"auditor","admin":true}"#), 422, "invalid");
    check("POST", "/api/v1/tokens", Some(br#"{"name":"x","role":"root"}"#), 422, "invalid");
    check("POST", "/api/v1/verify", Some(b"{not json"), 400, "bad_request");
    check("POST", "/api/v1/verify", Some(br#"{}"#), 422, "invalid");
    let big = format!(r#"{{"snapshots":["{}"]}}"#, "a".repeat(100 * 1024));
    check("POST", "/api/v1/verify", Some(big.as_bytes()), 413, "too_large");
    check("GET", "/api/v1/snapshots/not-an-id", None, 400, "bad_request");
    check("GET", "/api/v1/snapshots/abc", None, 400, "bad_request");
    check("GET", &format!("/api/v1/snapshots/{}", "0".repeat(64)), None, 404, "not_found");
    check(
        "POST",
        "/api/v1/verify",
        Some(format!(r#"{{"snapshots":["{}"]}}"#, "f".repeat(64)).as_bytes()),
        404,
        "not_found",
    );
    check("GET", "/api/v1/snapshots?agent=web-pemkot&color=red", None, 400, "bad_request");
    check("GET", "/api/v1/snapshots?agent=..%2Fetc", None, 400, "bad_request");
    check("GET", "/api/v1/audit?limit=0", None, 400, "bad_request");
    check("GET", "/api/v1/nothing-here", None, 404, "not_found");
    check("PUT", "/api/v1/agents", None, 405, "bad_request");
    check("POST", "/api/v1/agents/Bad%20Name/revoke", None, 400, "bad_request");
    check("POST", "/api/v1/agents/ghost/revoke", None, 404, "not_found");
    check("DELETE", "/api/v1/tokens/..", None, 400, "bad_request");
    // API restores are confined below the restore root (<data dir>/restores).
    let abs = json!({"snapshot": snap, "target": tmp.path().join("abs")}).to_string();
    check("POST", "/api/v1/restore", Some(abs.as_bytes()), 422, "invalid");
    let dotdot = json!({"snapshot": snap, "target": "a/../../../etc"}).to_string();
    check("POST", "/api/v1/restore", Some(dotdot.as_bytes()), 422, "invalid");
    let restores = ctl.dir.join("restores");
    fs::create_dir_all(restores.join("full")).unwrap();
    fs::write(restores.join("full/x"), b"x").unwrap();
    let nonempty = json!({"snapshot": snap, "target": "full"}).to_string();
    check("POST", "/api/v1/restore", Some(nonempty.as_bytes()), 409, "conflict");
    let nopath = json!({"snapshot": snap, "target": "x", "path": "/no/such"}).to_string();
    check("POST", "/api/v1/restore", Some(nopath.as_bytes()), 404, "not_found");
    // A symbolic link below the root is not followed, even to a directory
    // the controller could write: 422 naming the link, nothing written.
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, restores.join("evil")).unwrap();
    let via_link = json!({"snapshot": snap, "target": "evil/r"}).to_string();
    let (st, v) = ctl.http("POST", "/api/v1/restore", t, Some(via_link.as_bytes()));
    assert_eq!(st, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"evil\" is a symbolic link"), "{msg}");
    assert!(fs::read_dir(&outside).unwrap().next().is_none(), "nothing restored through the link");
    let (st, v) = ctl.http("POST", "/api/v1/restore", t, Some(dotdot.as_bytes()));
    assert!(st == 422 && v["error"]["message"].as_str().unwrap().contains("'..'"), "{v}");
    let (st, v) = ctl.http("POST", "/api/v1/restore", t, Some(abs.as_bytes()));
    assert!(st == 422 && v["error"]["message"].as_str().unwrap().contains("relative path below the restore root"));
    assert!(!tmp.path().join("abs").exists());
    // A nested relative target is created below the root.
    let nested = json!({"snapshot": snap, "target": "opd/web/2026"}).to_string();
    let (st, v) = ctl.http("POST", "/api/v1/restore", t, Some(nested.as_bytes()));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["path"].as_str().unwrap(), restores.join("opd/web/2026").to_str().unwrap());
    assert_eq!(v["stats"]["files"], 2);
    check("POST", "/api/v1/tokens", Some(br#"{"name":"root","role":"auditor"}"#), 409, "conflict");
    // The server is still there and the audit log recorded the failed restores.
    let (st, rows) = ctl.http("GET", "/api/v1/audit?limit=1000", t, None);
    assert_eq!(st, 200);
    let failed_restores = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "restore" && r["result"].as_str().unwrap().starts_with("error: "))
        .count();
    // abs, .., non-empty, no such path, the link, and .. and abs again.
    assert_eq!(failed_restores, 7, "{rows}");
}

#[test]
fn failed_authentication_is_rate_limited_per_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path());
    ctl.serve();
    let good = ctl.api_token("ok", "auditor");
    assert_eq!(ctl.http("GET", "/api/v1/agents", Some(&good), None).0, 200);
    for i in 0..10 {
        let (st, v) = ctl.http("GET", "/api/v1/agents", Some(&format!("pulih-api-guess{i}")), None);
        assert_eq!(st, 401, "attempt {i}: {v}");
    }
    let (st, v) = ctl.http("GET", "/api/v1/agents", Some("pulih-api-guess-again"), None);
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    // While blocked, even the right token waits: guessing gains nothing.
    assert_eq!(ctl.http("GET", "/api/v1/agents", Some(&good), None).0, 429);
    // Public endpoints stay available.
    assert_eq!(ctl.http("GET", "/api/v1/openapi.json", None, None).0, 200);
}

fn pulihctl(ctl: &Controller, token: &str, args: &[&str]) -> Output {
    run(&mut ctl.pulihctl(token, args))
}

fn pulihctl_ok(ctl: &Controller, token: &str, args: &[&str]) -> String {
    ok(&mut ctl.pulihctl(token, args))
}

fn json_of(ctl: &Controller, token: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&pulihctl_ok(ctl, token, &a)).unwrap()
}

#[test]
fn pulihctl_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, snap, src) = setup(tmp.path(), 10_000);
    let admin = ctl.api_token("admin1", "admin");

    // Tokens: an admin makes a coordinator and an auditor.
    let coord = json_of(&ctl, &admin, &["tokens", "create", "--name", "coord", "--role", "coordinator"]);
    let coord = coord["token"].as_str().unwrap().to_owned();
    let out = pulihctl_ok(&ctl, &admin, &["tokens", "create", "--name", "aud", "--role", "auditor", "--expires", "30"]);
    let auditor = out.lines().find(|l| l.starts_with("pulih-api-")).expect("token printed").to_owned();
    let list = pulihctl_ok(&ctl, &admin, &["tokens", "list"]);
    for name in ["admin1", "coord", "aud"] {
        assert!(list.contains(name), "{list}");
    }
    assert!(!list.contains(&coord), "secrets are never listed");
    let listed = json_of(&ctl, &admin, &["tokens", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 3);

    // Agents with their dataset and lag.
    let table = pulihctl_ok(&ctl, &auditor, &["agents"]);
    assert!(table.contains("web-pemkot") && table.contains("web") && table.contains("CERT EXPIRES"), "{table}");
    let agents = json_of(&ctl, &auditor, &["agents"]);
    let a = &agents["agents"][0];
    assert_eq!(a["name"], "web-pemkot");
    assert_eq!(a["status"], "active");
    assert!(a["cert_not_after"].as_i64().unwrap() > agents["now"].as_i64().unwrap());
    assert!(a["last_seen_at"].as_i64().is_some());
    assert_eq!(a["datasets"][0]["name"], "web");
    assert_eq!(a["datasets"][0]["snapshots"], 1);
    let lag = a["datasets"][0]["lag_secs"].as_i64().unwrap();
    assert!((0..600).contains(&lag), "{lag}");

    // Snapshots.
    let table = pulihctl_ok(&ctl, &auditor, &["snapshots", "--agent", "web-pemkot"]);
    assert!(table.contains(&snap[..12]) && table.contains("1 snapshot(s)"), "{table}");
    let rows = json_of(&ctl, &auditor, &["snapshots", "--dataset", "web"]);
    assert_eq!(rows[0]["id"], snap.as_str());
    assert_eq!(json_of(&ctl, &auditor, &["snapshots", "--dataset", "other"]).as_array().unwrap().len(), 0);
    let show = pulihctl_ok(&ctl, &auditor, &["snapshot", "show", &snap[..10]]);
    assert!(show.contains(&snap) && show.contains(src.to_str().unwrap()), "{show}");
    assert_eq!(json_of(&ctl, &auditor, &["snapshot", "show", &snap])["files"], 2);

    // The auditor may not verify or restore, and is told why.
    let o = pulihctl(&ctl, &auditor, &["verify", "--all"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("this token's role auditor may not"), "{}", stderr(&o));

    // Verify and restore as coordinator.
    let out = pulihctl_ok(&ctl, &coord, &["verify", &snap[..8]]);
    assert!(
        out.contains("Verified 1 snapshot(s)") && out.contains(" checked in ") && out.contains("0 damaged"),
        "{out}"
    );
    let v = json_of(&ctl, &coord, &["verify", "--all"]);
    assert_eq!(v["snapshots"], 1);
    assert_eq!(v["damage"].as_array().unwrap().len(), 0);
    let dest = ctl.dir.join("restores/restored");
    let out = pulihctl_ok(&ctl, &coord, &["restore", &snap, "--target", "restored", "--path", src.to_str().unwrap()]);
    assert!(out.contains("Restored snapshot") && out.contains(dest.to_str().unwrap()), "{out}");
    assert_same_tree(&src, &dest);
    let r = json_of(
        &ctl,
        &coord,
        &["restore", &snap, "--target", "restored-sub", "--path", src.join("sub").to_str().unwrap()],
    );
    assert_eq!(r["stats"]["files"], 1);
    assert_same_tree(&src.join("sub"), &ctl.dir.join("restores/restored-sub"));
    let o = pulihctl(&ctl, &coord, &["restore", &snap, "--target", tmp.path().join("abs").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not an absolute path"), "{}", stderr(&o));

    // A coordinator may not manage tokens.
    let o = pulihctl(&ctl, &coord, &["tokens", "list"]);
    assert!(stderr(&o).contains("this token's role coordinator may not administer"), "{}", stderr(&o));

    let (_, m) = ctl.http("GET", "/metrics", None, None);
    let expiry = format!(
        r#"pulih_agent_certificate_expiry_timestamp_seconds{{agent="web-pemkot"}} {}"#,
        a["cert_not_after"].as_i64().unwrap()
    );
    assert!(m.as_str().unwrap().contains(&expiry), "{m}");

    // Enrollment token over the API, then revoke the agent and the auditor.
    let e = json_of(&ctl, &admin, &["enroll", "new-opd"]);
    assert!(e["token"].as_str().unwrap().starts_with("pulih-"));
    assert_eq!(e["fingerprint"].as_str().unwrap().len(), ctl.token("x").1.len());
    pulihctl_ok(&ctl, &admin, &["agents", "revoke", "web-pemkot"]);
    assert_eq!(json_of(&ctl, &auditor, &["agents"])["agents"][0]["status"], "revoked");
    pulihctl_ok(&ctl, &admin, &["tokens", "revoke", "aud"]);
    let o = pulihctl(&ctl, &auditor, &["agents"]);
    assert!(stderr(&o).contains("refused the token") && stderr(&o).contains("revoked"), "{}", stderr(&o));

    // The audit log has all of it, with who did it.
    let rows = json_of(&ctl, &admin, &["audit", "list", "--limit", "1000"]);
    let rows = rows.as_array().unwrap();
    let has = |actor: &str, action: &str| {
        rows.iter().any(|r| r["actor"] == actor && r["action"] == action && r["result"] == "ok")
    };
    let me = ok(std::process::Command::new("id").arg("-un")).trim().to_owned();
    assert!(has(&format!("local:{me}"), "config-change"), "{rows:?}");
    assert!(has(&format!("local:{me}"), "enroll-token"));
    assert!(has("agent:web-pemkot", "enroll"));
    assert!(has(&format!("local:{me}"), "token-create"));
    assert!(has("token:admin1", "token-create"));
    assert!(has("token:coord", "verify"));
    assert!(has("token:coord", "restore"));
    assert!(has("token:admin1", "enroll-token"));
    assert!(has("token:admin1", "revoke-agent"));
    assert!(has("token:admin1", "token-revoke"));
    let table = pulihctl_ok(&ctl, &admin, &["audit", "list", "--after", "2", "--limit", "3"]);
    assert_eq!(table.lines().count(), 4, "header and 3 rows: {table}");
    assert!(table.lines().nth(1).unwrap().trim_start().starts_with("3 "), "{table}");
    let out = pulihctl_ok(&ctl, &admin, &["audit", "verify"]);
    assert!(out.contains("Audit log intact"), "{out}");
    assert_eq!(json_of(&ctl, &admin, &["audit", "verify"])["ok"], true);

    // Metrics: per dataset lag, store sizes, API requests by route.
    let (st, m) = ctl.http("GET", "/metrics", None, None);
    assert_eq!(st, 200);
    let m = m.as_str().unwrap();
    for needle in [
        r#"pulih_dataset_lag_seconds{agent="web-pemkot",dataset="web"}"#,
        r#"pulih_dataset_last_snapshot_timestamp_seconds{agent="web-pemkot",dataset="web"}"#,
        r#"pulih_agent_active{agent="web-pemkot"} 0"#,
        r#"pulih_store_blobs{kind="chunk"}"#,
        "pulih_store_dedup_ratio",
        r#"pulih_api_requests_total{method="POST",route="/api/v1/restore",status="200"} 2"#,
        r#"route="/api/v1/tokens",status="403""#,
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

#[test]
fn pulihctl_reads_its_config_file_and_explains_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path());
    ctl.serve();
    let tok = ctl.api_token("reader", "auditor");
    let tf = tmp.path().join("tok");
    fs::write(&tf, &tok).unwrap();
    let cfg = tmp.path().join("ctl.toml");
    fs::write(
        &cfg,
        format!("controller = \"https://{}\"\ntoken_file = {:?}\nca = {:?}\n", ctl.api, tf, ctl.dir.join("pki/ca.pem")),
    )
    .unwrap();
    let out = ok(std::process::Command::new(pulih_e2e::bin("pulihctl"))
        .env("PULIHCTL_CONFIG", &cfg)
        .args(["agents", "--json"]));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["agents"], json!([]));
    let o = run(std::process::Command::new(pulih_e2e::bin("pulihctl"))
        .env_remove("PULIHCTL_CONFIG")
        .env("HOME", tmp.path())
        .arg("agents"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no controller address"), "{}", stderr(&o));
    // A CA that is not the controller's: refused at the TLS handshake.
    let other = tempfile::tempdir().unwrap();
    let stranger = Controller::init(other.path());
    let o = run(std::process::Command::new(pulih_e2e::bin("pulihctl"))
        .env("PULIHCTL_CONFIG", &cfg)
        .arg("--ca")
        .arg(stranger.dir.join("pki/ca.pem"))
        .arg("agents"));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("cannot reach the controller"), "{}", stderr(&o));
}

/// Runs `pulihctl audit verify` against a catalog tampered with `sql`
/// while the controller was stopped.
fn tampered(ctl: &mut Controller, pristine: &Path, token: &str, sql: &str) -> Output {
    ctl.stop();
    fs::copy(pristine, ctl.dir.join("catalog.db")).unwrap();
    let conn = rusqlite::Connection::open(ctl.dir.join("catalog.db")).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    ctl.serve();
    let o = pulihctl(ctl, token, &["audit", "verify"]);
    ctl.stop();
    o
}

#[test]
fn audit_edit_delete_and_truncation_are_detected_by_pulihctl() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path());
    ctl.serve();
    let admin = ctl.api_token("boss", "admin");
    let _agent = ctl.enroll(tmp.path(), "opd-x");
    ok(&mut ctl.cmd(&["revoke-agent", "opd-x"]));
    // A failed action is recorded too.
    let o = run(&mut ctl.cmd(&["revoke-agent", "nobody"]));
    assert!(!o.status.success());
    pulihctl_ok(&ctl, &admin, &["tokens", "create", "--name", "later", "--role", "auditor"]);
    let rows = json_of(&ctl, &admin, &["audit", "list"]);
    let rows = rows.as_array().unwrap().clone();
    let n = rows.len() as i64;
    assert!(n >= 6, "{rows:?}");
    assert!(rows
        .iter()
        .any(|r| r["action"] == "revoke-agent" && r["result"].as_str().unwrap().starts_with("error: no agent")));
    assert!(pulihctl_ok(&ctl, &admin, &["audit", "verify"]).contains("intact"));

    // A configuration change is audited at the next start.
    ctl.stop();
    ctl.edit_config(|t| t.replace("token_ttl_hours = 24", "token_ttl_hours = 48"));
    ctl.serve();
    let rows = json_of(&ctl, &admin, &["audit", "list", "--after", &n.to_string()]);
    assert_eq!(rows[0]["action"], "config-change", "{rows}");
    assert_eq!(json_of(&ctl, &admin, &["audit", "list", "--limit", "1000"]).as_array().unwrap().len() as i64, n + 1);
    let n = n + 1;
    ctl.stop();
    let pristine = tmp.path().join("pristine.db");
    fs::copy(ctl.dir.join("catalog.db"), &pristine).unwrap();
    assert!(
        !ctl.dir.join("catalog.db-wal").exists() || fs::metadata(ctl.dir.join("catalog.db-wal")).unwrap().len() == 0
    );

    for (what, sql, row) in [
        ("edited row", "UPDATE audit_log SET actor = 'local:nobody' WHERE seq = 3".to_string(), 3),
        ("deleted middle row", "DELETE FROM audit_log WHERE seq = 4".to_string(), 4),
        ("deleted last row", format!("DELETE FROM audit_log WHERE seq = {n}"), n),
    ] {
        let o = tampered(&mut ctl, &pristine, &admin, &sql);
        assert_eq!(o.status.code(), Some(2), "{what}: {}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains(&format!("AUDIT LOG BROKEN at row {row}:")), "{what}: {}", stdout(&o));
    }
    // And the pristine copy still verifies.
    let o = tampered(&mut ctl, &pristine, &admin, "SELECT 1");
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn metrics_can_be_turned_off() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path());
    ctl.edit_config(|t| t.replace("metrics = true", "metrics = false"));
    ctl.serve();
    let (st, v) = ctl.http("GET", "/metrics", None, None);
    assert_eq!(st, 404, "{v}");
}
