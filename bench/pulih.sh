# pulih.sh - adapter for /work/shared/bench/run.py (see bench/README.md).
#
# Pulih is an agent/controller pair, so every backup runs the real thing:
# `pulih-controller serve` on 127.0.0.1 (started by this adapter, in the same
# process tree as the call, so the harness counts its CPU and memory), and
# `pulih-agent snapshot` replicating over mutual TLS to it. The controller
# verifies (decompresses + rehashes) every chunk and stores it durably.
#
#   REPO                  controller data dir (catalog, store, CA) = "repo MiB"
#   REPO.pulih-bench      sidecar: PORT=, SRC= (REPO-adjacent, a few bytes)
#   $BENCH_STATE/agent/   agent state dir (key, certificates, change cache)
#   $BENCH_STATE/agent.toml        agent config (enroll output + one dataset)
#   $BENCH_STATE/agent.base.toml   enroll output without a dataset
# The agent's state is what the harness reports as "state MiB".
#
# Binaries: ${PULIH_BIN:-<repo>/target/release}/pulih-{agent,controller}.
# Everything this adapter starts has exited when its function returns.

_PULIH_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PULIH_BIN=${PULIH_BIN:-$_PULIH_REPO_ROOT/target/release}
_PULIH_CTL="$PULIH_BIN/pulih-controller"
_PULIH_AGENT="$PULIH_BIN/pulih-agent"
_PULIH_AGENT_NAME=bench-agent
_PULIH_DATASET=bench

available() { [ -x "$_PULIH_CTL" ] && [ -x "$_PULIH_AGENT" ]; }

version() {
    local rev
    rev=$(git -C "$_PULIH_REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$_PULIH_REPO_ROOT" status --porcelain -- agent controller core Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        rev="$rev-dirty"
    fi
    echo "$("$_PULIH_AGENT" --version) / $("$_PULIH_CTL" --version) (git $rev, $PULIH_BIN)"
}

_log() { printf 'pulih.sh: %s\n' "$*" >&2; }

_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

_port_is_free() {  # $1 = port; true if nothing listens on 127.0.0.1:$1
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

_sidecar() { printf '%s.pulih-bench' "${1%/}"; }

_sidecar_get() {  # $1 = REPO, $2 = key; prints the value (empty if unset)
    local f line
    f=$(_sidecar "$1")
    [ -f "$f" ] || return 0
    while IFS= read -r line; do
        case "$line" in "$2="*) printf '%s\n' "${line#"$2="}" ;; esac
    done <"$f"
}

_sidecar_set() {  # $1 = REPO, $2 = key, $3 = value (no newlines)
    local f tmp line
    f=$(_sidecar "$1")
    tmp="$f.tmp"
    : >"$tmp"
    if [ -f "$f" ]; then
        while IFS= read -r line; do
            case "$line" in "$2="*) ;; *) printf '%s\n' "$line" >>"$tmp" ;; esac
        done <"$f"
    fi
    printf '%s=%s\n' "$2" "$3" >>"$tmp"
    mv -f "$tmp" "$f"
}

