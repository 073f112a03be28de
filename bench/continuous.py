#!/usr/bin/env python3
"""Continuous mode: time from a file write to the commit, at the controller, of the first
snapshot holding it (issue 3, "Measured"). See bench/README.md.

    bench/continuous.py            # default debounce (500ms), then debounce = "100ms"

For each debounce setting: a fresh controller on a free loopback port and an enrolled agent
running `pulih-agent run` with one continuous dataset of FILES small files in DIRS
directories. After the first full snapshot commits, CHANGES writes (new unique content to a
random existing file, or a new file), separated by random waits of 0.2-2.0 s. A thread polls
the controller's catalog every 20 ms (SQLite, read-only) and notes when each snapshot row
appears: that is the commit time.

Latency of a write = commit time of the first snapshot that holds it:
  * "by time": the first snapshot whose started_ns is after the write (the scan began after
    the write, so it sees it);
  * "by content" (exact): every snapshot is restored and the written file's content compared;
    the first snapshot holding this write's content, or a later write's to the same file.
Both are reported (as seen by the poller, and by the snapshot's finished_ns, the agent's end
of scan and upload, just before the commit), with p50/p90/p99/max. At the end the latest
snapshot is restored and compared with the source, file by file (content hashes).
Python 3 standard library only.
"""

import argparse
import hashlib
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


def digest(b):
    return hashlib.blake2b(b, digest_size=16).hexdigest()


def make_tree(src, files, dirs, rng):
    for i in range(files):
        d = src / f"d{i % dirs:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(rng.randbytes(rng.randint(100, 4000)))


def one_run(label, extra, args, work):
    rng = random.Random(args.seed)
    src = work / "src"
    make_tree(src, args.files, args.dirs, rng)
    svc = sb.Service(work, src, dataset_extra=extra)
    svc.setup()
    poller = sb.CatalogPoller(svc.catalog, interval=0.02)
    poller.start()
    t_agent = time.time_ns()
    agent = svc.start_agent()
    sb.log(f"[{label}] agent pid {agent.pid}; waiting for the first full snapshot")
    rows = poller.wait_for(lambda r: len(r) >= 1, 300, "the first full snapshot", svc)
    first = rows[0]
    sb.log(f"[{label}] first snapshot {first['id'][:12]}: {first['files']} files, "
           f"{(first['seen_ns'] - t_agent) / 1e9:.2f} s after the agent started")
    time.sleep(1.0)  # let the agent settle (cache written, loop idle)
    cpu0, _, _ = sb.proc_stats(agent.pid)

    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    writes = []  # dicts: i, path, hash, t_ns
    per_file = {}  # path -> [(write index, hash)]
    t_start = time.time_ns()
    for i in range(args.changes):
        if rng.random() < 0.2:
            rel = Path(f"d{rng.randrange(args.dirs):03d}") / f"new-{i:04d}.txt"
            files.append(rel)
        else:
            rel = rng.choice(files)
        data = f"{label} change {i}\n".encode() + rng.randbytes(rng.randint(100, 4000))
        with open(src / rel, "wb") as f:
            f.write(data)
        t = time.time_ns()  # just after close
        h = digest(data)
        writes.append(dict(i=i, path=str(rel), hash=h, t_ns=t))
        per_file.setdefault(str(rel), []).append((i, h))
        if (i + 1) % 50 == 0:
            sb.log(f"[{label}] {i + 1}/{args.changes} changes, {len(poller.snapshot_rows())} snapshots so far")
        time.sleep(rng.uniform(0.2, 2.0))
    last_t = writes[-1]["t_ns"]
    poller.wait_for(lambda r: any(x["started_ns"] > last_t for x in r), 120,
                    "a snapshot started after the last write", svc)
    time.sleep(1.0)  # any snapshot still running commits; nothing else should start
    cpu1, _, hwm = sb.proc_stats(agent.pid)
    t_end = time.time_ns()
    codes = svc.stop()
    poller.stop()
    rows = poller.snapshot_rows()
    if poller.error:
        raise RuntimeError(f"catalog poller failed: {poller.error}")

    # Attribution by time.
    after_first = rows[1:]
    by_time = []
    for w in writes:
        s = next((k for k, r in enumerate(rows) if r["started_ns"] > w["t_ns"]), None)
        by_time.append(s)

    # Attribution by content: restore every snapshot taken during the changes.
    sb.log(f"[{label}] restoring {len(after_first)} snapshots to check which one holds each write")
    changed = sorted(per_file)
    content = {}  # row index -> {path: hash or None}
    for k, r in enumerate(rows):
        if k == 0:
            continue
        dest = work / f"restore-{k}"
        svc.restore(r["id"], dest)
        content[k] = {}
        for p in changed:
            fp = dest / p
            content[k][p] = digest(fp.read_bytes()) if fp.is_file() else None
        shutil.rmtree(dest)
    by_content = []
    for w in writes:
        order = [h for (_, h) in per_file[w["path"]]]
        mine = [j for j, (idx, _) in enumerate(per_file[w["path"]]) if idx == w["i"]][0]
        ok = set(order[mine:])  # this write's content or a later one's
        # Contents are unique, so no snapshot taken before the write can match.
        s = next((k for k in sorted(content) if content[k][w["path"]] in ok), None)
        by_content.append(s)

    def lat(attr, key):
        out = []
        for w, s in zip(writes, attr):
            if s is not None:
                out.append((rows[s][key] - w["t_ns"]) / 1e9)
        return out

    def stats(v):
        if not v:
            return dict(count=0)
        return dict(count=len(v), p50=sb.percentile(v, 50), p90=sb.percentile(v, 90), p99=sb.percentile(v, 99),
                    max=max(v), min=min(v), mean=sum(v) / len(v))

    # Final correctness: the latest snapshot equals the source.
    dest = work / "restore-latest"
    svc.restore_latest(dest)
    want, got = sb.tree_hashes(src), sb.tree_hashes(dest)
    diff = sorted(p for p in set(want) | set(got) if want.get(p) != got.get(p))
    shutil.rmtree(dest)

    per_snap = {}
    for s in by_content:
        if s is not None:
            per_snap[s] = per_snap.get(s, 0) + 1
    agree = sum(1 for a, b in zip(by_time, by_content) if a == b)
    earlier = sum(1 for a, b in zip(by_time, by_content) if a is not None and b is not None and b < a)
    later = sum(1 for a, b in zip(by_time, by_content) if a is not None and b is not None and b > a)
    res = dict(
        label=label,
        dataset_extra=extra,
        files=args.files, dirs=args.dirs, changes=len(writes),
        first_snapshot_s=(first["seen_ns"] - t_agent) / 1e9,
        change_phase_s=(t_end - t_start) / 1e9,
        snapshots_total=len(rows),
        snapshots_during_changes=len(after_first),
        writes_per_snapshot_mean=(len(writes) / len(per_snap)) if per_snap else None,
        writes_per_snapshot_max=max(per_snap.values()) if per_snap else None,
        writes_per_snapshot_hist={str(n): sum(1 for c in per_snap.values() if c == n)
                                  for n in sorted(set(per_snap.values()))},
        by_time_seen=stats(lat(by_time, "seen_ns")),
        by_time_finished=stats(lat(by_time, "finished_ns")),
        by_content_seen=stats(lat(by_content, "seen_ns")),
        by_content_finished=stats(lat(by_content, "finished_ns")),
        unattributed_by_time=sum(1 for s in by_time if s is None),
        unattributed_by_content=sum(1 for s in by_content if s is None),
        attribution_agree=agree, content_earlier_than_time=earlier, content_later_than_time=later,
        agent_cpu_s_change_phase=cpu1 - cpu0,
        agent_cpu_pct_change_phase=100 * (cpu1 - cpu0) / ((t_end - t_start) / 1e9),
        agent_vmhwm_mib=hwm / 1024,
        poller_polls=poller.polls,
        exit_codes=dict(agent=codes[0], controller=codes[1]),
        restore_latest_identical=not diff,
        restore_latest_differences=diff[:20],
        restore_latest_files=len(want),
    )
    return res


