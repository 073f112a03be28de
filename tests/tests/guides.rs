//! The role guides' command examples, run as written (issue 9): the three
//! Indonesian guides (docs/id/panduan-{sysadmin,koordinator,auditor}.md) are
//! parsed and every command they show is executed, in order, against a real
//! controller and real agents that the guides themselves set up; the English
//! guides (docs/en/guide-*.md) must show the same commands in the same order.
//!
//! Conventions of the guides (also stated at the top of each guide):
//!
//! - A fenced block with info string `console` holds commands: a line that
//!   starts with `$ ` is a command (a trailing `\` continues it on the next
//!   line; a `<<'EOF'` or `<<EOF` here-document takes the lines up to `EOF`).
//!   The other lines are expected output: each must appear in what the command
//!   printed (standard output, then standard error), in order, compared word
//!   by word with runs of spaces collapsed. A word holding a digit is a
//!   placeholder that matches any word (ids, sizes, times differ per run), and
//!   a size unit (B, KiB, MiB, GiB, TiB) matches any of them; a
//!   word ending in `…` matches any word with that beginning, and a lone `…`
//!   at the end of a line matches the rest of it. A placeholder holding eight
//!   or more hex digits in a row (a token, fingerprint or snapshot id) is
//!   remembered: later commands that show the sample value get the real one.
//! - `console exit=N`: every command of the block must exit with status N
//!   (otherwise 0).
//! - `console host=NAME`: the block runs on host NAME (default `drc`, the DRC
//!   server). Hosts are directories of one temporary root.
//! - `console no-test`: commands that cannot run here (systemctl on the host,
//!   install.sh writing /usr/local, package managers, removing files of the
//!   system). They are not executed, and their number per guide is asserted
//!   below so that a new one is a conscious decision. A few of them are
//!   emulated by the test, because what follows depends on them (`emulate`):
//!   install.sh with `--root` into the host's directory, `systemctl
//!   enable --now|start|restart|stop|reload` of pulih-controller (runs `serve`)
//!   and pulih-agent (runs `pulih-agent run`, SIGHUP for reload), and `scp
//!   drc.example.go.id:SRC DEST` (a copy between the hosts' directories).
//!
//! Each `$` line runs in a fresh `bash -c` (nothing carries over but files),
//! in the host's home directory, with `HOME` set to it and `PATH` starting
//! with a directory holding the three binaries and two stand-ins: `sudo`
//! (drops `-u USER`, runs the rest as the test's user) and `systemctl`
//! (records its arguments in `<root>/systemctl.log`; only the agents' standby
//! actions call it, and the test checks what they asked for).
//!
//! Text substitutions applied to commands (and reversed on their output
//! before it is compared): `/var/lib/pulih` -> `<root>/drc/var/lib/pulih`
//! (the DRC's data directory), `/etc/pulih` and `/var/lib/pulih-agent` ->
//! `<root>/<host>/...`, `/srv/` -> `<root>/srv/` (shared by all hosts, since
//! snapshots keep source paths that DRC commands name), `drc.example.go.id`
//! -> `localhost`, and the ports 7443 (agents), 7444 (API) and 9464 (agent
//! metrics, one port per host) -> free loopback ports. The guides leave out
//! `--data-dir` where it is the default `/var/lib/pulih`: the test sets
//! `PULIH_DATA_DIR`, which the commands read in its place.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pulih_e2e::{bin, free_port, wait_until};

/// The guides in the order they are run (each builds on the previous one).
const GUIDES: [(&str, &str); 3] = [
    ("docs/id/panduan-sysadmin.md", "docs/en/guide-sysadmin.md"),
    ("docs/id/panduan-koordinator.md", "docs/en/guide-coordinator.md"),
    ("docs/id/panduan-auditor.md", "docs/en/guide-auditor.md"),
];

/// Blocks marked `console no-test` per guide: change on purpose only.
const NO_TEST_BLOCKS: [usize; 3] = [15, 3, 1];

/// Standard paths of a real installation: a command that reaches one (by a
/// default the guide left out) would change the machine running the test.
const REAL_PATHS: [&str; 6] =
    ["/etc/pulih", "/var/lib/pulih", "/var/lib/pulih-agent", "/srv/simpeg", "/srv/pulih", "/srv/pemulihan"];

