//! Load and crash loops (issue 8): many agents at once against one
//! controller, and the controller killed at random points of many uploads,
//! garbage collections and scrubs.
//!
//! CI runs short versions; the long runs are the same tests with more
//! rounds, one documented command each (SECURITY.md, "Long runs"):
//!
//! ```sh
//! PULIH_LOAD_AGENTS=50 cargo test --release -p pulih-e2e --test load load_ -- --nocapture
//! PULIH_CRASH_ROUNDS=50 cargo test --release -p pulih-e2e --test load f6_ -- --nocapture
//! ```
//!
//! Results are printed as one `RESULT` line each, for the record.

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pulih_e2e::{assert_same_tree, bytes, ok, Agent, Controller};

fn env_n(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: deterministic, printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    let s = std::env::var("PULIH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {s} (set PULIH_SEED={s} to repeat)");
    s.max(1)
}

/// Peak resident set of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn snapshot_child(agent: &Agent) -> Child {
    agent.cmd(&["snapshot", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Many agents (distinct certificates, real TLS) snapshot at the same time:
/// every one commits, nothing is lost (the store verifies, a restore is
/// identical), the controller's memory stays bounded, and the run reports
/// throughput and the p99 commit latency.
#[test]
fn load_many_agents_snapshot_at_once() {
    let n = env_n("PULIH_LOAD_AGENTS", 12);
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path());
    let mut agents = Vec::new();
    let mut raw_total = 0u64;
    for i in 0..n {
        let agent = ctl.enroll(tmp.path(), &format!("opd-{i:02}"));
        let src = tmp.path().join(format!("src-{i:02}"));
        fs::create_dir_all(src.join("shared")).unwrap();
        fs::create_dir_all(src.join("own")).unwrap();
        // The same files on every agent (deduplicated per agent, never
        // across agencies) and files of its own.
        for f in 0..3 {
            let data = bytes(1000 + f, 700_000);
            raw_total += data.len() as u64;
            fs::write(src.join("shared").join(format!("s{f}")), data).unwrap();
        }
        for f in 0..6u64 {
            let data = bytes(i as u64 * 100 + f, 200_000 + f as usize * 1000);
            raw_total += data.len() as u64;
            fs::write(src.join("own").join(format!("o{f}")), data).unwrap();
        }
        agent.add_dataset("data", &[&src], &[]);
        agents.push((agent, src));
    }

    let start = Instant::now();
    let children: Vec<(Instant, Child)> = agents.iter().map(|(a, _)| (Instant::now(), snapshot_child(a))).collect();
    let mut latencies = Vec::new();
    for (i, (began, child)) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        latencies.push(began.elapsed());
        assert!(
            out.status.success(),
            "agent {i} failed under load: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            ctl.log()
        );
    }
    let wall = start.elapsed();
    let peak = ctl.pid().map(peak_rss_kib).unwrap_or(0);
    latencies.sort();

    let listed = ctl.snapshots();
    assert_eq!(listed.len(), n, "every agent's snapshot is listed once");
    ok(&mut ctl.cmd(&["verify", "--all"]));
    for pick in [0, n / 2, n - 1] {
        let (agent, src) = &agents[pick];
        let id = listed.iter().find(|s| s["agent"] == agent.name.as_str()).unwrap()["id"].as_str().unwrap().to_owned();
        let dest = tmp.path().join(format!("restored-{pick}"));
        assert!(ctl.restore(&id, Some(src), &dest).status.success());
        assert_same_tree(src, &dest);
    }
    assert!(peak > 0, "controller peak memory not readable");
    // Bounded: a session holds at most a few frames and its checkpoint
    // bookkeeping, whatever the number of agents.
    assert!(peak < 256 * 1024, "controller peak RSS {peak} KiB with {n} agents");
    println!(
        "RESULT load agents={n} bytes={raw_total} wall={:.2}s throughput={:.1}MiB/s commit_p50={:.2}s commit_p99={:.2}s controller_peak_rss={:.1}MiB",
        wall.as_secs_f64(),
        raw_total as f64 / wall.as_secs_f64() / 1048576.0,
        percentile(&latencies, 0.5).as_secs_f64(),
        percentile(&latencies, 0.99).as_secs_f64(),
        peak as f64 / 1024.0
    );
}

