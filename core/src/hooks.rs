//! Commands Pulih runs with a timeout: the agent's `pre_hook` / `post_hook`
//! around a snapshot (`pg_backup_start`, a dump into a staging directory,
//! `fsfreeze`), and the controller's drill health checks, activation and
//! teardown steps.
//!
//! A hook runs in its own process group with stdin from `/dev/null` and
//! stdout and stderr into one pipe, so its output is interleaved the way a
//! terminal would show it; the last [`OUTPUT_LIMIT`] bytes are kept for the
//! log and the snapshot record. On timeout or cancellation the whole group
//! gets SIGTERM, then SIGKILL [`KILL_GRACE`] later, so a shell script's
//! children go too. A grandchild that outlives the hook and keeps the pipe
//! open cannot hold the agent: after the hook exits, output is read for at
//! most [`DRAIN_LIMIT`] more.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, Signal};

use crate::units::format_duration;

/// Bytes of output kept (the end of it).
pub const OUTPUT_LIMIT: usize = 4096;
/// Time between SIGTERM and SIGKILL to the hook's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long output is still read after the hook itself has exited.
pub const DRAIN_LIMIT: Duration = Duration::from_millis(500);
/// How often the timeout, the cancel flag and the child are checked.
const TICK: Duration = Duration::from_millis(50);

/// A configured hook command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// A command line run with `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments, run without a shell (never empty).
    Argv(Vec<String>),
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::Shell(s) => f.write_str(s),
            Hook::Argv(v) => write!(f, "{v:?}"),
        }
    }
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// Exited with status 0 before the timeout and without being cancelled.
    pub success: bool,
    /// "exit 0", "exit 3", "killed by signal 9", "timed out after 10m",
    /// "cancelled" or "could not start: …".
    pub status: String,
    /// The last [`OUTPUT_LIMIT`] bytes of stdout and stderr, interleaved, as lossy UTF-8.
    pub output: String,
    /// Wall time from start to the end of the run.
    pub duration: Duration,
}

/// The end of a byte stream, at most `limit` bytes once finished.
struct Tail {
    buf: Vec<u8>,
    limit: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        // Trim in batches so a chatty hook does not cost a memmove per read.
        if self.buf.len() > 4 * self.limit {
            self.buf.drain(..self.buf.len() - self.limit);
        }
    }
    fn finish(mut self) -> String {
        if self.buf.len() > self.limit {
            self.buf.drain(..self.buf.len() - self.limit);
        }
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Reads what is available on `pipe` within `wait`; returns false at end of file.
fn pump(pipe: &mut File, tail: &mut Tail, wait: Duration) -> bool {
    let ts = Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos() as _ };
    let ready = {
        let mut fds = [PollFd::from_borrowed_fd(pipe.as_fd(), PollFlags::IN)];
        rustix::event::poll(&mut fds, Some(&ts))
    };
    match ready {
        Ok(0) => true,
        Ok(_) => {
            let mut buf = [0u8; 8192];
            match pipe.read(&mut buf) {
                Ok(0) => false,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
                Err(_) => false,
            }
        }
        Err(rustix::io::Errno::INTR) => true,
        Err(_) => false,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => format!("{status}"),
    }
}