/// Longest a single command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, PartialEq)]
struct Info {
    test: bool,
    exit: i32,
    host: String,
}

#[derive(Debug, Clone)]
struct Cmd {
    /// The command as written (continuations joined, here-document included).
    text: String,
    /// Expected output lines.
    expected: Vec<String>,
    /// Line in the guide.
    line: usize,
}

#[derive(Debug)]
struct Block {
    info: Info,
    cmds: Vec<Cmd>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn parse_info(file: &str, line: usize, rest: &str) -> Option<Info> {
    let mut words = rest.split_whitespace();
    if words.next() != Some("console") {
        return None;
    }
    let mut info = Info { test: true, exit: 0, host: "drc".into() };
    for w in words {
        if w == "no-test" {
            info.test = false;
        } else if let Some(n) = w.strip_prefix("exit=") {
            info.exit = n.parse().unwrap_or_else(|_| panic!("{file}:{line}: bad exit code in {rest:?}"));
        } else if let Some(h) = w.strip_prefix("host=") {
            info.host = h.to_owned();
        } else {
            panic!("{file}:{line}: unknown attribute {w:?} in {rest:?}");
        }
    }
    Some(info)
}

/// The `console` blocks of a guide. Panics on anything malformed, and on a
/// `$ ` line in a fence that is not a `console` block (it would be skipped).
fn parse(file: &str) -> Vec<Block> {
    let text = fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(rest) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i + 1;
        let info = parse_info(file, start, rest);
        i += 1;
        let mut cmds: Vec<Cmd> = Vec::new();
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            let l = lines[i];
            match (&info, l.strip_prefix("$ ")) {
                (None, Some(_)) => panic!("{file}:{}: a `$ ` command outside a ```console block", i + 1),
                (None, None) => i += 1,
                (Some(_), Some(c)) => {
                    let line = i + 1;
                    let mut text = c.to_owned();
                    while text.ends_with('\\') {
                        i += 1;
                        assert!(i < lines.len(), "{file}:{line}: continuation past the end");
                        text.push('\n');
                        text.push_str(lines[i]);
                    }
                    if text.contains("<<'EOF'") || text.contains("<<EOF") {
                        loop {
                            i += 1;
                            assert!(i < lines.len() && !lines[i].starts_with("```"), "{file}:{line}: EOF missing");
                            text.push('\n');
                            text.push_str(lines[i]);
                            if lines[i] == "EOF" {
                                break;
                            }
                        }
                    }
                    cmds.push(Cmd { text, expected: Vec::new(), line });
                    i += 1;
                }
                (Some(_), None) => {
                    let c = cmds.last_mut().unwrap_or_else(|| panic!("{file}:{}: output before a command", i + 1));
                    if !l.trim().is_empty() {
                        c.expected.push(l.to_owned());
                    }
                    i += 1;
                }
            }
        }
        assert!(i < lines.len(), "{file}:{start}: unclosed fence");
        i += 1;
        if let Some(info) = info {
            assert!(!cmds.is_empty(), "{file}:{start}: a console block without a `$ ` command");
            blocks.push(Block { info, cmds });
        }
    }
    blocks
}

/// What must be equal between the two languages: attributes, command lines,
/// and here-documents without their comment lines.
fn shape(blocks: &[Block]) -> Vec<(Info, String)> {
    let mut out = Vec::new();
    for b in blocks {
        for c in &b.cmds {
            let text: Vec<&str> = c.text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
            out.push((b.info.clone(), text.join("\n")));
        }
    }
    out
}

#[test]
fn english_guides_show_the_same_commands_as_the_indonesian_ones() {
    for (id, en) in GUIDES {
        let (a, b) = (shape(&parse(id)), shape(&parse(en)));
        for (n, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "command {} differs between {id} and {en}", n + 1);
        }
        assert_eq!(a.len(), b.len(), "{id} has {} commands, {en} {}", a.len(), b.len());
    }
}

