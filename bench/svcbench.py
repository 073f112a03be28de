"""Shared parts of the agent-service benchmarks (bench/continuous.py, bench/idle.py).

A real controller (`pulih-controller init` + `serve` on a free loopback port, mutual TLS)
and a real enrolled agent running `pulih-agent run` with one continuous dataset, plus a
poller that watches the controller's catalog (SQLite, opened read-only) for new snapshot
rows and notes when it first saw each one. Python 3 standard library only.
"""

import atexit
import hashlib
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("PULIH_BIN", REPO / "target" / "release"))
CTL = BIN / "pulih-controller"
AGENT = BIN / "pulih-agent"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, **kw):
    """Runs a command; on failure raises with its output (so the cause is visible)."""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def check_binaries():
    for b in (CTL, AGENT):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} missing: build with `cargo build --release -p pulih-agent -p pulih-controller` "
                     "or set PULIH_BIN")


def machine():
    """One line describing where the numbers come from."""
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, kernel {platform.release()}, Python {platform.python_version()}"


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "agent", "controller",
                                "core", "Cargo.toml", "Cargo.lock"], capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def proc_stats(pid):
    """(cpu seconds = utime+stime, VmRSS KiB, VmHWM KiB) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return cpu, rss, hwm


def proc_threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


class CatalogPoller(threading.Thread):
    """Polls the catalog every `interval` s for new snapshot rows.

    A row exists only once the controller committed the snapshot, so the poller's
    first sight of it is the commit time, late by at most one interval plus the
    query. Rows: dicts with id, started_ns, finished_ns, committed_at (seconds,
    controller clock), files, bytes_read, seen_ns (this process's time.time_ns()).
    """

    def __init__(self, catalog, interval=0.02):
        super().__init__(daemon=True)
        self.catalog = catalog
        self.interval = interval
        self.rows = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.error = None
        self.polls = 0

    def run(self):
        conn = None
        last = 0
        try:
            while not self.stop_flag.is_set():
                if conn is None:
                    conn = sqlite3.connect(f"file:{self.catalog}?mode=ro", uri=True, timeout=5)
                cur = conn.execute(
                    "SELECT rowid, id, started_ns, finished_ns, committed_at, files, bytes_read, bytes_sent "
                    "FROM snapshots WHERE rowid > ? ORDER BY rowid", (last,))
                got = cur.fetchall()
                seen = time.time_ns()
                self.polls += 1
                if got:
                    with self.lock:
                        for r in got:
                            last = r[0]
                            self.rows.append(dict(id=r[1], started_ns=r[2], finished_ns=r[3], committed_at=r[4],
                                                  files=r[5], bytes_read=r[6], bytes_sent=r[7], seen_ns=seen))
                time.sleep(self.interval)
        except Exception as e:  # reported by the caller
            self.error = e

    def snapshot_rows(self):
        with self.lock:
            return list(self.rows)

    def wait_for(self, pred, timeout, what, agent=None):
        """Waits until pred(rows) is true; exits with the agent's log tail on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise RuntimeError(f"catalog poller failed: {self.error}")
            if pred(self.snapshot_rows()):
                return self.snapshot_rows()
            if agent is not None and agent.proc.poll() is not None:
                raise RuntimeError(f"pulih-agent run exited with {agent.proc.returncode} while waiting for {what}; "
                                   f"log tail:\n{agent.log_tail()}")
            time.sleep(0.05)
        tail = agent.log_tail() if agent else ""
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}; agent log tail:\n{tail}")

    def stop(self):
        self.stop_flag.set()
        self.join(5)


# Every Service started, so that a failing or interrupted benchmark leaves no
# controller or agent behind (stop() is idempotent).
_LIVE = []


def stop_all():
    """Stops every controller and agent this process started (before their files are removed)."""
    for s in _LIVE:
        s.stop()


atexit.register(stop_all)
# SIGTERM would otherwise end Python without running atexit handlers.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Service:
    """A controller serving on loopback and an enrolled agent with one continuous dataset."""

    AGENT_NAME = "bench-svc"
    DATASET = "data"

    def __init__(self, work, src, dataset_extra="", log_level="info"):
        self.work = Path(work)
        self.src = Path(src)
        self.ctl_dir = self.work / "drc"
        self.state = self.work / "agent-state"
        self.config = self.work / "agent.toml"
        self.port = free_port()
        self.metrics_port = free_port()
        self.dataset_extra = dataset_extra
        self.log_level = log_level
        self.ctl = None
        self.proc = None
        self.agent_log = self.work / "agent.log"
        _LIVE.append(self)

    def setup(self):
        run([CTL, "init", "--data-dir", self.ctl_dir, "--listen", f"127.0.0.1:{self.port}"])
        tok = json.loads(run([CTL, "enroll-agent", self.AGENT_NAME, "--data-dir", self.ctl_dir, "--json"]))
        self.serve()
        run([AGENT, "enroll", "--controller", f"127.0.0.1:{self.port}", "--token", tok["token"],
             "--fingerprint", tok["fingerprint"], "--name", self.AGENT_NAME, "--state-dir", self.state,
             "--config", self.config])
        text = self.config.read_text()
        text += f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
        text += f'\n[[dataset]]\nname = "{self.DATASET}"\npaths = [{json.dumps(str(self.src))}]\ncontinuous = true\n'
        if self.dataset_extra:
            text += self.dataset_extra.rstrip("\n") + "\n"
        self.config.write_text(text)

    def serve(self):
        out = open(self.ctl_dir / "serve.log", "ab")
        self.ctl = subprocess.Popen([str(CTL), "serve", "--data-dir", str(self.ctl_dir)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.ctl.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"controller did not start; log:\n{(self.ctl_dir / 'serve.log').read_text()}")
                time.sleep(0.02)

    @property
    def catalog(self):
        return self.ctl_dir / "catalog.db"

    def start_agent(self):
        env = dict(os.environ, PULIH_LOG=self.log_level)
        self.proc = subprocess.Popen([str(AGENT), "run", "--config", str(self.config)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.agent_log, "ab"))
        return self.proc

    def log_tail(self, n=30):
        try:
            return "\n".join(self.agent_log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        """SIGTERM to the agent, then the controller; returns their exit codes."""
        codes = []
        for p in (self.proc, self.ctl):
            if p is None or p.poll() is not None:
                codes.append(None if p is None else p.returncode)
                continue
            p.send_signal(signal.SIGTERM)
            try:
                codes.append(p.wait(60))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes

    def restore_latest(self, dest):
        run([CTL, "restore", "--data-dir", self.ctl_dir, "latest", dest, "--agent", self.AGENT_NAME,
             "--dataset", self.DATASET, "--path", self.src])

    def restore(self, snapshot_id, dest):
        run([CTL, "restore", "--data-dir", self.ctl_dir, snapshot_id, dest, "--path", self.src])


def tree_hashes(root):
    """{relative path: blake2b of content} of every regular file under root."""
    root = Path(root)
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
    return out


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    v = sorted(values)
    k = max(1, -(-len(v) * q // 100))  # ceil(n*q/100), at least 1
    return v[int(k) - 1]
