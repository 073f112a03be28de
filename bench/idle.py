#!/usr/bin/env python3
"""Agent idle cost: CPU and memory of `pulih-agent run` watching a 100,000-file tree with
nothing changing (issue 3, "Measured"). See bench/README.md.

    bench/idle.py

Generates DIRS x FILES_PER_DIR files of SIZE bytes (default 1,000 x 100 x 1 KiB, unique
random content), starts a controller on a free loopback port and an enrolled agent with one
continuous dataset of that tree, and waits for the first full snapshot to commit (a thread
polls the controller's catalog every 20 ms, read-only). After SETTLE seconds it measures,
over IDLE seconds with no change: the agent's CPU time (utime+stime from /proc/PID/stat,
as % of one core) and its memory (VmRSS sampled every second: start, end, peak; VmHWM, the
peak since the agent started, i.e. including the full snapshot). Then it writes one file and
reports the time from that write to the commit of the snapshot holding it.
Python 3 standard library only.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))
import svcbench as sb  # noqa: E402


def make_tree(src, dirs, per_dir, size, seed):
    rng = random.Random(seed)
    t = time.monotonic()
    for d in range(dirs):
        dd = src / f"d{d:04d}"
        dd.mkdir(parents=True)
        for f in range(per_dir):
            fd = os.open(dd / f"f{f:03d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, rng.randbytes(size))
            os.close(fd)
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--files-per-dir", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--idle", type=float, default=60.0, help="seconds measured with no change (default 60)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between the first commit and the start of the measurement (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    args = ap.parse_args()
    sb.check_binaries()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pulih-idle-"))
    if args.workdir:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    nfiles = args.dirs * args.files_per_dir
    try:
        src = work / "src"
        gen_s = make_tree(src, args.dirs, args.files_per_dir, args.size, args.seed)
        sb.log(f"generated {nfiles} files of {args.size} B in {args.dirs} directories in {gen_s:.1f} s")
        svc = sb.Service(work, src)
        svc.setup()
        poller = sb.CatalogPoller(svc.catalog, interval=0.02)
        poller.start()
        t_agent = time.time_ns()
        agent = svc.start_agent()
        pid = agent.pid
        sb.log(f"agent pid {pid}; waiting for the first full snapshot")
        rows = poller.wait_for(lambda r: len(r) >= 1, 1800, "the first full snapshot", svc)
        first = rows[0]
        cpu_first, rss_first, hwm_first = sb.proc_stats(pid)
        sb.log(f"first snapshot {first['id'][:12]}: {first['files']} files, "
               f"{(first['seen_ns'] - t_agent) / 1e9:.2f} s after the agent started")
        time.sleep(args.settle)

        sb.log(f"measuring {args.idle:.0f} s of idle")
        cpu0, rss0, _ = sb.proc_stats(pid)
        t0 = time.monotonic()
        samples = [rss0]
        while time.monotonic() - t0 < args.idle:
            time.sleep(min(1.0, max(0.0, args.idle - (time.monotonic() - t0))))
            samples.append(sb.proc_stats(pid)[1])
        cpu1, rss1, hwm1 = sb.proc_stats(pid)
        idle_s = time.monotonic() - t0
        threads = sb.proc_threads(pid)
        snaps_during_idle = len(poller.snapshot_rows()) - 1

        # One change: write -> commit of the snapshot that started after it.
        rel = Path(f"d{args.dirs // 2:04d}") / f"f{args.files_per_dir // 2:03d}"
        target = src / rel
        with open(target, "wb") as f:
            f.write(b"changed by bench/idle.py\n" + os.urandom(args.size - 25))
        t_w = time.time_ns()
        rows = poller.wait_for(lambda r: any(x["started_ns"] > t_w for x in r), 600,
                               "the snapshot after the change", svc)
        second = next(x for x in rows if x["started_ns"] > t_w)
        cpu2, rss2, hwm2 = sb.proc_stats(pid)

        dest = work / "restore-latest"
        svc.restore_latest(dest)
        same = (dest / rel).read_bytes() == target.read_bytes()
        n_restored = sum(len(f) for _, _, f in os.walk(dest))
        shutil.rmtree(dest)
        codes = svc.stop()
        poller.stop()

        cpu_pct = 100 * (cpu1 - cpu0) / idle_s
        res = dict(
            date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), git=sb.git_rev(), machine=sb.machine(),
            files=nfiles, dirs=args.dirs, size=args.size, generate_s=gen_s,
            first_full_s_from_agent_start=(first["seen_ns"] - t_agent) / 1e9,
            first_full_s_started_to_seen=(first["seen_ns"] - first["started_ns"]) / 1e9,
            first_full_s_started_to_finished=(first["finished_ns"] - first["started_ns"]) / 1e9,
            first_full_files=first["files"], first_full_bytes_sent=first["bytes_sent"],
            agent_cpu_s_first_full=cpu_first, agent_rss_mib_after_first=rss_first / 1024,
            settle_s=args.settle, idle_s=idle_s,
            idle_cpu_s=cpu1 - cpu0, idle_cpu_pct_of_core=cpu_pct,
            idle_rss_mib_start=rss0 / 1024, idle_rss_mib_end=rss1 / 1024,
            idle_rss_mib_peak=max(samples) / 1024, vmhwm_mib_overall=hwm1 / 1024,
            agent_threads=threads, snapshots_during_idle=snaps_during_idle,
            one_change_write_to_commit_seen_s=(second["seen_ns"] - t_w) / 1e9,
            one_change_write_to_finished_s=(second["finished_ns"] - t_w) / 1e9,
            one_change_started_to_finished_s=(second["finished_ns"] - second["started_ns"]) / 1e9,
            one_change_files=second["files"], one_change_bytes_read=second["bytes_read"],
            one_change_agent_cpu_s=cpu2 - cpu1, rss_mib_after_change=rss2 / 1024, vmhwm_mib_end=hwm2 / 1024,
            restored_files=n_restored, restored_change_identical=same,
            exit_codes=dict(agent=codes[0], controller=codes[1]),
        )
    finally:
        sb.stop_all()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    r = res
    print(f"\n{r['date']}, git {r['git']}, {r['machine']}")
    print(f"{r['files']} files of {r['size']} B in {r['dirs']} directories, one continuous dataset, "
          f"default settings\n")
    print("| measure | value |")
    print("|---|---:|")
    rows = [
        ("first full snapshot: agent start -> commit seen, s", f"{r['first_full_s_from_agent_start']:.2f}"),
        ("first full snapshot: started_ns -> finished_ns, s", f"{r['first_full_s_started_to_finished']:.2f}"),
        ("first full snapshot: agent CPU, s", f"{r['agent_cpu_s_first_full']:.2f}"),
        (f"idle {r['idle_s']:.0f} s: agent CPU, s", f"{r['idle_cpu_s']:.2f}"),
        (f"idle {r['idle_s']:.0f} s: agent CPU, % of one core", f"{r['idle_cpu_pct_of_core']:.2f}"),
        ("idle: VmRSS start / end / peak (1 s samples), MiB",
         f"{r['idle_rss_mib_start']:.1f} / {r['idle_rss_mib_end']:.1f} / {r['idle_rss_mib_peak']:.1f}"),
        ("VmHWM since the agent started (includes the full snapshot), MiB", f"{r['vmhwm_mib_overall']:.1f}"),
        ("agent threads while idle", f"{r['agent_threads']}"),
        ("snapshots during the idle window", f"{r['snapshots_during_idle']}"),
        ("one file written -> commit seen, s", f"{r['one_change_write_to_commit_seen_s']:.3f}"),
        ("that snapshot: started_ns -> finished_ns, s", f"{r['one_change_started_to_finished_s']:.3f}"),
        ("that snapshot: bytes read, agent CPU s",
         f"{r['one_change_bytes_read']}, {r['one_change_agent_cpu_s']:.2f}"),
        ("VmRSS / VmHWM after it, MiB", f"{r['rss_mib_after_change']:.1f} / {r['vmhwm_mib_end']:.1f}"),
        ("latest snapshot restored: files, changed file identical",
         f"{r['restored_files']}, {r['restored_change_identical']}"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    cpu_ok = r["idle_cpu_pct_of_core"] < 1
    mem_ok = r["idle_rss_mib_peak"] < 64
    print(f"\nidle CPU {r['idle_cpu_pct_of_core']:.2f} % of a core (target < 1 %: {'met' if cpu_ok else 'MISSED'}); "
          f"idle RSS peak {r['idle_rss_mib_peak']:.1f} MiB (target < 64 MiB: {'met' if mem_ok else 'MISSED'}); "
          f"VmHWM overall {r['vmhwm_mib_overall']:.1f} MiB")
    return 0 if r["restored_change_identical"] and r["restored_files"] == r["files"] else 1


if __name__ == "__main__":
    sys.exit(main())
