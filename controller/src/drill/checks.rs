//! Health checks and teardown steps of a drill. Commands run on the
//! controller host through `pulih_core::hooks` (own process group,
//! timeout, bounded output) with the drill's environment:
//! `PULIH_RESTORE_DIR`, `PULIH_SYSTEM`, `PULIH_DRILL_ID`,
//! `PULIH_SNAPSHOT_IDS` (comma-separated, in the order of the system's
//! datasets). HTTP checks are a GET with the check's timeout for the whole
//! exchange. Agent actions go through [`super::place::agent_action`].

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use pulih_core::hooks::{self, Hook};

use super::{place, tail, STEP_OUTPUT_LIMIT};
use crate::systems::{Check, CheckKind, Step, StepRun, System};

/// Bytes of an HTTP answer read (the check looks for `expect_body` in them).
const HTTP_BODY_LIMIT: u64 = 256 * 1024;

/// Runs a health check; `(passed, output)`.
pub fn check(
    cat: &std::sync::Mutex<crate::catalog::Catalog>,
    sys: &System,
    c: &Check,
    env: &[(&str, String)],
    cancel: &AtomicBool,
) -> (bool, String) {
    match &c.kind {
        CheckKind::Command(h) => command(h, env, c.timeout, cancel),
        CheckKind::Http { url, expect_status, expect_body } => {
            http(url, *expect_status, expect_body.as_deref(), c.timeout)
        }
        CheckKind::AgentAction(a) => place::agent_action(cat, sys, a, env, c.timeout, cancel),
    }
}

/// Runs an activation or teardown step; `(passed, output)`.
pub fn step(
    cat: &std::sync::Mutex<crate::catalog::Catalog>,
    sys: &System,
    s: &Step,
    env: &[(&str, String)],
    cancel: &AtomicBool,
) -> (bool, String) {
    match &s.run {
        StepRun::Command(h) => command(h, env, s.timeout, cancel),
        StepRun::AgentAction(a) => place::agent_action(cat, sys, a, env, s.timeout, cancel),
    }
}

fn command(h: &Hook, env: &[(&str, String)], timeout: Duration, cancel: &AtomicBool) -> (bool, String) {
    let o = hooks::run(h, env, timeout, cancel);
    let mut text = o.output.trim_end().to_owned();
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&format!("[{}, {:.1}s]", o.status, o.duration.as_secs_f64()));
    (o.success, tail(&text, STEP_OUTPUT_LIMIT))
}

fn http(url: &str, expect_status: u16, expect_body: Option<&str>, timeout: Duration) -> (bool, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let started = std::time::Instant::now();
    let mut resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Timeout(_)) => return (false, format!("GET {url}: no answer within {}s", timeout.as_secs())),
        Err(e) => return (false, format!("GET {url}: {e}")),
    };
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let read = resp.body_mut().as_reader().take(HTTP_BODY_LIMIT).read_to_end(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut out = format!("GET {url}: HTTP {status} in {:.1}s", started.elapsed().as_secs_f64());
    let mut ok = status == expect_status;
    if !ok {
        out.push_str(&format!(" (expected {expect_status})"));
    }
    if let Err(e) = read {
        out.push_str(&format!("; reading the body: {e}"));
        ok = false;
    }
    if let Some(want) = expect_body {
        if !body.contains(want) {
            out.push_str(&format!("; the body does not contain {want:?}"));
            ok = false;
        }
    }
    out.push('\n');
    out.push_str(&body);
    (ok, tail(&out, STEP_OUTPUT_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn http_check_honours_status_body_and_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for (i, s) in listener.incoming().take(3).enumerate() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                if i == 2 {
                    std::thread::sleep(Duration::from_millis(1500));
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nall ok\n");
            }
        });
        let url = format!("http://{addr}/health");
        let (ok, out) = http(&url, 200, Some("all ok"), Duration::from_secs(5));
        assert!(ok, "{out}");
        let (ok, out) = http(&url, 200, Some("database up"), Duration::from_secs(5));
        assert!(!ok && out.contains("does not contain"), "{out}");
        let (ok, out) = http(&url, 200, None, Duration::from_millis(300));
        assert!(!ok, "{out}");
        server.join().unwrap();
    }
}