fn add_round_data(src: &Path, round: u64, rng: &mut Rng) {
    let dir = src.join(format!("r{round:03}"));
    fs::create_dir_all(&dir).unwrap();
    for f in 0..(4 + rng.below(8)) {
        let len = 100_000 + rng.below(900_000) as usize;
        fs::write(dir.join(format!("f{f}")), bytes(rng.next(), len)).unwrap();
    }
}

/// F3, F6, F11 in a loop: the controller is SIGKILLed at a random point of
/// two agents' uploads, or while a GC or a scrub runs (also SIGKILLed).
/// After every kill the store verifies and every listed snapshot is whole;
/// after the restart each agent's snapshot completes; at the end every
/// agent's latest snapshot restores identical to its source.
#[test]
fn f6_crash_loop_controller_killed_at_random_points() {
    let rounds = env_n("PULIH_CRASH_ROUNDS", 6) as u64;
    let mut rng = Rng(seed());
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path());
    ctl.edit_config(|t| {
        t.replace("checkpoint_mib = 64", "checkpoint_mib = 1").replace("grace = \"24h\"", "grace = \"0s\"")
    });
    ctl.serve();
    let agents: Vec<(Agent, std::path::PathBuf)> = (0..2)
        .map(|i| {
            let a = ctl.enroll(tmp.path(), &format!("opd-{i}"));
            let src = tmp.path().join(format!("src-{i}"));
            fs::create_dir_all(&src).unwrap();
            a.add_dataset("data", &[&src], &[]);
            (a, src)
        })
        .collect();
    let mut kills = [0u32; 3];
    for round in 0..rounds {
        for (_, src) in &agents {
            add_round_data(src, round, &mut rng);
        }
        let children: Vec<Child> = agents.iter().map(|(a, _)| snapshot_child(a)).collect();
        // What dies this round: the server mid-upload, or a GC / scrub process.
        let target = rng.below(3) as usize;
        let delay = Duration::from_millis(rng.below(1500));
        std::thread::sleep(delay);
        match target {
            0 => ctl.kill(),
            _ => {
                // Forget an old snapshot so GC has something to delete.
                if target == 1 {
                    if let Some(old) = ctl.snapshots().first() {
                        let _ = ctl.cmd(&["forget", old["id"].as_str().unwrap()]).output();
                    }
                }
                let what = if target == 1 { "gc" } else { "scrub" };
                let mut job = ctl.cmd(&[what]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
                std::thread::sleep(Duration::from_millis(rng.below(300)));
                let _ = job.kill();
                let _ = job.wait();
                ctl.kill();
            }
        }
        kills[target] += 1;
        // Offline: whatever is listed is whole, and the store verifies.
        ok(&mut ctl.cmd(&["verify", "--all"]));
        ctl.serve();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: agent {i} did not complete after the restart (killed after {delay:?}, target {target}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    ctl.stop();
    ok(&mut ctl.cmd(&["verify", "--all"]));
    ctl.serve();
    for (agent, src) in &agents {
        // The next snapshot works and holds everything.
        let snap = agent.snapshot();
        let dest = tmp.path().join(format!("restored-{}", agent.name));
        assert!(ctl.restore(&snap.id, Some(src), &dest).status.success());
        assert_same_tree(src, &dest);
    }
    println!(
        "RESULT crash-loop rounds={rounds} kills_mid_upload={} kills_during_gc={} kills_during_scrub={} snapshots={}",
        kills[0],
        kills[1],
        kills[2],
        ctl.snapshots().len()
    );
}
