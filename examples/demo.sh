#!/usr/bin/env bash
# Pulih end to end on embedded defaults: a controller with its own CA and
# SQLite catalog in a temporary directory, one enrolled agent, a sample tree
# snapshotted twice over mutual TLS, listed, verified, restored and compared.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/pulih-demo.XXXXXX)
PORT=${PULIH_DEMO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17443)}
cleanup() { [ -n "${CTL:-}" ] && kill "$CTL" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "1. Controller: data directory, CA, catalog (pulih-controller init)"
"$BIN/pulih-controller" init --data-dir "$WORK/drc" --listen "127.0.0.1:$PORT"
"$BIN/pulih-controller" serve --data-dir "$WORK/drc" 2>"$WORK/controller.log" &
CTL=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

step "2. Enrollment token (pulih-controller enroll-agent)"
JSON=$("$BIN/pulih-controller" enroll-agent demo-opd --data-dir "$WORK/drc" --json)
TOKEN=$(printf '%s' "$JSON" | sed 's/.*"token":"\([^"]*\)".*/\1/')
FP=$(printf '%s' "$JSON" | sed 's/.*"fingerprint":"\([^"]*\)".*/\1/')
echo "token issued, CA fingerprint $FP"

step "3. Agent enrolls: key made locally, certificate signed by the DRC"
"$BIN/pulih-agent" enroll --controller "127.0.0.1:$PORT" --token "$TOKEN" --fingerprint "$FP" \
    --name demo-opd --state-dir "$WORK/agent" --config "$WORK/agent.toml"

step "4. Sample data: text, a large file, symlinks, a hard link, a sparse file"
SRC=$WORK/src
mkdir -p "$SRC/dokumen/arsip 2023" "$SRC/db"
for i in $(seq 1 200); do echo "Surat nomor $i/$RANDOM tentang layanan publik Kota Blitar" > "$SRC/dokumen/surat-$i.txt"; done
head -c 20000000 /dev/urandom > "$SRC/db/data.bin"
cp "$SRC/dokumen/surat-1.txt" "$SRC/dokumen/arsip 2023/"
ln -s ../db/data.bin "$SRC/dokumen/tautan"
ln "$SRC/dokumen/surat-2.txt" "$SRC/dokumen/surat-2-link.txt"
truncate -s 100M "$SRC/db/sparse.img"
printf '\n[[dataset]]\nname = "demo"\npaths = ["%s"]\nexclude = ["*.tmp"]\n' "$SRC" >> "$WORK/agent.toml"

step "5. Snapshot (full), change one file, snapshot again (incremental)"
"$BIN/pulih-agent" snapshot --config "$WORK/agent.toml"
echo "perubahan" >> "$SRC/dokumen/surat-7.txt"
"$BIN/pulih-agent" snapshot --config "$WORK/agent.toml"

step "6. Catalog at the DRC (pulih-controller snapshots)"
"$BIN/pulih-controller" snapshots --data-dir "$WORK/drc"

step "7. Verify every stored byte (pulih-controller verify --all)"
"$BIN/pulih-controller" verify --data-dir "$WORK/drc" --all

step "8. Restore the latest snapshot and compare with the source"
"$BIN/pulih-controller" restore --data-dir "$WORK/drc" latest "$WORK/restored" --path "$SRC"
diff -r --no-dereference "$SRC" "$WORK/restored"
echo "restored tree is identical to the source"

step "Summary"
echo "work directory: $WORK (controller log: $WORK/controller.log)"
echo "demo finished: OK"
