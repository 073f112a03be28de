//! Helpers for end-to-end tests: start the real `pulih-controller` and
//! `pulih-agent` binaries on loopback with real TLS, and compare trees.
//!
//! The binaries are built by `cargo test --workspace` (each binary's package
//! has integration tests of its own, which makes cargo build it); they are
//! found next to the test executable's `deps/` directory.

pub mod stored;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built; run `cargo build --workspace` or `cargo test --workspace`", p.display());
    p
}

/// Runs a command, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("spawn")
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    // The kernel may hand the same ephemeral port out again right after it
    // was released: never give one twice in a test process (a controller
    // needs two distinct ones).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

/// A controller data directory, and its server while running.
pub struct Controller {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    /// Address of the HTTPS API (`[api] listen`).
    pub api: SocketAddr,
    child: Option<Child>,
}

impl Controller {
    /// `init`s a data directory under `base` (not started).
    pub fn init(base: &Path) -> Self {
        let dir = base.join("drc");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        ok(Command::new(bin("pulih-controller"))
            .args(["init", "--listen", &addr.to_string(), "--api-listen", &api.to_string(), "--data-dir"])
            .arg(&dir));
        Self { dir, addr, api, child: None }
    }

    /// `init` and `serve`.
    pub fn start(base: &Path) -> Self {
        let mut c = Self::init(base);
        c.serve();
        c
    }

