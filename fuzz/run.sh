#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each and prints one line of
# results per target. Usage: [PULIH_FUZZ_PROFILE=dev] fuzz/run.sh [SECONDS] [TARGET...]
#
# Inputs: the checked-in seeds (fuzz/seeds/<target>, made by
# `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`), earlier
# crash reproducers (fuzz/regressions/<target>) and a working corpus that
# grows between runs (fuzz/corpus/<target>, not checked in). A crash leaves
# its input in fuzz/artifacts/<target>/ and makes the script exit 1 after
# the other targets ran; turn it into a regression test (see SECURITY.md).
#
# Needs cargo-fuzz and a nightly toolchain; without nightly it uses the
# stable compiler with RUSTC_BOOTSTRAP=1 (same flags, no extra download).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true

if cargo +nightly --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
else
    echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi

# -a: debug assertions and overflow checks on, so an arithmetic overflow on
# hostile input is found here rather than wrapping silently in release.
# PULIH_FUZZ_PROFILE=dev builds without optimisation (CI's short runs: the
# optimised, instrumented build of every dependency costs most of their
# time; fewer executions per second matter little over 10 s). Long runs keep
# the default, release.
build=(-a)
if [ "${PULIH_FUZZ_PROFILE:-release}" = dev ]; then
    build=(--dev)
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("${cargo[@]}" fuzz list)
fi
start=$(date +%s)
"${cargo[@]}" fuzz build "${build[@]}" >/dev/null
echo "fuzz: built ${#targets[@]} targets in $(($(date +%s) - start)) s; ${secs} s each"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" logs
    dirs=("corpus/$t" "seeds/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    log="logs/$t.log"
    t0=$(date +%s)
    if "${cargo[@]}" fuzz run "${build[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$t")
    fi
    # On a crash libFuzzer prints no final stats; the last status line has the count.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf 'fuzz: %-18s %-5s %4s s  execs %-10s cov %-6s corpus %s\n' \
        "$t" "$status" "$(($(date +%s) - t0))" "${execs:-?}" "${cov:-?}" "$(find "corpus/$t" -type f | wc -l)"
    if [ "$status" = CRASH ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
    fi
done
echo "fuzz: total $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: CRASHES in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