#[test]
fn no_test_blocks_are_counted() {
    for ((id, _), want) in GUIDES.iter().zip(NO_TEST_BLOCKS) {
        let blocks = parse(id);
        let n = blocks.iter().filter(|b| !b.info.test).count();
        assert_eq!(n, want, "{id}: {n} blocks marked `console no-test`, expected {want}");
        let run = blocks.iter().filter(|b| b.info.test).map(|b| b.cmds.len()).sum::<usize>();
        assert!(run >= 5, "{id}: only {run} commands are run");
    }
}

/// Compares expected lines with the output; returns the values learned from
/// placeholders, or the first expected line not found.
fn matches(expected: &[String], output: &str) -> Result<Vec<(String, String)>, String> {
    let actual: Vec<Vec<&str>> = output.lines().map(|l| l.split_whitespace().collect()).collect();
    let mut learned = Vec::new();
    let mut from = 0;
    for e in expected {
        let want: Vec<&str> = e.split_whitespace().collect();
        if want == ["…"] || want == ["..."] {
            continue;
        }
        let found = (from..actual.len()).find_map(|i| line_matches(&want, &actual[i]).map(|l| (i, l)));
        match found {
            Some((i, l)) => {
                learned.extend(l);
                from = i + 1;
            }
            None => return Err(e.clone()),
        }
    }
    Ok(learned)
}

fn line_matches(want: &[&str], got: &[&str]) -> Option<Vec<(String, String)>> {
    let mut learned = Vec::new();
    for (k, w) in want.iter().enumerate() {
        if *w == "…" && k + 1 == want.len() {
            return Some(learned);
        }
        let g = got.get(k)?;
        if w == g {
            continue;
        }
        if w.chars().any(|c| c.is_ascii_digit()) {
            if hex_run(w) >= 8 && !w.ends_with('…') {
                learned.push((w.to_string(), g.to_string()));
            }
            continue;
        }
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        if UNITS.contains(w) && UNITS.contains(g) {
            continue;
        }
        match w.strip_suffix('…') {
            Some(prefix) if g.starts_with(prefix) => {}
            _ => return None,
        }
    }
    (want.len() == got.len()).then_some(learned)
}

fn hex_run(s: &str) -> usize {
    let (mut best, mut cur) = (0, 0);
    for c in s.chars() {
        cur = if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() { cur + 1 } else { 0 };
        best = best.max(cur);
    }
    best
}

/// The world the guides run in: one temporary root with a directory per host.
struct World {
    root: PathBuf,
    bin: PathBuf,
    ctl_port: u16,
    api_port: u16,
    metrics: HashMap<String, u16>,
    learned: Vec<(String, String)>,
    serve: Option<Child>,
    agents: HashMap<String, Child>,
    show: bool,
    seq: usize,
    /// Hosts seen so far (directories below `root`).
    hosts: Vec<String>,
    /// REAL_PATHS that existed before the test.
    real_paths: Vec<&'static str>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, mut c) in self.agents.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl World {
    fn new(root: &Path) -> Self {
        let bin_dir = root.join("bin");
        fs::create_dir_all(&bin_dir).unwrap();
        for b in ["pulih-controller", "pulih-agent", "pulihctl"] {
            std::os::unix::fs::symlink(bin(b), bin_dir.join(b)).unwrap();
        }
        let script = |name: &str, body: &str| {
            let p = bin_dir.join(name);
            fs::write(&p, body).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "sudo",
            "#!/bin/sh\n# Stand-in for sudo: runs the command as the test's user.\n\
             while [ $# -gt 0 ]; do case \"$1\" in -u) shift 2 ;; -*) shift ;; *) break ;; esac; done\n\
             exec env \"$@\"\n",
        );
        script(
            "systemctl",
            &format!(
                "#!/bin/sh\n# Stand-in for systemctl in agent actions: records what was asked.\n\
                 echo \"${{PULIH_TEST_HOST:-?}}: $*\" >> {:?}\n",
                root.join("systemctl.log")
            ),
        );
        fs::create_dir_all(root.join("srv")).unwrap();
        Self {
            root: root.to_path_buf(),
            bin: bin_dir,
            ctl_port: free_port(),
            api_port: free_port(),
            metrics: HashMap::new(),
            learned: Vec::new(),
            serve: None,
            agents: HashMap::new(),
            show: std::env::var_os("PULIH_GUIDES_SHOW").is_some(),
            seq: 0,
            hosts: Vec::new(),
            real_paths: REAL_PATHS.into_iter().filter(|p| Path::new(p).exists()).collect(),
        }
    }