    /// A controller command with `--data-dir`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("pulih-controller"));
        c.args(args).arg("--data-dir").arg(&self.dir);
        c
    }

    /// Starts the server and waits until it accepts connections.
    pub fn serve(&mut self) {
        assert!(self.child.is_none(), "already serving");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("serve.log")).unwrap();
        let child = Command::new(bin("pulih-controller"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn controller");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "controller did not start: {}", self.log());
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("controller exited with {st}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        let pid = rustix::process::Pid::from_child(&c);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a token for `name`; returns (token, fingerprint).
    pub fn token(&self, name: &str) -> (String, String) {
        let out = ok(&mut self.cmd(&["enroll-agent", name, "--json"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v["token"].as_str().unwrap().to_owned(), v["fingerprint"].as_str().unwrap().to_owned())
    }

    /// Enrolls an agent whose state lives under `base/<name>`.
    pub fn enroll(&self, base: &Path, name: &str) -> Agent {
        let (token, fp) = self.token(name);
        let state = base.join(format!("{name}-state"));
        let config = base.join(format!("{name}.toml"));
        ok(Command::new(bin("pulih-agent"))
            .args([
                "enroll",
                "--controller",
                &self.addr.to_string(),
                "--token",
                &token,
                "--fingerprint",
                &fp,
                "--name",
                name,
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config));
        Agent { name: name.to_owned(), state, config }
    }

    /// Snapshots as listed by `snapshots --json`.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&ok(&mut self.cmd(&["snapshots", "--json"]))).unwrap()
    }

    /// Restores `snapshot` (the path `sub` of it) into `dest`.
    pub fn restore(&self, snapshot: &str, sub: Option<&Path>, dest: &Path) -> Output {
        let mut c = self.cmd(&["restore", snapshot]);
        c.arg(dest);
        if let Some(s) = sub {
            c.arg("--path").arg(s);
        }
        run(&mut c)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An enrolled agent.
pub struct Agent {
    pub name: String,
    pub state: PathBuf,
    pub config: PathBuf,
}

/// Parsed `snapshot --json` output of one dataset.
#[derive(Debug)]
pub struct SnapOut {
    pub id: String,
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub bytes_new: u64,
    pub errors: u64,
}

impl Agent {
    /// Appends a dataset table to the config.
    pub fn add_dataset(&self, name: &str, paths: &[&Path], exclude: &[&str]) {
        let mut text = fs::read_to_string(&self.config).unwrap();
        let q = |s: &str| format!("{s:?}");
        let paths: Vec<String> = paths.iter().map(|p| q(p.to_str().unwrap())).collect();
        let ex: Vec<String> = exclude.iter().map(|e| q(e)).collect();
        text.push_str(&format!(
            "\n[[dataset]]\nname = {}\npaths = [{}]\nexclude = [{}]\n",
            q(name),
            paths.join(", "),
            ex.join(", ")
        ));
        fs::write(&self.config, text).unwrap();
    }

    /// A `pulih-agent` command with `--config`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("pulih-agent"));
        c.args(args).arg("--config").arg(&self.config);
        c
    }

    /// Runs `snapshot --json`; returns the raw output.
    pub fn snapshot_raw(&self) -> Output {
        run(&mut self.cmd(&["snapshot", "--json"]))
    }

    /// Runs `snapshot --json`, which must succeed with one dataset.
    pub fn snapshot(&self) -> SnapOut {
        let out = ok(&mut self.cmd(&["snapshot", "--json"]));
        let line = out.lines().next().expect("one line of output");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
        SnapOut {
            id: v["id"].as_str().unwrap().to_owned(),
            files: n("files"),
            bytes_read: n("bytes_read"),
            bytes_sent: n("bytes_sent"),
            bytes_new: n("bytes_new"),
            errors: n("errors"),
        }
    }
}

/// A description of every entry of a tree, for equality checks: type,
/// mode, mtime (ns), size, content hash or link target, hard-link group,
/// whether sparse, and owner when `owners`.
pub fn describe(root: &Path, owners: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    walk(root, root, owners, &mut out, &mut inodes);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, owners: bool, out: &mut Vec<String>, inodes: &mut HashMap<(u64, u64), String>) {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let own = if owners { format!(" {}:{}", m.uid(), m.gid()) } else { String::new() };
        let ft = m.file_type();
        let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        if ft.is_dir() {
            walk(root, &p, owners, out, inodes);
            out.push(format!("{rel:?} dir {:o} {mtime}{own}", m.mode() & 0o7777));
        } else if ft.is_symlink() {
            let t = fs::read_link(&p).unwrap();
            out.push(format!("{rel:?} symlink -> {t:?} {mtime}{own}"));
        } else if ft.is_file() {
            let mut h = blake3::Hasher::new();
            let mut f = fs::File::open(&p).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let link = if m.nlink() > 1 {
                let first = inodes.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone()).clone();
                format!(" link:{first:?}")
            } else {
                String::new()
            };
            let sparse = (m.blocks() * 512) < m.size() / 2 && m.size() > 65536;
            out.push(format!(
                "{rel:?} file {:o} {mtime} {} {}{link}{}{own}",
                m.mode() & 0o7777,
                m.size(),
                h.finalize().to_hex(),
                if sparse { " sparse" } else { "" }
            ));
        } else if ft.is_fifo() {
            out.push(format!("{rel:?} fifo {:o} {mtime}{own}", m.mode() & 0o7777));
        }
    }
}

/// Asserts two trees are equal entry by entry.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let owners = rustix::process::geteuid().is_root();
    let (da, db) = (describe(a, owners), describe(b, owners));
    if da != db {
        let only_a: Vec<_> = da.iter().filter(|x| !db.contains(x)).take(10).collect();
        let only_b: Vec<_> = db.iter().filter(|x| !da.contains(x)).take(10).collect();
        panic!("trees differ\n  only in {}: {only_a:#?}\n  only in {}: {only_b:#?}", a.display(), b.display());
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Controller {
    /// Process id of the running server, if it is running (for checks on
    /// its CPU use).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Sets a path's access and modification times (nanoseconds since the
/// epoch) without following a symlink.
pub fn set_mtime(p: &Path, ns: i64) {
    let t = rustix::fs::Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) as _ };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `pulih-agent run`, its log in a file; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`rustix::process::Signal`).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Whether the process has exited (and its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Appends a dataset table with extra `key = value` lines (TOML).
    pub fn add_dataset_with(&self, name: &str, paths: &[&Path], extra: &str) {
        let mut text = fs::read_to_string(&self.config).unwrap();
        let paths: Vec<String> = paths.iter().map(|p| format!("{:?}", p.to_str().unwrap())).collect();
        text.push_str(&format!("\n[[dataset]]\nname = {name:?}\npaths = [{}]\n{extra}\n", paths.join(", ")));
        fs::write(&self.config, text).unwrap();
    }

    /// Appends text (whole tables) to the configuration.
    pub fn append_config(&self, toml: &str) {
        let mut text = fs::read_to_string(&self.config).unwrap();
        text.push('\n');
        text.push_str(toml);
        text.push('\n');
        fs::write(&self.config, text).unwrap();
    }

    /// Starts `pulih-agent run`; its standard error goes to a log file
    /// beside the configuration.
    pub fn start_daemon(&self) -> Daemon {
        let log = self.config.with_extension(format!("{}.log", fastrand_suffix()));
        let f = fs::File::create(&log).unwrap();
        let child = self
            .cmd(&["run"])
            .env("PULIH_LOG", "info,pulih_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn pulih-agent run");
        Daemon { child, log }
    }
}

fn fastrand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("run{}", N.fetch_add(1, Ordering::Relaxed))
}

/// `GET path` over plain HTTP on loopback; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The HTTP API and `pulihctl` (issue 4).
impl Controller {
    /// Creates an API token locally (`token create`); returns the secret.
    pub fn api_token(&self, name: &str, role: &str) -> String {
        let out = ok(&mut self.cmd(&["token", "create", "--name", name, "--role", role, "--json"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Rewrites controller.toml (takes effect at the next `serve`).
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let p = self.dir.join("controller.toml");
        let text = fs::read_to_string(&p).unwrap();
        fs::write(&p, f(text)).unwrap();
    }

    /// `pulihctl` with `--controller`, `--ca` and a token file holding `token`.
    /// Runs `pulihctl drill run ARGS`; returns (exit code, `drill show --json`
    /// of the drill it started, its standard output).
    pub fn drill_run(&self, token: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
        let mut a = vec!["drill", "run"];
        a.extend_from_slice(args);
        let out = run(&mut self.pulihctl(token, &a));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Drill ").and_then(|r| r.split_whitespace().next()))
            .unwrap_or_else(|| panic!("no drill id in: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
            .to_owned();
        let show = serde_json::from_str(&ok(&mut self.pulihctl(token, &["--json", "drill", "show", &id]))).unwrap();
        (out.status.code().unwrap_or(-1), show, text)
    }

    pub fn pulihctl(&self, token: &str, args: &[&str]) -> Command {
        let tf = self.dir.join(format!("token-{}", blake3::hash(token.as_bytes()).to_hex()));
        fs::write(&tf, format!("{token}\n")).unwrap();
        let mut c = Command::new(bin("pulihctl"));
        c.env_remove("PULIHCTL_CONFIG")
            .env("HOME", &self.dir)
            .arg("--controller")
            .arg(format!("https://{}", self.api))
            .arg("--token-file")
            .arg(&tf)
            .arg("--ca")
            .arg(self.dir.join("pki/ca.pem"))
            .args(args);
        c
    }

    /// One HTTPS request to the API, pinning the controller's CA; returns
    /// the status and the body (JSON, or a string for other bodies).
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> (u16, serde_json::Value) {
        let pem = fs::read(self.dir.join("pki/ca.pem")).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![cert])))
            .unversioned_rustls_crypto_provider(pulih_core::tls::provider())
            .build();
        let agent: ureq::Agent =
            ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into();
        let url = format!("https://{}{path}", self.api);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req.body(body.unwrap_or_default().to_vec()).unwrap();
        let mut resp = agent.run(req).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }
}