/// Runs `hook` with `env` added to the agent's environment, and waits for
/// it, at most `timeout`, or until `cancel` becomes true (SIGTERM to the
/// agent). Never fails: every problem is in the outcome.
pub fn run(hook: &Hook, env: &[(&str, String)], timeout: Duration, cancel: &AtomicBool) -> HookOutcome {
    let start = Instant::now();
    let failed =
        |status: String| HookOutcome { success: false, status, output: String::new(), duration: start.elapsed() };
    let mut cmd = match hook {
        Hook::Shell(s) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(s);
            c
        }
        Hook::Argv(v) => match v.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            None => return failed("could not start: the command is empty".into()),
        },
    };
    let (read_end, write_end) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => return failed(format!("could not start: creating a pipe: {e}")),
    };
    let write_end2 = match write_end.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("could not start: creating a pipe: {e}")),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_end2))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    let spawned = cmd.spawn();
    // The Command holds our copies of the write end; without dropping it the
    // pipe would never reach end of file.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let program = match hook {
                Hook::Shell(_) => "/bin/sh",
                Hook::Argv(v) => v[0].as_str(),
            };
            return failed(format!("could not start: {program}: {e}"));
        }
    };
    // The group's id is the child's pid (process_group(0)).
    let group = Pid::from_child(&child);
    let kill_group = |sig: Signal| {
        // ESRCH: the group is already gone.
        let _ = rustix::process::kill_process_group(group, sig);
    };

    let mut pipe = Some(File::from(read_end));
    let mut tail = Tail { buf: Vec::new(), limit: OUTPUT_LIMIT };
    let deadline = start + timeout;
    // Why the hook is being stopped, and since when.
    let mut stopping: Option<(String, Instant)> = None;
    let mut killed = false;
    let mut exit: Option<ExitStatus> = None;
    loop {
        match pipe.as_mut() {
            Some(p) => {
                if !pump(p, &mut tail, TICK) {
                    pipe = None;
                }
            }
            None => std::thread::sleep(TICK),
        }
        if exit.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => exit = Some(s),
                Ok(None) => {}
                Err(_) => {
                    // Cannot happen for our own child; do not spin on it.
                    kill_group(Signal::KILL);
                    exit = child.wait().ok();
                    if exit.is_none() {
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        match &stopping {
            None if exit.is_none() && (now >= deadline || cancel.load(Ordering::Relaxed)) => {
                let why = if now >= deadline {
                    format!("timed out after {}", format_duration(timeout))
                } else {
                    "cancelled".to_string()
                };
                kill_group(Signal::TERM);
                stopping = Some((why, now));
            }
            Some((_, since)) if !killed => {
                // After a stop request the rest of the group (a script's
                // children) must go too, not only the hook's own process.
                let group_gone = rustix::process::test_kill_process_group(group).is_err();
                if exit.is_some() && group_gone {
                    break;
                }
                if now.duration_since(*since) >= KILL_GRACE {
                    kill_group(Signal::KILL);
                    killed = true;
                }
            }
            _ => {}
        }
        if exit.is_some() && (stopping.is_none() || killed) {
            break;
        }
    }
    if exit.is_none() {
        exit = child.wait().ok();
    }
    // What is still buffered, without waiting on a grandchild that keeps
    // the pipe open.
    let drain_until = Instant::now() + DRAIN_LIMIT;
    if let Some(p) = pipe.as_mut() {
        while let Some(left) = drain_until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if !pump(p, &mut tail, left.min(TICK)) {
                break;
            }
        }
    }
    let (success, status) = match (stopping, exit) {
        (Some((why, _)), _) => (false, why),
        (None, Some(s)) => (s.success(), describe(s)),
        (None, None) => (false, "lost track of the hook process".to_string()),
    };
    HookOutcome { success, status, output: tail.finish(), duration: start.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(s: &str) -> Hook {
        Hook::Shell(s.to_string())
    }

    fn go(hook: &Hook, timeout: Duration) -> HookOutcome {
        run(hook, &[], timeout, &AtomicBool::new(false))
    }

    /// Whether process `pid` still runs (a zombie waiting for its reaper does not).
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
                !matches!(state, Some('Z') | Some('X'))
            }
            Err(_) => false,
        }
    }

    #[test]
    fn success_with_output() {
        let o = go(&sh("echo out; echo err >&2; exit 0"), Duration::from_secs(10));
        assert!(o.success, "{o:?}");
        assert_eq!(o.status, "exit 0");
        assert_eq!(o.output, "out\nerr\n");
        assert!(o.duration < Duration::from_secs(5));
    }

    #[test]
    fn non_zero_exit_and_signal_are_failures() {
        let o = go(&sh("echo failing; exit 3"), Duration::from_secs(10));
        assert!(!o.success);
        assert_eq!(o.status, "exit 3");
        assert_eq!(o.output, "failing\n");
        let o = go(&sh("kill -9 $$"), Duration::from_secs(10));
        assert!(!o.success);
        assert_eq!(o.status, "killed by signal 9");
    }

    #[test]
    fn missing_program_could_not_start() {
        let o = go(&Hook::Argv(vec!["/nonexistent/pulih-hook".into()]), Duration::from_secs(10));
        assert!(!o.success);
        assert!(o.status.starts_with("could not start: /nonexistent/pulih-hook:"), "{}", o.status);
        let o = go(&Hook::Argv(vec![]), Duration::from_secs(10));
        assert!(o.status.starts_with("could not start"), "{}", o.status);
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        // The script starts a background child that would outlive it and
        // keep the pipe open, prints its pid, then hangs.
        let t0 = Instant::now();
        let o = go(&sh("sleep 1000 & echo $!; sleep 1000"), Duration::from_millis(500));
        let took = t0.elapsed();
        assert!(!o.success);
        assert_eq!(o.status, "timed out after 500ms");
        assert!(took >= Duration::from_millis(500) && took < KILL_GRACE + Duration::from_secs(3), "took {took:?}");
        let pid: u32 = o.output.trim().parse().unwrap_or_else(|_| panic!("output {:?}", o.output));
        let gone = Instant::now() + Duration::from_secs(3);
        while alive(pid) && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "background sleep {pid} survived the timeout");
    }

    #[test]
    fn sigterm_ignored_means_sigkill_after_the_grace() {
        let t0 = Instant::now();
        let o = go(&sh("trap '' TERM; echo ready; while :; do sleep 0.1; done"), Duration::from_millis(200));
        let took = t0.elapsed();
        assert_eq!(o.status, "timed out after 200ms");
        assert!(took >= KILL_GRACE && took < KILL_GRACE + Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn cancel_stops_the_hook() {
        let cancel = AtomicBool::new(false);
        let o = std::thread::scope(|s| {
            let h = s.spawn(|| run(&sh("sleep 1000"), &[], Duration::from_secs(600), &cancel));
            std::thread::sleep(Duration::from_millis(200));
            cancel.store(true, Ordering::Relaxed);
            h.join().unwrap()
        });
        assert!(!o.success);
        assert_eq!(o.status, "cancelled");
        assert!(o.duration < Duration::from_secs(4), "{:?}", o.duration);
    }

    #[test]
    fn a_background_child_holding_the_pipe_does_not_block() {
        let t0 = Instant::now();
        // The subshell prints the pid of a sleep that inherits the pipe and
        // outlives the hook.
        let o = go(&sh("(sleep 1000 & echo $!); echo done"), Duration::from_secs(60));
        let took = t0.elapsed();
        let pid: Option<i32> = o.output.lines().next().and_then(|l| l.parse().ok());
        // Clean up the sleep this test started, before any assertion.
        if let Some(pid) = pid.and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        assert!(o.success, "{o:?}");
        assert!(o.output.ends_with("\ndone\n") && pid.is_some(), "{:?}", o.output);
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn output_is_bounded_to_the_end() {
        let o = go(&sh("i=0; while [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); done"), Duration::from_secs(30));
        assert!(o.success, "{}", o.status);
        assert_eq!(o.output.len(), OUTPUT_LIMIT);
        assert!(o.output.ends_with("line2999\n"), "{}", &o.output[o.output.len() - 40..]);
        assert!(!o.output.contains("line0\n"));
    }

    #[test]
    fn argv_is_passed_without_a_shell() {
        let o = go(
            &Hook::Argv(vec![
                "/bin/sh".into(),
                "-c".into(),
                "printf '%s|' \"$@\"".into(),
                "x".into(),
                "a b".into(),
                "$HOME;".into(),
            ]),
            Duration::from_secs(10),
        );
        assert!(o.success, "{o:?}");
        assert_eq!(o.output, "a b|$HOME;|");
        let o = go(&Hook::Argv(vec!["echo".into(), "two  spaces".into()]), Duration::from_secs(10));
        assert_eq!(o.output, "two  spaces\n");
    }

    #[test]
    fn env_is_visible_and_stdin_is_empty() {
        let o = run(
            &sh("echo \"$PULIH_DATASET $PULIH_PHASE\"; cat; echo end"),
            &[("PULIH_DATASET", "simpeg".into()), ("PULIH_PHASE", "pre".into())],
            Duration::from_secs(10),
            &AtomicBool::new(false),
        );
        assert!(o.success, "{o:?}");
        assert_eq!(o.output, "simpeg pre\nend\n");
    }
}
