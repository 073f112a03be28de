#!/usr/bin/env bash
# Memasang Pulih (pengendali dan/atau agen) / Installs Pulih (controller and/or agent).
#
#   deploy/install.sh --controller [--agent] [--bin-dir DIR] [--root DIR] [--dry-run]
#
# Binaries go to ${PREFIX:-/usr/local}/bin, their man pages and bash/zsh/fish
# completions under ${PREFIX:-/usr/local}/share, units to /etc/systemd/system,
# example configurations to /etc/pulih/*.toml.example. An existing configuration
# (/etc/pulih/agent.toml, /var/lib/pulih/controller.toml) is never touched.
# Running it again upgrades binaries, units and examples in place.
set -euo pipefail

umask 022

usage() {
    cat <<'EOF'
Pemakaian / Usage: install.sh (--controller | --agent)... [options]

  --controller     pasang pengendali DRC / install the DRC controller
  --agent          pasang agen (server utama) / install the agent (primary server)
  --bin-dir DIR    direktori biner / directory of the built binaries (default: target/release)
  --root DIR       pasang di bawah DIR, bukan / ; tanpa root, tanpa useradd
                   install under DIR instead of / ; no root needed, no useradd
  --dry-run        tampilkan tindakan tanpa mengubah apa pun / print every action, change nothing
  -h, --help       bantuan ini / this help

Lingkungan / Environment: PREFIX (default /usr/local)
EOF
}

