#!/usr/bin/env python3
"""Scale runs of the Performance issue, beside the harness's 1 GiB table.

  scale.py files  --dir D [--count 1000000]   many small files: full, then
                  no-change snapshots; agent peak memory and no-change time
                  (optionally restic's no-change time on the same tree)
  scale.py large  --corpus C [--corpus C2 ...]  full snapshot of each corpus
                  (e.g. 1 GiB and 20 GiB from gen_corpus.py): throughput

Every backup goes through bench/pulih.sh (controller on loopback, mutual
TLS, verify on receipt, durable store), as in the harness; the agent's peak
RSS and CPU come from its PULIH_MEM line (GNU time), the controller's from
/proc. Work directories go under --workdir (use the journaled scratch file
system, see the harness README). Prints a markdown table.
"""

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER = os.path.join(HERE, "pulih.sh")
WRAP = 'set -euo pipefail; source "$0"; "$@"'


def adapter(env, *args):
    """Runs an adapter function; returns (wall seconds, PULIH_MEM fields)."""
    t0 = time.monotonic()
    p = subprocess.run(["bash", "-c", WRAP, ADAPTER, *args], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"scale.py: pulih.sh {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    mem = {}
    for line in p.stderr.splitlines():
        if "PULIH_MEM" in line:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            mem[fields.get("process", "?")] = fields
    return wall, mem


def agent_cpu(mem):
    a = mem.get("agent", {})
    if "cpu_s" not in a:
        return float("nan")
    user, sys_ = a["cpu_s"].split("+")
    return float(user) + float(sys_)


def agent_peak_mib(mem):
    return int(mem.get("agent", {}).get("peak_rss_kib", 0)) / 1024


def ctl_peak_mib(mem):
    return int(mem.get("controller", {}).get("peak_rss_kib", 0)) / 1024


def fresh(workdir, label, phase_env=None):
    work = os.path.join(workdir, label)
    shutil.rmtree(work, ignore_errors=True)  # the adapter's sidecar is inside too
    os.makedirs(os.path.join(work, "state"))
    env = dict(os.environ, BENCH_STATE=os.path.join(work, "state"))
    env.update(phase_env or {})
    return work, env


def make_files(root, count, seed=1):
    """`count` files of 100-1,500 bytes of hex text, 1000 per directory,
    deterministic (1,000,000 files: about 0.75 GiB)."""
    if os.path.exists(os.path.join(root, ".complete")):
        return
    shutil.rmtree(root, ignore_errors=True)
    rnd = random.Random(seed)
    per_dir = 1000
    t0 = time.monotonic()
    for i in range(count):
        d = os.path.join(root, f"d{i // per_dir // 100:03d}", f"d{i // per_dir:05d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        n = rnd.randint(200, 3000)
        with open(os.path.join(d, f"f{i:07d}.txt"), "wb") as f:
            f.write(rnd.randbytes(n // 4).hex().encode()[:n])
    open(os.path.join(root, ".complete"), "w").close()
    print(f"generated {count} files in {time.monotonic() - t0:.0f} s", file=sys.stderr)


def run_files(a):
    make_files(a.dir, a.count)
    work, env = fresh(a.workdir, "scale-files")
    repo = os.path.join(work, "repo")
    adapter(env, "init", repo)
    rows = []
    wall, mem = adapter(dict(env, BENCH_PHASE="full"), "backup", a.dir, repo)
    rows.append(("full", wall, agent_cpu(mem), agent_peak_mib(mem), ctl_peak_mib(mem)))
    for i in range(a.repeat):
        wall, mem = adapter(dict(env, BENCH_PHASE="noop"), "backup", a.dir, repo)
        rows.append((f"no-change {i + 1}", wall, agent_cpu(mem), agent_peak_mib(mem), ctl_peak_mib(mem)))
    state = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(work, "state")) for f in fs)
    print(f"\n{a.count} files under {a.dir}; agent state (change cache, keys) {state / 2**20:.1f} MiB\n")
    print("| phase | wall s | agent CPU s | agent peak MiB | controller peak MiB |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.1f} | {r[4]:.1f} |")
    if a.restic:
        rrepo = os.path.join(work, "restic")
        renv = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"))
        subprocess.run(["restic", "init", "-q", "-r", rrepo], env=renv, check=True)
        t0 = time.monotonic()
        subprocess.run(["restic", "backup", "-q", "-r", rrepo, a.dir], env=renv, check=True)
        full = time.monotonic() - t0
        noops = []
        for _ in range(a.repeat):
            t0 = time.monotonic()
            subprocess.run(["restic", "backup", "-q", "-r", rrepo, a.dir], env=renv, check=True)
            noops.append(time.monotonic() - t0)
        print(f"\nrestic {subprocess.run(['restic', 'version'], capture_output=True, text=True).stdout.strip()}: "
              f"full {full:.1f} s, no-change " + ", ".join(f"{x:.2f}" for x in noops) + " s")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


def tree_bytes(root):
    total = 0
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def run_large(a):
    print("| corpus | GiB | wall s | MiB/s | agent CPU s | agent peak MiB | controller peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for _ in range(a.repeat):
        for c in a.corpus:
            size = tree_bytes(c)
            work, env = fresh(a.workdir, "scale-large")
            repo = os.path.join(work, "repo")
            adapter(env, "init", repo)
            subprocess.run(["sync"], check=True)
            wall, mem = adapter(dict(env, BENCH_PHASE="full"), "backup", c, repo)
            print(f"| {c} | {size / 2**30:.2f} | {wall:.2f} | {size / 2**20 / wall:.0f} | {agent_cpu(mem):.2f} | "
                  f"{agent_peak_mib(mem):.1f} | {ctl_peak_mib(mem):.1f} |", flush=True)
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("files", help="many small files: no-change time and agent memory")
    f.add_argument("--dir", required=True, help="tree to create (kept for reuse) and back up")
    f.add_argument("--count", type=int, default=1_000_000)
    f.add_argument("--restic", action="store_true", help="also time restic on the same tree")
    l = sub.add_parser("large", help="full snapshots of whole corpora: throughput")
    l.add_argument("--corpus", action="append", required=True)
    for p in (f, l):
        p.add_argument("--workdir", default="/tmp/bench/work")
        p.add_argument("--repeat", type=int, default=2)
        p.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    {"files": run_files, "large": run_large}[a.cmd](a)


if __name__ == "__main__":
    main()
