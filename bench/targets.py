#!/usr/bin/env python3
"""Pulih's ratios to the other tools and the "Performance" issue's targets.

    targets.py RESULT.json [--logs DIR] [--tool pulih]

Reads run.py's --json output (medians over repeats) and the per-call logs
(default: logs/ beside the JSON, else WORKDIR/logs) for the PULIH_MEM lines
that bench/pulih.sh writes: the agent's and the controller's own peak RSS
and CPU, which the harness only reports summed over the process tree.
Prints markdown. Standard library only.
"""

import argparse
import json
import os
import re
import statistics
import sys

MiB = 1 << 20
PHASES = ["full", "noop", "incr", "restore"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    return "" if x is None else f"{x:.{nd}f}"


def phase_values(runs, tool, phase, key):
    return [r["phases"][phase][key] for r in runs
            if r["tool"] == tool and phase in r["phases"] and r["phases"][phase]["rc"] == 0]


def growth(runs, tool):
    """Median over runs of repo bytes added by the incr backup."""
    out = []
    for r in runs:
        p = r["phases"]
        if r["tool"] == tool and "incr" in p and "noop" in p and p["incr"]["rc"] == 0:
            out.append(p["incr"]["repo_bytes"] - p["noop"]["repo_bytes"])
    return med(out)


def pulih_processes(log_dir, tool):
    """{(process, phase): [peak MiB per run]}, {(process, phase): [cpu s per run]}."""
    peaks, cpus = {}, {}
    if not log_dir or not os.path.isdir(log_dir):
        return peaks, cpus
    for name in sorted(os.listdir(log_dir)):
        if not re.fullmatch(re.escape(tool) + r"\.r\d+\.log", name):
            continue
        with open(os.path.join(log_dir, name), errors="replace") as f:
            for line in f:
                if not line.startswith("PULIH_MEM "):
                    continue
                kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
                key = (kv.get("process"), kv.get("phase"))
                peaks.setdefault(key, []).append(int(kv.get("peak_rss_kib", 0)) / 1024)
                if "cpu_ticks" in kv:
                    cpu = int(kv["cpu_ticks"]) / 100
                elif "cpu_s" in kv:
                    cpu = sum(float(x) for x in kv["cpu_s"].split("+"))
                else:
                    cpu = None
                cpus.setdefault(key, []).append(cpu)
    return peaks, cpus


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--logs")
    ap.add_argument("--tool", default="pulih")
    a = ap.parse_args()
    with open(a.json) as f:
        data = json.load(f)
    meta, medians, runs = data["meta"], data["medians"], data["runs"]
    t = a.tool
    if t not in medians or not medians[t]:
        sys.exit(f"targets.py: no successful {t} runs in {a.json}")
    log_dir = a.logs
    if not log_dir:
        beside = os.path.join(os.path.dirname(os.path.abspath(a.json)), "logs")
        log_dir = beside if os.path.isdir(beside) else None
    P = medians[t]

    def m(tool, phase, key):
        return medians.get(tool, {}).get(phase, {}).get(key)

    def ratio(tool, phase, key, other):
        x, y = m(tool, phase, key), m(other, phase, key)
        return x / y if x is not None and y else None

    others = [o for o in ("restic", "borg", "rsync", "pipeline-limit") if o in medians]
    lines = [f"{t} / other tool, medians of {meta['repeat']} repeat(s), "
             f"corpus {meta['corpus']['bytes'] / MiB:.0f} MiB "
             f"(wall = wall s; CPU = user+sys of the whole process tree):", "",
             "| " + t + " / | full wall | full CPU | noop wall | noop CPU | incr wall "
             "| incr CPU | restore wall | restore CPU | incr repo growth |",
             "|---|" + "---:|" * 9]
    for o in others:
        cells = [fmt(ratio(t, ph, k, o)) for ph in PHASES for k in ("wall_s", "cpu_s")]
        g, go = growth(runs, t), growth(runs, o)
        cells.append(fmt(g / go) if g is not None and go else "")
        lines.append(f"| {o} | " + " | ".join(cells) + " |")

    peaks, cpus = pulih_processes(log_dir, t)
    # per phase medians over runs, and the maximum over phases
    agent_by_phase = {ph: med(peaks.get(("agent", ph), [])) for ph in ("full", "noop", "incr")}
    ctl_by_phase = {ph: med(peaks.get(("controller", ph), [])) for ph in ("full", "noop", "incr")}
    agent_peak = max((v for v in agent_by_phase.values() if v is not None), default=None)
    ctl_peak = max((v for v in ctl_by_phase.values() if v is not None), default=None)
    restore_peak = m(t, "restore", "peak_rss_mib")

    def row(name, value, limit, unit, note=""):
        if value is None:
            return f"| {name} | n/a | {limit} | n/a | {note} |"
        ok = value <= limit
        return (f"| {name} | {value:.2f}{unit} | <= {limit}{unit} | "
                f"{'met' if ok else 'NOT met'} | {note} |")

    g_t, g_r = growth(runs, t), growth(runs, "restic")
    lines += ["", "Targets of the \"Performance\" issue (medians):", "",
              "| target | value | limit | | note |", "|---|---:|---:|---|---|",
              row("full wall / restic", ratio(t, "full", "wall_s", "restic"), 0.6, "x",
                  f"{fmt(m(t, 'full', 'wall_s'))} s vs {fmt(m('restic', 'full', 'wall_s'))} s"),
              row("full wall / pipeline-limit", ratio(t, "full", "wall_s", "pipeline-limit"), 1.2, "x",
                  f"{fmt(m(t, 'full', 'wall_s'))} s vs {fmt(m('pipeline-limit', 'full', 'wall_s'))} s"),
              row("noop wall / restic", ratio(t, "noop", "wall_s", "restic"), 0.3, "x",
                  f"{fmt(m(t, 'noop', 'wall_s'))} s vs {fmt(m('restic', 'noop', 'wall_s'))} s"),
              row("incr wall / restic", ratio(t, "incr", "wall_s", "restic"), 0.5, "x",
                  f"{fmt(m(t, 'incr', 'wall_s'))} s vs {fmt(m('restic', 'incr', 'wall_s'))} s"),
              row("incr repo growth / restic", g_t / g_r if g_t is not None and g_r else None, 0.5, "x",
                  f"{fmt(g_t / MiB if g_t is not None else None, 1)} MiB vs "
                  f"{fmt(g_r / MiB if g_r is not None else None, 1)} MiB"),
              row("restore wall / restic", ratio(t, "restore", "wall_s", "restic"), 0.7, "x",
                  f"{fmt(m(t, 'restore', 'wall_s'))} s vs {fmt(m('restic', 'restore', 'wall_s'))} s"),
              row("restore wall / rsync", ratio(t, "restore", "wall_s", "rsync"), 1.3, "x",
                  f"{fmt(m(t, 'restore', 'wall_s'))} s vs {fmt(m('rsync', 'restore', 'wall_s'))} s"),
              row("agent peak RSS", agent_peak, 48, " MiB",
                  "max over full/noop/incr of the median (GNU time, wait4)"),
              row("controller peak RSS", ctl_peak, 128, " MiB",
                  "serve, max over full/noop/incr of the median (VmHWM before SIGTERM); "
                  f"restore (pulih-controller restore) peak: {fmt(restore_peak, 0)} MiB"),
              ]
    if peaks:
        lines += ["", f"{t} per process (medians; the harness's peak RSS and CPU are for "
                  "agent + controller together, on the same 2 cores):", "",
                  "| phase | agent peak MiB | agent CPU s | controller peak MiB "
                  "| controller CPU s | harness tree CPU s | harness wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for ph in ("full", "noop", "incr"):
            lines.append(
                f"| {ph} | {fmt(agent_by_phase[ph], 1)} | {fmt(med(cpus.get(('agent', ph), [])))} "
                f"| {fmt(ctl_by_phase[ph], 1)} | {fmt(med(cpus.get(('controller', ph), [])))} "
                f"| {fmt(m(t, ph, 'cpu_s'))} | {fmt(m(t, ph, 'wall_s'))} |")
    else:
        lines += ["", "(no PULIH_MEM lines found: pass --logs WORKDIR/logs for the "
                  "agent/controller split)"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