die() {
    printf 'Galat / Error: %s\n' "$*" >&2
    exit 1
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin_dir=""
root=""
dry_run=0
controller=0
agent=0
prefix=${PREFIX:-/usr/local}

while [[ $# -gt 0 ]]; do
    case $1 in
        --controller) controller=1 ;;
        --agent) agent=1 ;;
        --dry-run) dry_run=1 ;;
        --bin-dir)
            [[ $# -ge 2 ]] || die "--bin-dir memerlukan direktori / --bin-dir needs a directory"
            bin_dir=$2
            shift
            ;;
        --bin-dir=*) bin_dir=${1#*=} ;;
        --root)
            [[ $# -ge 2 ]] || die "--root memerlukan direktori / --root needs a directory"
            root=$2
            shift
            ;;
        --root=*) root=${1#*=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "opsi tidak dikenal: $1 / unknown option: $1"
            ;;
    esac
    shift
done

((controller || agent)) || {
    usage >&2
    die "pilih --controller dan/atau --agent / choose --controller and/or --agent"
}

# PREFIX ends up in ExecStart= of the units: keep it a plain absolute path.
[[ $prefix =~ ^/[A-Za-z0-9._/+-]*$ ]] ||
    die "PREFIX harus path absolut sederhana: $prefix / PREFIX must be a plain absolute path: $prefix"
prefix=${prefix%/}
[[ -n $prefix ]] || prefix=/

if [[ -n $root ]]; then
    [[ $root == /* ]] || root="$PWD/$root"
    # Strip trailing slashes; --root / is the real system.
    while [[ $root == */ ]]; do root=${root%/}; done
fi
staging=0
[[ -n $root ]] && staging=1

if [[ -z $bin_dir ]]; then
    bin_dir=target/release
    # Also works when started from outside the source tree.
    if [[ ! -d $bin_dir && -d $script_dir/../target/release ]]; then
        bin_dir=$script_dir/../target/release
    fi
fi

if ((!staging && !dry_run)) && [[ $EUID -ne 0 ]]; then
    die "jalankan sebagai root, atau pakai --root DIR / run as root, or use --root DIR"
fi

binaries=()
((controller)) && binaries+=(pulih-controller)
((agent)) && binaries+=(pulih-agent)
for b in "${binaries[@]}"; do
    [[ -x $bin_dir/$b ]] ||
        die "$bin_dir/$b tidak ada atau tidak dapat dijalankan (cargo build --release?) / $bin_dir/$b is missing or not executable (cargo build --release?)"
done
# pulihctl (remote CLI) goes with the controller once it is built.
if ((controller)) && [[ -x $bin_dir/pulihctl ]]; then
    binaries+=(pulihctl)
fi

for f in pulih-controller.service pulih-agent.service controller.toml.example agent.toml.example systems/simpeg.toml.example; do
    [[ -f $script_dir/$f ]] || die "$script_dir/$f tidak ada / $script_dir/$f is missing"
done

# --- helpers -----------------------------------------------------------------

say() {
    printf '%s\n' "$*"
}

# Runs a command, or only shows it with --dry-run.
run() {
    if ((dry_run)); then
        printf '  [dry-run]'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Path on the target system.
at() {
    printf '%s%s' "$root" "$1"
}

# Creates the parent directories of a target path (umask 022: 0755).
declare -A made=()
make_parents() {
    local dir
    dir=$(dirname "$1")
    [[ -d $dir || -n ${made[$dir]:-} ]] && return 0
    run mkdir -p "$dir"
    made[$dir]=1
}

# Creates a directory with MODE (and OWNER unless staging) if it is missing;
# an existing one is left as it is.
make_dir() {
    local path=$1 mode=$2 owner=${3:-}
    local dest
    dest=$(at "$path")
    if [[ -d $dest ]]; then
        say "Direktori $path sudah ada, dibiarkan / Directory $path already exists, left as is"
        return
    fi
    # Already shown in this dry run.
    [[ -n ${made[$dest]:-} ]] && return 0
    say "Membuat direktori $path ($mode) / Creating directory $path ($mode)"
    make_parents "$dest"
    run mkdir -m "$mode" "$dest"
    made[$dest]=1
    if [[ -n $owner ]]; then
        if ((staging)); then
            say "Melewati chown $owner $path karena --root / Skipping chown $owner $path because of --root"
        else
            run chown "$owner" "$dest"
        fi
    fi
}

# Installs SRC as DEST (a path on the target system) with MODE, replacing
# /usr/local/bin/ by PREFIX/bin/ when asked (unit files).
install_file() {
    local src=$1 path=$2 mode=$3 rewrite=${4:-0}
    local dest
    dest=$(at "$path")
    make_parents "$dest"
    if ((rewrite)) && [[ $prefix != /usr/local ]]; then
        local bindir=${prefix%/}/bin/
        if ((dry_run)); then
            printf '  [dry-run] sed s#/usr/local/bin/#%s#g %q > %q\n' "$bindir" "$src" "$dest.tmp"
        else
            sed "s#/usr/local/bin/#${bindir}#g" "$src" >"$dest.tmp"
        fi
        run chmod "$mode" "$dest.tmp"
        run mv -f "$dest.tmp" "$dest"
    else
        # install(1) unlinks the old file first: a running binary is not disturbed.
        run install -m "$mode" "$src" "$dest"
    fi
}

# --- actions -----------------------------------------------------------------

((dry_run)) && say "Uji coba: tidak ada yang diubah / Dry run: nothing is changed"
((staging)) && say "Memasang di bawah $root / Installing under $root"

bin_target=${prefix%/}/bin
for b in "${binaries[@]}"; do
    say "Memasang $b ke $bin_target / Installing $b into $bin_target"
    install_file "$bin_dir/$b" "$bin_target/$b" 0755
done

# Man pages and shell completions, written by each binary from its own
# command-line definition (hidden subcommand `generate`), so they always
# match the installed version.
share=${prefix%/}/share
gen_dir=$(mktemp -d)
trap 'rm -rf "$gen_dir"' EXIT
for b in "${binaries[@]}"; do
    for kind in man bash zsh fish; do
        "$bin_dir/$b" generate "$kind" "$gen_dir/$kind" >/dev/null ||
            die "$b generate $kind gagal / $b generate $kind failed"
    done
done
say "Memasang halaman man ke $share/man/man1 / Installing man pages into $share/man/man1"
for f in "$gen_dir"/man/*.1; do
    install_file "$f" "$share/man/man1/$(basename "$f")" 0644
done
say "Memasang pelengkapan shell bash, zsh dan fish / Installing bash, zsh and fish completions"
for b in "${binaries[@]}"; do
    install_file "$gen_dir/bash/$b.bash" "$share/bash-completion/completions/$b" 0644
    install_file "$gen_dir/zsh/_$b" "$share/zsh/site-functions/_$b" 0644
    install_file "$gen_dir/fish/$b.fish" "$share/fish/vendor_completions.d/$b.fish" 0644
done

if ((controller)); then
    if ((staging)); then
        say "Melewati pembuatan pengguna pulih karena --root (buat saat paket dipasang) / Skipping creation of user pulih because of --root (create it when the package is installed)"
    elif getent passwd pulih >/dev/null; then
        say "Pengguna pulih sudah ada / User pulih already exists"
    else
        say "Membuat pengguna sistem pulih / Creating system user pulih"
        command -v useradd >/dev/null || ((dry_run)) ||
            die "useradd tidak ditemukan; buat pengguna sistem pulih secara manual / useradd not found; create the system user pulih by hand"
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        run useradd --system --user-group --home-dir /var/lib/pulih --no-create-home \
            --shell "$nologin" --comment "Pulih controller" pulih
    fi
    make_dir /etc/pulih 0755
    # init (as pulih) fills it; it must exist and belong to pulih beforehand.
    make_dir /var/lib/pulih 0700 pulih:pulih
    say "Memasang unit pulih-controller.service / Installing unit pulih-controller.service"
    install_file "$script_dir/pulih-controller.service" /etc/systemd/system/pulih-controller.service 0644 1
    say "Memasang contoh /etc/pulih/controller.toml.example / Installing example /etc/pulih/controller.toml.example"
    install_file "$script_dir/controller.toml.example" /etc/pulih/controller.toml.example 0644
    say "Memasang contoh /etc/pulih/organisation.toml.example / Installing example /etc/pulih/organisation.toml.example"
    install_file "$script_dir/organisation.toml.example" /etc/pulih/organisation.toml.example 0644
    say "Memasang contoh /etc/pulih/systems/simpeg.toml.example / Installing example /etc/pulih/systems/simpeg.toml.example"
    install_file "$script_dir/systems/simpeg.toml.example" /etc/pulih/systems/simpeg.toml.example 0644
    # Templates of the DR plan, read at run time ([drp] templates); editable copies.
    templates_src="$script_dir/../drp-templates"
    if [[ -d $templates_src ]]; then
        say "Memasang templat dokumen DRP ke ${prefix%/}/share/pulih/drp-templates / Installing DR plan templates"
        while IFS= read -r -d '' f; do
            install_file "$f" "${prefix%/}/share/pulih/drp-templates/${f#"$templates_src"/}" 0644
        done < <(find "$templates_src" -type f -print0 | sort -z)
    fi
    if [[ -e $(at /var/lib/pulih/controller.toml) ]]; then
        say "Konfigurasi /var/lib/pulih/controller.toml sudah ada, tidak diubah / Configuration /var/lib/pulih/controller.toml exists, left unchanged"
    fi
fi

if ((agent)); then
    if ((staging)); then
        say "Melewati pembuatan pengguna pulih-agent karena --root (buat saat paket dipasang) / Skipping creation of user pulih-agent because of --root (create it when the package is installed)"
    elif getent passwd pulih-agent >/dev/null; then
        say "Pengguna pulih-agent sudah ada / User pulih-agent already exists"
    else
        say "Membuat pengguna sistem pulih-agent / Creating system user pulih-agent"
        command -v useradd >/dev/null || ((dry_run)) ||
            die "useradd tidak ditemukan; buat pengguna sistem pulih-agent secara manual / useradd not found; create the system user pulih-agent by hand"
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        run useradd --system --user-group --home-dir /var/lib/pulih-agent --no-create-home \
            --shell "$nologin" --comment "Pulih agent" pulih-agent
    fi
    make_dir /etc/pulih 0755
    # The service runs as pulih-agent; systemd (StateDirectory=) also hands
    # over files that `pulih-agent enroll` created as root.
    make_dir /var/lib/pulih-agent 0700 pulih-agent:pulih-agent
    say "Memasang unit pulih-agent.service / Installing unit pulih-agent.service"
    install_file "$script_dir/pulih-agent.service" /etc/systemd/system/pulih-agent.service 0644 1
    say "Memasang contoh /etc/pulih/agent.toml.example / Installing example /etc/pulih/agent.toml.example"
    install_file "$script_dir/agent.toml.example" /etc/pulih/agent.toml.example 0644
    if [[ -e $(at /etc/pulih/agent.toml) ]]; then
        say "Konfigurasi /etc/pulih/agent.toml sudah ada, tidak diubah / Configuration /etc/pulih/agent.toml exists, left unchanged"
    fi
    # The timer of earlier versions would run snapshots beside the daemon.
    if [[ -e $(at /etc/systemd/system/pulih-agent-snapshot.timer) ]]; then
        old_timer=1
        say "PERHATIAN: pulih-agent-snapshot.timer dari versi lama masih terpasang / NOTE: pulih-agent-snapshot.timer from an earlier version is still installed"
    fi
fi

if ((staging)); then
    say "Melewati systemctl daemon-reload karena --root / Skipping systemctl daemon-reload because of --root"
elif ! command -v systemctl >/dev/null || [[ ! -d /run/systemd/system ]]; then
    say "systemd tidak berjalan, daemon-reload dilewati / systemd is not running, skipping daemon-reload"
else
    say "Memuat ulang systemd / Reloading systemd"
    run systemctl daemon-reload
fi

# --- next steps ----------------------------------------------------------------

bin=$bin_target
old_timer=${old_timer:-0}
say ""
if ((dry_run)); then
    say "Uji coba selesai, tidak ada yang diubah / Dry run finished, nothing was changed"
else
    say "Selesai / Done"
fi
if ((controller)); then
    cat <<EOF

Langkah berikutnya di DRC (pengendali) / Next steps at the DRC (controller):
  1. Buat direktori data sebagai pengguna pulih / Create the data directory as user pulih:
       sudo -u pulih $bin/pulih-controller init --data-dir /var/lib/pulih --name <nama DNS / DNS name>
  2. Jalankan layanan / Start the service:
       systemctl enable --now pulih-controller
  3. Buat token pendaftaran untuk setiap agen / Create an enrollment token for each agent:
       sudo -u pulih $bin/pulih-controller enroll-agent <nama-agen / agent-name> --data-dir /var/lib/pulih
  Konfigurasi ada di /var/lib/pulih/controller.toml (contoh: /etc/pulih/controller.toml.example) / Configuration lives in /var/lib/pulih/controller.toml (example: /etc/pulih/controller.toml.example)
  Jalankan perintah admin sebagai pulih, bukan root / Run admin commands as pulih, not as root
  Buka port 7443/tcp hanya untuk jaringan agen / Open port 7443/tcp to the agents' networks only
  Saat memperbarui: systemctl restart pulih-controller / When upgrading: systemctl restart pulih-controller
EOF
fi
if ((agent)); then
    cat <<EOF

Langkah berikutnya di server utama (agen) / Next steps on the primary server (agent):
  1. Daftarkan agen dengan token dari koordinator DR (menulis /etc/pulih/agent.toml) / Enroll with the token from the DR coordinator (writes /etc/pulih/agent.toml):
       $bin/pulih-agent enroll --controller <host>:7443 --token <token> --fingerprint <sidik jari / fingerprint> --name <nama-agen / agent-name>
  2. Tambahkan tabel [[dataset]] ke /etc/pulih/agent.toml (lihat agent.toml.example) / Add [[dataset]] tables to /etc/pulih/agent.toml (see agent.toml.example)
     dengan schedule dan/atau continuous = true / with schedule and/or continuous = true
  3. Coba satu snapshot / Try one snapshot:
       $bin/pulih-agent snapshot --config /etc/pulih/agent.toml
  4. Jalankan layanan / Start the service:
       systemctl enable --now pulih-agent
  5. Periksa / Check:
       $bin/pulih-agent status --config /etc/pulih/agent.toml
       curl -s http://127.0.0.1:9464/metrics | grep pulih_agent_
  Setelah mengubah agent.toml / After editing agent.toml: systemctl reload pulih-agent
EOF
    if ((old_timer)); then
        cat <<EOF
  Hentikan dan hapus timer lama (layanan menggantikannya) / Stop and remove the old timer (the service replaces it):
       systemctl disable --now pulih-agent-snapshot.timer
       rm /etc/systemd/system/pulih-agent-snapshot.timer /etc/systemd/system/pulih-agent-snapshot.service
       systemctl daemon-reload
EOF
    fi
fi
