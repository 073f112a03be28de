#!/usr/bin/env python3
"""Drill restore + verify throughput beside `restic restore`, in one run.

Issue 5 asks for the restore-and-verify throughput of a drill on the
benchmark corpus against `restic restore` of the same data in the same run.
This script backs the corpus up once with Pulih (controller on loopback with
mutual TLS, an enrolled agent) and once with restic, then alternates, for
each repeat:

  * `restic restore latest --target DIR`            (restore only)
  * `restic restore latest --target DIR --verify`   (restore, then re-read
    and check every restored file against the repository's hashes: the
    same work a drill's verify step does)
  * `pulihctl drill run bench`: a real drill of a system whose one dataset is
    the corpus, restored into the controller's sandbox, re-read and compared
    with the snapshot's chunk hashes, then torn down. The drill's own
    `restore` and `verify` steps are timed by the controller; the whole
    command's wall time (HTTPS API, scheduling, teardown) is reported too.

Every restore lands on the same file system (--workdir); the page cache is
warm for all. Prints a Markdown table of medians and writes JSON beside it.

Usage (root not needed; bench/run.sh's scratch file system recommended):
  cargo build --release --bins
  bench/drill.py [--corpus /tmp/bench/corpus-1G] [--workdir /mnt/benchfs/drill] [--repeat 3]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def out(cmd, **kw) -> str:
    return run(cmd, stdout=subprocess.PIPE, text=True, **kw).stdout


def tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                size += st.st_size
    return files, size


def extra_links(path: Path) -> int:
    """Regular files that are further names of an inode already counted."""
    seen = set()
    extra = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_nlink > 1 and not os.path.islink(os.path.join(dirpath, n)):
                key = (st.st_dev, st.st_ino)
                extra += key in seen
                seen.add(key)
    return extra


def wait_port(port: int, proc: subprocess.Popen, secs: float = 30) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"pulih-controller serve exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"controller not listening on {port} after {secs} s")


def timed(cmd, env=None) -> float:
    t0 = time.monotonic()
    run(cmd, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/bench/corpus-1G")
    ap.add_argument("--workdir", default="/mnt/benchfs/drill" if os.path.ismount("/mnt/benchfs") else "/tmp/bench/drill")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bin", default=os.environ.get("PULIH_BIN", str(ROOT / "target/release")))
    ap.add_argument("--json", default=None, help="where to write the results (default WORKDIR/drill-result.json)")
    a = ap.parse_args()

    corpus = Path(a.corpus).resolve()
    if not corpus.is_dir():
        sys.exit(f"corpus {corpus} missing: generate it with bench/run.sh (or gen_corpus.py --size 1G --seed 1)")
    bindir = Path(a.bin)
    ctl, agent, pulihctl = (bindir / n for n in ("pulih-controller", "pulih-agent", "pulihctl"))
    for b in (ctl, agent, pulihctl):
        if not b.exists():
            sys.exit(f"{b} missing: run `cargo build --release --bins` first")
    if not shutil.which("restic"):
        sys.exit("restic missing: apt-get install -y restic")

    work = Path(a.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    files, size = tree_size(corpus)
    links = extra_links(corpus)
    mib = size / (1 << 20)
    print(f"corpus {corpus}: {files} files, {mib:.1f} MiB; workdir {work}", flush=True)

    # Pulih: controller, agent, one full snapshot.
    data = work / "pulih"
    port, api = free_port(), free_port()
    run([ctl, "init", "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--api-listen", f"127.0.0.1:{api}"],
        stdout=subprocess.DEVNULL)
    enroll = json.loads(out([ctl, "enroll-agent", "bench-agent", "--data-dir", data, "--json"]))
    serve = subprocess.Popen([ctl, "serve", "--data-dir", data], stderr=open(work / "serve.log", "w"))
    try:
        wait_port(port, serve)
        wait_port(api, serve)
        cfg = work / "agent.toml"
        run([agent, "enroll", "--controller", f"127.0.0.1:{port}", "--token", enroll["token"], "--fingerprint",
             enroll["fingerprint"], "--name", "bench-agent", "--state-dir", work / "agent-state", "--config", cfg],
            stdout=subprocess.DEVNULL)
        with open(cfg, "a") as f:
            f.write(f'\n[[dataset]]\nname = "bench"\npaths = [{json.dumps(str(corpus))}]\n')
        t = timed([agent, "snapshot", "--config", cfg])
        print(f"pulih snapshot: {t:.2f} s", flush=True)
        systems = data / "systems"
        systems.mkdir(exist_ok=True)
        (systems / "bench.toml").write_text(
            '[system]\nname = "bench"\ntitle = "Korpus uji kinerja"\nopd = "Diskominfotik"\ndata_class = "pokok"\n'
            'tier = 1\nrpo_target = "1d"\nrto_target = "1h"\n\n[[dataset]]\nagent = "bench-agent"\ndataset = "bench"\n')
        token = json.loads(out([ctl, "token", "create", "--name", "bench", "--role", "coordinator", "--json",
                                "--data-dir", data]))["token"]
        (work / "token").write_text(token)
        pctl = [pulihctl, "--controller", f"https://127.0.0.1:{api}", "--token-file", work / "token", "--ca",
                data / "pki/ca.pem"]

        # restic: one repository, one backup.
        renv = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(work / "restic"))
        run(["restic", "init"], env=renv, stdout=subprocess.DEVNULL)
        t = timed(["restic", "backup", "--quiet", str(corpus)], env=renv)
        print(f"restic backup: {t:.2f} s", flush=True)

        rows = {"restic restore": [], "restic restore --verify": [], "pulih drill (whole command)": [],
                "pulih drill: restore step": [], "pulih drill: verify step": [],
                "pulih drill: restore + verify steps": []}
        for i in range(a.repeat):
            for verify in (False, True):
                dest = work / "restic-restore"
                cmd = ["restic", "restore", "latest", "--target", str(dest)] + (["--verify"] if verify else [])
                t = timed(cmd, env=renv)
                # restic restores the absolute path below the target: check it all came back.
                got = tree_size(dest / str(corpus).lstrip("/"))
                if got != (files, size):
                    sys.exit(f"restic restored {got}, expected {(files, size)}")
                shutil.rmtree(dest)
                rows["restic restore --verify" if verify else "restic restore"].append(t)
            t0 = time.monotonic()
            res = run(pctl + ["drill", "run", "bench"], stdout=subprocess.PIPE, text=True, check=False)
            wall = time.monotonic() - t0
            drill_id = next((l.split()[1] for l in res.stdout.splitlines() if l.startswith("Drill ")), None)
            if res.returncode != 0 or drill_id is None:
                sys.exit(f"drill failed ({res.returncode}):\n{res.stdout}")
            show = json.loads(out(pctl + ["--json", "drill", "show", drill_id]))
            if show["drill"]["outcome"] != "passed":
                sys.exit(f"drill {drill_id} did not pass: {json.dumps(show, indent=1)}")
            steps = {s["kind"]: (s["ended_ns"] - s["started_ns"]) / 1e9 for s in show["steps"]}
            sysrow = show["systems"][0]
            # The drill counts a hard link once (as a link, not a file written).
            if sysrow.get("files_restored") not in (None, files, files - links):
                sys.exit(f"drill restored {sysrow.get('files_restored')} files, expected {files - links}")
            rows["pulih drill (whole command)"].append(wall)
            rows["pulih drill: restore step"].append(steps["restore"])
            rows["pulih drill: verify step"].append(steps["verify"])
            rows["pulih drill: restore + verify steps"].append(steps["restore"] + steps["verify"])
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), flush=True)
    finally:
        serve.terminate()
        serve.wait()

    med = {k: statistics.median(v) for k, v in rows.items()}
    base = med["restic restore"]
    basev = med["restic restore --verify"]
    lines = [
        f"Corpus {corpus} ({files} files, {mib:.1f} MiB), {a.repeat} repeat(s), medians; workdir {work}.",
        "",
        "| what | wall s (median) | range | MiB/s | restic restore / this | restic restore --verify / this |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, v in rows.items():
        lines.append(f"| {k} | {med[k]:.2f} | {min(v):.2f}-{max(v):.2f} | {mib / med[k]:.0f} | "
                     f"{base / med[k]:.2f} | {basev / med[k]:.2f} |")
    table = "\n".join(lines)
    print()
    print(table)
    result = Path(a.json) if a.json else work / "drill-result.json"
    result.write_text(json.dumps({"corpus": str(corpus), "files": files, "bytes": size, "repeat": a.repeat,
                                  "runs": rows, "medians": med}, indent=1))
    print(f"\nresults: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