def fmt(s):
    if not s.get("count"):
        return "n/a"
    return f"{s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} | {s['max']:.3f} | {s['count']}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dirs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--debounce", action="append",
                    help='debounce setting(s) to run, "default" = key not set (repeatable; '
                         'default: default and 100ms)')
    ap.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    args = ap.parse_args()
    sb.check_binaries()
    settings = args.debounce or ["default", "100ms"]
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pulih-continuous-"))
    results = []
    try:
        for d in settings:
            work = base / f"debounce-{d}"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            extra = "" if d == "default" else f'debounce = "{d}"'
            label = "default (500ms)" if d == "default" else d
            results.append(one_run(label, extra, args, work))
    finally:
        sb.stop_all()
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), git=sb.git_rev(), machine=sb.machine(),
                binaries=str(sb.BIN))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, results=results), indent=2))
    print(f"\n{meta['date']}, git {meta['git']}, {meta['machine']}")
    print(f"{args.files} files in {args.dirs} directories, {args.changes} changes, waits 0.2-2.0 s, seed {args.seed}\n")
    print("| debounce | latency | p50 s | p90 s | p99 s | max s | count |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        for key, name in (("by_content_seen", "write -> commit seen (by content)"),
                          ("by_time_seen", "write -> commit seen (by time)"),
                          ("by_content_finished", "write -> finished_ns (by content)"),
                          ("by_time_finished", "write -> finished_ns (by time)")):
            print(f"| {r['label']} | {name} | {fmt(r[key])} |")
    print()
    print("| debounce | snapshots | writes/snapshot mean, max | agree time/content | content earlier, later "
          "| agent CPU % | agent VmHWM MiB | restore latest |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    failed = False
    for r in results:
        ok = r["restore_latest_identical"]
        failed |= not ok or r["unattributed_by_content"] > 0
        print(f"| {r['label']} | {r['snapshots_during_changes']} | {r['writes_per_snapshot_mean']:.2f}, "
              f"{r['writes_per_snapshot_max']} | {r['attribution_agree']}/{r['changes']} | "
              f"{r['content_earlier_than_time']}, {r['content_later_than_time']} | "
              f"{r['agent_cpu_pct_change_phase']:.1f} | {r['agent_vmhwm_mib']:.1f} | "
              f"{'identical' if ok else 'DIFFERS: ' + ', '.join(r['restore_latest_differences'])} "
              f"({r['restore_latest_files']} files) |")
        if r["unattributed_by_content"]:
            print(f"  {r['label']}: {r['unattributed_by_content']} writes found in no snapshot")
    print()
    for r in results:
        s = r["by_content_seen"]
        print(f"{r['label']}: p50 {s['p50']:.3f} s (target < 1 s: {'met' if s['p50'] < 1 else 'MISSED'}), "
              f"p99 {s['p99']:.3f} s (target < 3 s: {'met' if s['p99'] < 3 else 'MISSED'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
