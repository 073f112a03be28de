#!/usr/bin/env bash
# Pulih beside restic, borg, rsync and pipeline-limit in one harness run.
#
#   bench/run.sh                      # 1 GiB corpus, 3 repeats (~9 min on 2 cores)
#   bench/run.sh --smoke              # 50 MiB corpus, 1 repeat (~1 min)
#   bench/run.sh --size 2G --repeat 5
#   bench/run.sh ... -- --drop-caches # anything after -- goes to run.py
#   bench/run.sh --smoke --tools pipeline-limit --no-scratch   # CI's smoke run
#
# Steps: build Pulih in release mode; install the other tools with apt-get if
# missing (root); generate the corpus under /tmp/bench if missing; mount the
# journaled scratch filesystem (scratchfs.sh up, root only) unless it is
# already mounted; run the harness (run.py) with --json/--markdown into
# /tmp/bench/results-SIZE-rN/; print Pulih's ratios to the other tools and the
# targets of the "Performance" issue (bench/targets.py); unmount the scratch
# filesystem only if this script mounted it.
#
# Environment: BENCH_DIR (harness, default ../shared/bench beside the repo or
# /work/shared/bench), PULIH_BIN (binaries, default target/release; when set,
# nothing is built), BENCH_OUT (results dir). --tools "LIST" names the other
# tools (default "restic borg rsync pipeline-limit"); --no-scratch works in
# /tmp/bench/work without mounting the scratch filesystem.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
size=1G
repeat=3
tools="restic borg rsync pipeline-limit"
scratch=1
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --size) size=$2; shift 2 ;;
    --size=*) size=${1#--size=}; shift ;;
    --repeat) repeat=$2; shift 2 ;;
    --repeat=*) repeat=${1#--repeat=}; shift ;;
    --smoke) size=50M; repeat=1; shift ;;
    --tools) tools=$2; shift 2 ;;
    --no-scratch) scratch=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "${BENCH_DIR:-}" ]; then
    for d in "$ROOT/../shared/bench" /work/shared/bench; do
        if [ -f "$d/run.py" ]; then BENCH_DIR=$(cd "$d" && pwd); break; fi
    done
fi
if [ -z "${BENCH_DIR:-}" ] || [ ! -f "$BENCH_DIR/run.py" ]; then
    echo "run.sh: benchmark harness not found; set BENCH_DIR" >&2; exit 1
fi

say() { printf '\n== %s\n' "$*" >&2; }

# 1. Pulih in release mode
if [ -z "${PULIH_BIN:-}" ]; then
    say "building Pulih (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bins)
    export PULIH_BIN="$ROOT/target/release"
fi

# 2. the other tools
missing=()
for t in $tools zstd b3sum; do
    case "$t" in pipeline-limit) continue ;; esac
    command -v "$t" >/dev/null || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        say "installing restic borgbackup rsync zstd b3sum (missing: ${missing[*]})"
        apt-get update && apt-get install -y restic borgbackup rsync zstd b3sum
    else
        echo "run.sh: missing ${missing[*]}; as root: apt-get update && apt-get install -y restic borgbackup rsync zstd b3sum (run.py skips tools that are not installed)" >&2
    fi
fi

# 3. corpus (deterministic: same seed and size -> same tree)
corpus="/tmp/bench/corpus-$size"
if [ ! -d "$corpus" ]; then
    say "generating the $size corpus in $corpus"
    mkdir -p /tmp/bench
    rm -rf "$corpus.partial"
    "$BENCH_DIR/gen_corpus.py" "$corpus.partial" --size "$size" --seed 1
    mv "$corpus.partial" "$corpus"
fi

# 4. journaled scratch filesystem (root only)
mnt=/mnt/benchfs
mounted_here=0
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ "$mounted_here" = 1 ]; then
        say "removing the scratch filesystem"
        "$BENCH_DIR/scratchfs.sh" down "$mnt" || true
    fi
}
trap cleanup EXIT
if [ "$scratch" = 0 ]; then
    workdir=/tmp/bench/work
elif [ "$(id -u)" = 0 ]; then
    if ! mountpoint -q "$mnt"; then
        say "mounting the journaled scratch filesystem on $mnt"
        "$BENCH_DIR/scratchfs.sh" up "$mnt"
        mounted_here=1
    fi
    workdir="$mnt/work"
else
    echo "run.sh: not root: no scratch filesystem; using /tmp/bench/work (see the harness's Caveats)" >&2
    workdir=/tmp/bench/work
fi

# 5. the harness
out=${BENCH_OUT:-/tmp/bench/results-$size-r$repeat}
mkdir -p "$out"
say "run.py: $size corpus, $repeat repeat(s); results in $out"
rc=0
tool_args=()
for t in $tools; do tool_args+=(--tool "$t"); done
python3 "$BENCH_DIR/run.py" --corpus "$corpus" --workdir "$workdir" --repeat "$repeat" \
    ${tool_args[@]+"${tool_args[@]}"} \
    --adapter "$ROOT/bench/pulih.sh" \
    --json "$out/result.json" --markdown "$out/result.md" ${extra[@]+"${extra[@]}"} || rc=$?
rm -rf "$out/logs"
if [ -d "$workdir/logs" ]; then cp -r "$workdir/logs" "$out/logs" || true; fi
if [ -f "$out/result.json" ]; then
    echo
    python3 "$ROOT/bench/targets.py" "$out/result.json" --logs "$out/logs" | tee "$out/targets.md"
fi
echo "results: $out (result.json, result.md, targets.md, logs/)" >&2
exit "$rc"
