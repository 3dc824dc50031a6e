#!/usr/bin/env bash
# Real OCI containers on the project's machines with Debian's podman (no Docker engine, no
# container registry). Every subcommand is idempotent and safe to run concurrently.
#
#   scripts/containers.sh install          apt-get install podman buildah runc debootstrap catatonit iptables
#   scripts/containers.sh conf             print `export CONTAINERS_CONF=...` (runc, cgroupfs, ulimits)
#   scripts/containers.sh base SUITE       debootstrap SUITE (bookworm|trixie) -> localhost/debian:SUITE
#   scripts/containers.sh python SUITE     localhost/debian:SUITE + Debian's python3 -> localhost/python3:SUITE
#   scripts/containers.sh socket           start the Docker-compatible API socket; prints the DOCKER_HOST
#   scripts/containers.sh stop-socket      stop the socket service this script started
#   scripts/containers.sh podman ARGS...   run podman with the project's configuration
#
# Typical use (testcontainers, the Docker SDK):
#   eval "$(scripts/containers.sh conf)"
#   export DOCKER_HOST="$(scripts/containers.sh socket)" TESTCONTAINERS_RYUK_DISABLED=true
#
# Diagnostics go to stderr; stdout carries only what a caller captures (the DOCKER_HOST, the
# export line, an image name).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
STATE_DIR="${LLM_STREAM_CONTAINERS_STATE:-/tmp/llm-stream-containers}"
SOCKET_PATH="${LLM_STREAM_PODMAN_SOCKET:-/tmp/llm-stream-podman.sock}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# catatonit: the init of pods' infra containers; iptables: netavark's bridge networks.
PACKAGES=(podman buildah runc debootstrap catatonit iptables)

say() { printf 'containers.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# One holder at a time per name (two engineers or two test sessions may call `base` at once).
locked() {
    local name=$1; shift
    mkdir -p "$STATE_DIR"
    exec {lock_fd}>"$STATE_DIR/$name.lock"
    flock "$lock_fd"
    "$@"
    flock -u "$lock_fd"
}

need_podman() {
    command -v podman >/dev/null 2>&1 && return 0
    die "podman is not installed. Run \`scripts/containers.sh install\` (needs root and the Debian \
package mirror), or install podman, buildah and runc with your package manager."
}

need_network() {
    # $1: a URL the step needs, $2: what fails without it.
    if ! python3 - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=15).close()
EOF
    then
        die "cannot reach $1: $2 needs the network (Debian's mirror; set DEBIAN_MIRROR to use another)."
    fi
}

cmd_install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "${PACKAGES[*]} are installed"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${missing[*]} with this system's package manager."
    [ "$(id -u)" -eq 0 ] || die "installing ${missing[*]} needs root: sudo $0 install"
    say "installing ${missing[*]}"
    # apt-get update once per machine boot (the lists are reused by later installs).
    if [ ! -e "$STATE_DIR/apt-updated" ]; then
        apt-get update -qq >&2 || die "apt-get update failed: no network to the Debian mirror? \
Install ${missing[*]} by other means, then run this again."
        mkdir -p "$STATE_DIR" && touch "$STATE_DIR/apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" uidmap slirp4netns netavark aardvark-dns fuse-overlayfs >&2 \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed (see above)."
}

cmd_conf() {
    [ -r "$CONTAINERS_CONF" ] || die "$CONTAINERS_CONF is missing"
    if command -v podman >/dev/null 2>&1; then
        podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' >/dev/null 2>&1 \
            || die "podman rejects $CONTAINERS_CONF: run \`CONTAINERS_CONF=$CONTAINERS_CONF podman info\` to see why"
    fi
    printf 'export CONTAINERS_CONF=%q\n' "$CONTAINERS_CONF"
}

check_suite() {
    case "${1:-}" in
        bookworm | trixie) ;;
        "") die "which Debian suite? \`$0 base bookworm\` or \`$0 base trixie\`" ;;
        *) die "unsupported suite '$1': use bookworm or trixie" ;;
    esac
}