    fn host_dir(&mut self, host: &str) -> PathBuf {
        if !self.hosts.iter().any(|h| h == host) {
            self.hosts.push(host.to_owned());
        }
        let d = self.root.join(host);
        for sub in ["etc/pulih", "var/lib/pulih-agent", "home"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        d
    }

    fn metrics_port(&mut self, host: &str) -> u16 {
        *self.metrics.entry(host.to_owned()).or_insert_with(free_port)
    }

    /// A command of the guide as it runs here.
    fn localize(&mut self, text: &str, host: &str) -> String {
        let mut t = text.to_owned();
        for (sample, real) in &self.learned {
            t = t.replace(sample.as_str(), real);
        }
        let h = self.host_dir(host);
        let drc = self.root.join("drc/var/lib/pulih");
        let metrics = self.metrics_port(host);
        t.replace("/var/lib/pulih-agent", "\u{1}")
            .replace("/var/lib/pulih", drc.to_str().unwrap())
            .replace('\u{1}', h.join("var/lib/pulih-agent").to_str().unwrap())
            .replace("/etc/pulih", h.join("etc/pulih").to_str().unwrap())
            .replace("/srv/", &format!("{}/", self.root.join("srv").display()))
            .replace("drc.example.go.id", "localhost")
            .replace(":7443", &format!(":{}", self.ctl_port))
            .replace(":7444", &format!(":{}", self.api_port))
            .replace(":9464", &format!(":{metrics}"))
    }

    /// Output as the guide shows it: the substitutions reversed.
    fn delocalize(&self, text: &str) -> String {
        let mut t = text.to_owned();
        let root = self.root.to_str().unwrap();
        let mut hosts = self.hosts.clone();
        hosts.sort_by_key(|h| std::cmp::Reverse(h.len()));
        for h in hosts {
            t = t.replace(&format!("{root}/{h}/"), "/");
        }
        t = t.replace(&format!("{root}/"), "/");
        t = t.replace(&format!(":{}", self.ctl_port), ":7443").replace(&format!(":{}", self.api_port), ":7444");
        for p in self.metrics.values() {
            t = t.replace(&format!(":{p}"), ":9464");
        }
        t
    }

    fn command(&self, host: &str, program: &str) -> Command {
        let home = self.root.join(host).join("home");
        let mut c = Command::new(program);
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        c.current_dir(&home)
            .env("HOME", &home)
            .env("PATH", path)
            .env("PULIH_TEST_HOST", host)
            .env("LANG", "C.UTF-8")
            // The default data directory of the admin commands (`--data-dir`).
            .env("PULIH_DATA_DIR", self.root.join("drc/var/lib/pulih"))
            .env_remove("PULIHCTL_CONFIG")
            .env_remove("PULIHCTL_CONTROLLER")
            .env_remove("PULIHCTL_TOKEN_FILE")
            .env_remove("PULIHCTL_CA")
            .env_remove("PULIH_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs one command; panics with the guide's location on a wrong exit
    /// status or an expected line that is not in the output.
    fn run(&mut self, file: &str, info: &Info, cmd: &Cmd) {
        let text = self.localize(&cmd.text, &info.host);
        self.seq += 1;
        let (out_p, err_p) =
            (self.root.join(format!("out/{}.out", self.seq)), self.root.join(format!("out/{}.err", self.seq)));
        fs::create_dir_all(out_p.parent().unwrap()).unwrap();
        let started = Instant::now();
        let mut child = self
            .command(&info.host, "bash")
            .arg("-c")
            .arg(&text)
            .stdout(fs::File::create(&out_p).unwrap())
            .stderr(fs::File::create(&err_p).unwrap())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > COMMAND_TIMEOUT {
                let _ = child.kill();
                panic!("{file}:{}: `{}` still runs after {COMMAND_TIMEOUT:?}", cmd.line, cmd.text);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for p in REAL_PATHS {
            assert!(
                self.real_paths.contains(&p) || !Path::new(p).exists(),
                "{file}:{}: `{}` created {p} on this machine: give the path explicitly in the guide",
                cmd.line,
                cmd.text
            );
        }
        let output = self.delocalize(&format!(
            "{}{}",
            fs::read_to_string(&out_p).unwrap_or_default(),
            fs::read_to_string(&err_p).unwrap_or_default()
        ));
        if self.show {
            eprintln!(
                "--- {file}:{} [{}] exit {:?} in {:.1?}\n$ {}\n{output}",
                cmd.line,
                info.host,
                status.code(),
                started.elapsed(),
                cmd.text
            );
        }
        assert_eq!(
            status.code(),
            Some(info.exit),
            "{file}:{}: `{}` exited with {status} (the guide expects {}):\n{output}\n{}",
            cmd.line,
            cmd.text,
            info.exit,
            self.logs()
        );
        match matches(&cmd.expected, &output) {
            Ok(learned) => {
                for (sample, real) in learned {
                    if sample != real {
                        self.learned.retain(|(s, _)| s != &sample);
                        self.learned.push((sample, real));
                    }
                }
                // Longest first, so that a sample never replaces part of a longer one.
                self.learned.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
            }
            Err(line) => panic!(
                "{file}:{}: `{}`: the guide shows the line\n  {line}\nwhich is not in the output:\n{output}",
                cmd.line, cmd.text
            ),
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["drc/serve.log", "drc/agent.log"] {
            if let Ok(t) = fs::read_to_string(self.root.join(f)) {
                s.push_str(&format!("--- {f} (tail)\n{}\n", tail(&t)));
            }
        }
        for h in self.agents.keys() {
            if let Ok(t) = fs::read_to_string(self.root.join(h).join("agent.log")) {
                s.push_str(&format!("--- {h}/agent.log (tail)\n{}\n", tail(&t)));
            }
        }
        s
    }

    /// What the test does in place of a `no-test` command, if anything.
    fn emulate(&mut self, host: &str, cmd: &str) {
        let cmd = cmd.split('#').next().unwrap().trim();
        match cmd {
            "sudo deploy/install.sh --controller" | "sudo deploy/install.sh --agent" => {
                let root = self.host_dir(host);
                let target = bin("pulih-controller").parent().unwrap().to_path_buf();
                let mut c = Command::new(repo().join("deploy/install.sh"));
                c.arg(cmd.rsplit(' ').next().unwrap()).arg("--root").arg(&root).arg("--bin-dir").arg(target);
                let out = c.stdin(Stdio::null()).output().unwrap();
                assert!(out.status.success(), "install.sh: {}", String::from_utf8_lossy(&out.stderr));
            }
            "sudo systemctl enable --now pulih-controller" | "sudo systemctl start pulih-controller" => {
                self.start_serve()
            }
            "sudo systemctl restart pulih-controller" => {
                self.stop_serve();
                self.start_serve();
            }
            "sudo systemctl stop pulih-controller" => self.stop_serve(),
            "sudo systemctl enable --now pulih-agent" | "sudo systemctl start pulih-agent" => self.start_agent(host),
            "sudo systemctl restart pulih-agent" => {
                self.stop_agent(host);
                self.start_agent(host);
            }
            "sudo systemctl stop pulih-agent" => self.stop_agent(host),
            "sudo systemctl reload pulih-agent" => {
                let child = self.agents.get(host).unwrap_or_else(|| panic!("reload: no agent runs on {host}"));
                let log = self.root.join(host).join("agent.log");
                let before = fs::read_to_string(&log).unwrap_or_default().matches("configuration reloaded").count();
                let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
                rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
                assert!(
                    wait_until(Duration::from_secs(20), || {
                        fs::read_to_string(&log).unwrap_or_default().matches("configuration reloaded").count() > before
                    }),
                    "the agent on {host} did not reload:\n{}",
                    self.logs()
                );
            }
            _ if cmd.starts_with("scp drc.example.go.id:") => {
                // scp HOST:SRC DEST: a copy from the DRC's files to this host's.
                let mut words = cmd.split_whitespace().skip(1);
                let src = words.next().unwrap().trim_start_matches("drc.example.go.id:").to_owned();
                let dest = words.next().unwrap().replacen('~', "/home", 1);
                let src = PathBuf::from(self.localize(&src, "drc"));
                let dest = self.root.join(host).join(dest.trim_start_matches('/'));
                fs::copy(&src, &dest).unwrap_or_else(|e| panic!("scp {} {}: {e}", src.display(), dest.display()));
            }
            _ => {}
        }
    }

    fn start_serve(&mut self) {
        assert!(self.serve.is_none(), "serve runs already");
        let data = self.root.join("drc/var/lib/pulih");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.root.join("drc/serve.log")).unwrap();
        let child = self
            .command("drc", bin("pulih-controller").to_str().unwrap())
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.serve = Some(child);
        let addr = format!("127.0.0.1:{}", self.api_port).parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || std::net::TcpStream::connect_timeout(
                &addr,
                Duration::from_millis(200)
            )
            .is_ok()),
            "serve did not start:\n{}",
            self.logs()
        );
    }

    fn stop_serve(&mut self) {
        if let Some(c) = self.serve.take() {
            stop(c);
        }
    }

    fn start_agent(&mut self, host: &str) {
        assert!(!self.agents.contains_key(host), "an agent runs already on {host}");
        let config = self.host_dir(host).join("etc/pulih/agent.toml");
        let log =
            fs::OpenOptions::new().create(true).append(true).open(self.root.join(host).join("agent.log")).unwrap();
        let child = self
            .command(host, bin("pulih-agent").to_str().unwrap())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("PULIH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.insert(host.to_owned(), child);
        // Running: `status` answers 0 once the service has written its state.
        let ok = wait_until(Duration::from_secs(30), || {
            self.command(host, bin("pulih-agent").to_str().unwrap())
                .arg("status")
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(ok, "pulih-agent run on {host} did not come up:\n{}", self.logs());
    }

    fn stop_agent(&mut self, host: &str) {
        if let Some(c) = self.agents.remove(host) {
            stop(c);
        }
    }
}

fn stop(mut c: Child) {
    let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    if !wait_until(Duration::from_secs(30), || c.try_wait().unwrap().is_some()) {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Data of the protected application on the primary server, as it would be
/// there before the guide starts.
fn application_data(root: &Path) {
    let d = root.join("srv/simpeg/data");
    fs::create_dir_all(d.join("unggahan")).unwrap();
    fs::create_dir_all(d.join("tmp")).unwrap();
    fs::write(d.join("pegawai.csv"), "nip;nama\n198001012005011001;Budi Santoso\n".repeat(2000)).unwrap();
    fs::write(d.join("unggahan/sk-2026.pdf"), pulih_e2e::bytes(7, 300_000)).unwrap();
    fs::write(d.join("tmp/sesi.tmp"), b"sementara").unwrap();
}

#[test]
fn guides_run_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World::new(tmp.path());
    application_data(tmp.path());
    let mut counts = Vec::new();
    for (file, _) in GUIDES {
        let started = Instant::now();
        let (mut run, mut skipped) = (0, 0);
        for b in parse(file) {
            for c in &b.cmds {
                if b.info.test {
                    w.run(file, &b.info, c);
                    run += 1;
                } else {
                    w.emulate(&b.info.host, &c.text);
                    skipped += 1;
                }
            }
        }
        counts.push(format!("{file}: {run} commands run, {skipped} not run, {:.1?}", started.elapsed()));
    }
    // The standby actions asked for by failover and failback, in order.
    let log = fs::read_to_string(tmp.path().join("systemctl.log")).unwrap_or_default();
    let started: Vec<&str> = log.lines().filter(|l| l.ends_with(": start simpeg")).collect();
    assert_eq!(started, ["drc-sb01: start simpeg", "simpeg-app1: start simpeg"], "{log}\n{}", w.logs());
    assert!(log.contains("drc-sb01: stop simpeg"), "teardown at the standby: {log}");
    eprintln!("{}", counts.join("\n"));
}