_toml_str() {  # TOML basic string for $1
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# Controller lifecycle. _ctl_start sets _PULIH_CTL_PID; _ctl_stop sends SIGTERM
# and waits. The EXIT trap makes sure an early failure (set -e) does not leave
# the controller running.
_PULIH_CTL_PID=
_ctl_stop() {
    local rc=0
    if [ -n "$_PULIH_CTL_PID" ]; then
        _ctl_report "$_PULIH_CTL_PID"
        kill -TERM "$_PULIH_CTL_PID" 2>/dev/null || true
        wait "$_PULIH_CTL_PID" || rc=$?
        _PULIH_CTL_PID=
        [ "$rc" -eq 0 ] || _log "pulih-controller serve exited with status $rc after SIGTERM"
    fi
    return "$rc"
}

# One line per call for bench/targets.py, which splits the harness's per-call
# totals into agent and controller: the controller's peak RSS (VmHWM) and CPU
# read from /proc just before SIGTERM, the agent's from GNU time (wait4).
_ctl_report() {  # $1 = controller pid
    local hwm=0 k v rest stat f=()
    while read -r k v rest; do
        [ "$k" = "VmHWM:" ] && hwm=$v
    done <"/proc/$1/status" || true
    read -r stat <"/proc/$1/stat" || true
    stat=${stat##*) }         # fields from 3 on; utime, stime are 14 and 15
    read -r -a f <<<"$stat"
    printf 'PULIH_MEM process=controller phase=%s peak_rss_kib=%s cpu_ticks=%s\n' \
        "${BENCH_PHASE:-?}" "$hwm" "$(( ${f[11]:-0} + ${f[12]:-0} ))" >&2
}

_ctl_start() {  # $1 = REPO, $2 = port
    local _
    trap '_ctl_stop || true' EXIT
    "$_PULIH_CTL" serve --data-dir "$1" --listen "127.0.0.1:$2" &
    _PULIH_CTL_PID=$!
    for _ in $(seq 1 1500); do  # up to ~30 s
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$_PULIH_CTL_PID" 2>/dev/null; then
            wait "$_PULIH_CTL_PID" || true
            _PULIH_CTL_PID=
            _log "pulih-controller serve exited before listening on 127.0.0.1:$2"
            return 1
        fi
        sleep 0.02
    done
    _log "pulih-controller serve not listening on 127.0.0.1:$2 after 30 s"
    _ctl_stop || true
    return 1
}

# The port stored at init, or a new free one (also written into the agent's
# config) if something else took it meanwhile.
_ctl_port() {  # $1 = REPO
    local port
    port=$(_sidecar_get "$1" PORT)
    if [ -z "$port" ] || ! _port_is_free "$port"; then
        [ -z "$port" ] || _log "port $port is taken; using another one"
        port=$(_free_port)
        _sidecar_set "$1" PORT "$port"
        if [ -f "$BENCH_STATE/agent.base.toml" ]; then
            sed -i "s/^address = .*/address = \"127.0.0.1:$port\"/" \
                "$BENCH_STATE/agent.base.toml" "$BENCH_STATE/agent.toml"
        fi
    fi
    printf '%s\n' "$port"
}

init() {  # $1 = REPO (does not exist yet)
    local repo=$1 port json token fp
    port=$(_free_port)
    "$_PULIH_CTL" init --data-dir "$repo" --listen "127.0.0.1:$port"
    _sidecar_set "$repo" PORT "$port"
    json=$("$_PULIH_CTL" enroll-agent "$_PULIH_AGENT_NAME" --data-dir "$repo" --json)
    token=$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    fp=$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fingerprint"])')
    _ctl_start "$repo" "$port"
    "$_PULIH_AGENT" enroll --controller "127.0.0.1:$port" --token "$token" --fingerprint "$fp" \
        --name "$_PULIH_AGENT_NAME" --state-dir "$BENCH_STATE/agent" \
        --config "$BENCH_STATE/agent.base.toml"
    _ctl_stop
    cp "$BENCH_STATE/agent.base.toml" "$BENCH_STATE/agent.toml"
}

backup() {  # $1 = SRC, $2 = REPO
    local src=${1%/} repo=$2 port rc=0
    case "$src" in /*) ;; *) src="$PWD/$src" ;; esac
    [ -n "$src" ] || src=/
    # one dataset whose single path is SRC (rewritten only if SRC changed)
    if [ "$(_sidecar_get "$repo" SRC)" != "$src" ] || ! grep -q '^\[\[dataset\]\]' "$BENCH_STATE/agent.toml"; then
        {
            cat "$BENCH_STATE/agent.base.toml"
            printf '\n[[dataset]]\nname = "%s"\npaths = [%s]\n' "$_PULIH_DATASET" "$(_toml_str "$src")"
        } >"$BENCH_STATE/agent.toml.tmp"
        mv -f "$BENCH_STATE/agent.toml.tmp" "$BENCH_STATE/agent.toml"
        _sidecar_set "$repo" SRC "$src"
    fi
    port=$(_ctl_port "$repo")
    _ctl_start "$repo" "$port"
    if [ -x /usr/bin/time ]; then
        local tf
        tf="$(_sidecar "$repo").time"
        /usr/bin/time -o "$tf" \
            -f "PULIH_MEM process=agent phase=${BENCH_PHASE:-?} peak_rss_kib=%M cpu_s=%U+%S wall_s=%e" \
            "$_PULIH_AGENT" snapshot --config "$BENCH_STATE/agent.toml" || rc=$?
        grep '^PULIH_MEM' "$tf" >&2 || true
        rm -f "$tf"
    else
        "$_PULIH_AGENT" snapshot --config "$BENCH_STATE/agent.toml" || rc=$?
    fi
    _ctl_stop || { [ "$rc" -ne 0 ] || rc=1; }
    trap - EXIT
    if [ "$rc" -eq 3 ]; then
        _log "pulih-agent snapshot exited 3: committed with problems (entries skipped or unreadable; see WARN lines above); counted as success"
        rc=0
    fi
    return "$rc"
}

restore() {  # $1 = REPO, $2 = DEST (exists, empty)
    local repo=$1 dest=$2 src
    src=$(_sidecar_get "$repo" SRC)
    if [ -z "$src" ]; then
        _log "no dataset path recorded for $repo (no backup was taken?)"
        return 1
    fi
    "$_PULIH_CTL" restore --data-dir "$repo" latest "$dest" \
        --agent "$_PULIH_AGENT_NAME" --dataset "$_PULIH_DATASET" --path "$src"
}