make_base() {
    local suite=$1 image="localhost/debian:$1"
    if podman image exists "$image"; then
        say "$image is present"
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: run \`$0 install\`"
    need_network "$DEBIAN_MIRROR/dists/$suite/Release" "debootstrap $suite"
    local rootfs
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/llm-stream-rootfs-$suite.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs'" EXIT
    say "debootstrap --variant=minbase $suite (about a minute)"
    debootstrap --variant=minbase "$suite" "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 || {
        tail -n 20 "$rootfs.log" >&2
        die "debootstrap $suite failed (log above; full log in $rootfs.log)"
    }
    # Small, like Debian's slim images: no package lists, caches, documentation or translations
    # in the base layer, and dpkg told to leave them out of every later install too.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
    tar -C "$rootfs" --numeric-owner -c . \
        | podman import --change 'CMD ["/bin/bash"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            - "$image" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
    trap - EXIT
    say "made $image"
}

cmd_base() {
    check_suite "${1:-}"
    need_podman
    locked "base-$1" make_base "$1"
    echo "localhost/debian:$1"
}

make_python() {
    local suite=$1 image="localhost/python3:$1"
    if podman image exists "$image"; then
        say "$image is present"
        return 0
    fi
    need_network "$DEBIAN_MIRROR/dists/$suite/Release" "apt-get install python3"
    say "building $image (Debian's python3 on localhost/debian:$suite)"
    # python3-venv brings ensurepip, so an image's build stage can make a venv and pip-install uv.
    podman build --network host --tag "$image" - >&2 <<EOF || die "building $image failed (see above)"
FROM localhost/debian:$suite
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
EOF
}

cmd_python() {
    check_suite "${1:-}"
    need_podman
    cmd_base "$1" >/dev/null
    locked "python-$1" make_python "$1"
    echo "localhost/python3:$1"
}

socket_answers() {
    [ -S "$SOCKET_PATH" ] && python3 - "$SOCKET_PATH" <<'EOF' >/dev/null 2>&1
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
sys.exit(0 if data.split(b"\r\n", 1)[0].split()[1] == b"200" else 1)
EOF
}

# A service started from a checkout that is gone since (a CI clone, a deleted work tree) still
# answers, but every container it starts fails ("write child: broken pipe": conmon cannot find
# its working directory, nor the engine its CONTAINERS_CONF): such a service is replaced.
socket_stale() {
    local pidfile="$STATE_DIR/socket.pid" pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || return 1
    case "$(readlink "/proc/$pid/cwd")" in *" (deleted)") return 0 ;; esac
    local conf
    conf=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^CONTAINERS_CONF=//p')
    [ -z "$conf" ] || [ -f "$conf" ] || return 0
    return 1
}

start_socket() {
    if socket_stale; then
        say "the podman socket service was started from a checkout that is gone; restarting it"
        cmd_stop_socket
        sleep 0.5
    fi
    if socket_answers; then
        return 0
    fi
    rm -f "$SOCKET_PATH"
    mkdir -p "$STATE_DIR"
    # Its own copy of the configuration, and / as its directory: the service outlives this
    # checkout.
    cp "$CONTAINERS_CONF" "$STATE_DIR/containers.conf"
    say "starting podman system service on unix://$SOCKET_PATH (log: $STATE_DIR/socket.log)"
    CONTAINERS_CONF="$STATE_DIR/containers.conf" setsid env -C / podman system service --time=0 \
        "unix://$SOCKET_PATH" >"$STATE_DIR/socket.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/socket.pid"
    for _ in $(seq 1 100); do
        socket_answers && return 0
        kill -0 "$(cat "$STATE_DIR/socket.pid")" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$STATE_DIR/socket.log" >&2 || true
    die "podman system service did not answer on $SOCKET_PATH (log above)"
}

cmd_socket() {
    need_podman
    locked socket start_socket
    echo "unix://$SOCKET_PATH"
}

cmd_stop_socket() {
    local pidfile="$STATE_DIR/socket.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill "$(cat "$pidfile")"
        say "stopped the podman socket service (pid $(cat "$pidfile"))"
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    install) cmd_install ;;
    conf) cmd_conf ;;
    base) cmd_base "${2:-}" ;;
    python) cmd_python "${2:-}" ;;
    socket) cmd_socket ;;
    stop-socket) cmd_stop_socket ;;
    podman) shift; need_podman; exec podman "$@" ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
