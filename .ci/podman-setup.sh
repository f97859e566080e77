#!/usr/bin/env bash
# Install podman and start its Docker-compatible API service for megalodon's podman test lane.
#
# Runs as root on a fresh Debian machine (CI=true, no stdin, no internet except the Debian mirror), after
# .ci/docker-setup.sh (which starts the local registry this lane pulls from).  Rootful podman; every file
# it uses lives under its own paths (config, storage, socket), so a podman installed for anything else on
# the machine, and the Docker engine next to it, are left as they are.  Every step checks first, so
# running it again is cheap and harmless.
#
# The VM runs no systemd and only cgroup v1, which decides three settings of containers.conf:
# cgroup_manager=cgroupfs (no systemd to ask for scopes), events_logger=file (no journald), and
# runtime=runc (Debian's crun is built for cgroup v2 first; runc is already installed with docker.io).
# Rootful podman gives containers RLIMIT_NOFILE/NPROC of 1048576/4194304, which only a process with
# CAP_SYS_RESOURCE can set above its own hard limit; this VM withholds that capability ("error setting
# rlimit type 7: operation not permitted"), so the defaults become this shell's hard limits (dockerd,
# started the same way, uses those too), nproc capped at 32768: podman lowers its own RLIMIT_NPROC to
# that at start, and its runtime cannot hand a container more than podman itself holds.
#
# Environment knobs:
#   PODMAN_SOCKET     socket of the API service (default /run/megalodon-podman/podman.sock)
#   PODMAN_ROOT       storage root (default /var/lib/megalodon-podman)
#   PODMAN_LOG        service log file (default /tmp/podman-service.log)
#   REGISTRY_ADDR     the local registry, configured as insecure (default 127.0.0.1:5000)
#   PODMAN_STORAGE_DRIVER  overlay (default) or vfs where the kernel has no overlay
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
PODMAN_SOCKET="${PODMAN_SOCKET:-/run/megalodon-podman/podman.sock}"
PODMAN_ROOT="${PODMAN_ROOT:-/var/lib/megalodon-podman}"
PODMAN_LOG="${PODMAN_LOG:-/tmp/podman-service.log}"
REGISTRY_ADDR="${REGISTRY_ADDR:-127.0.0.1:5000}"
PODMAN_STORAGE_DRIVER="${PODMAN_STORAGE_DRIVER:-overlay}"
CONF_DIR=/etc/megalodon-podman
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEST_IMAGE="megalodon-test/busybox:latest"

log() { printf '[podman-setup %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# --- 1. Debian packages ---------------------------------------------------------------------------
# netavark + aardvark-dns: the network stack podman 4 uses for bridge networks (the proxy's per-task
# network); catatonit: the init podman runs for --init; runc comes with docker.io; curl probes the API socket.
wanted=(podman netavark aardvark-dns catatonit runc curl)
missing=()
for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    lists=(/var/lib/apt/lists/*_Packages*)
    if [ ! -e "${lists[0]}" ] || [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin +1440 -print -quit)" ]; then
        apt-get update -qq
    fi
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    fi
else
    log "packages already installed"
fi

# --- 2. configuration (private to this service, through CONTAINERS_* variables) -------------------
mkdir -p "$CONF_DIR" "$PODMAN_ROOT" "$(dirname "$PODMAN_SOCKET")"
PIDFILE="$(dirname "$PODMAN_SOCKET")/service.pid"
conf_before="$(cat "$CONF_DIR"/*.conf 2>/dev/null | sha256sum)"
nofile="$(ulimit -Hn)"
nproc="$(ulimit -Hu)"
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
if [ "$nofile" = unlimited ]; then nofile=1048576; fi
cat >"$CONF_DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_ROOT/events.log"
runtime = "runc"
[network]
network_backend = "netavark"
network_config_dir = "$PODMAN_ROOT/networks"
CONF
cat >"$CONF_DIR/storage.conf" <<CONF
[storage]
driver = "$PODMAN_STORAGE_DRIVER"
graphroot = "$PODMAN_ROOT/storage"
runroot = "$(dirname "$PODMAN_SOCKET")/run"
CONF
# The local registry speaks plain HTTP on loopback: podman must be told, as dockerd knows 127.0.0.0/8.
cat >"$CONF_DIR/registries.conf" <<CONF
unqualified-search-registries = []
short-name-mode = "disabled"
[[registry]]
location = "$REGISTRY_ADDR"
insecure = true
CONF
conf_after="$(cat "$CONF_DIR"/*.conf | sha256sum)"
export CONTAINERS_CONF="$CONF_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$CONF_DIR/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$CONF_DIR/registries.conf"

# --- 3. the API service ---------------------------------------------------------------------------
api_up() { curl -fsS -o /dev/null --unix-socket "$PODMAN_SOCKET" http://d/_ping 2>/dev/null; }
# A service started with an older configuration is restarted (only the one this script started).
if [ "$conf_before" != "$conf_after" ] && [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    log "configuration changed: restarting the podman service (pid $(cat "$PIDFILE"))"
    kill "$(cat "$PIDFILE")"
    for _ in $(seq 1 40); do api_up || break; sleep 0.25; done
fi
if api_up; then
    log "podman service already listening on $PODMAN_SOCKET"
else
    rm -f "$PODMAN_SOCKET"
    log "starting podman system service on $PODMAN_SOCKET (log: $PODMAN_LOG)"
    # --time=0: never exit when idle.  setsid: the service must outlive this script.  env -C /: it must not keep
    # a checkout as its working directory (conmon fails every container once that directory is deleted).
    env -C / setsid nohup podman system service --time=0 "unix://$PODMAN_SOCKET" >>"$PODMAN_LOG" 2>&1 </dev/null &
    spid=$!
    echo "$spid" >"$PIDFILE"
    for _ in $(seq 1 120); do
        api_up && break
        kill -0 "$spid" 2>/dev/null || { tail -n 30 "$PODMAN_LOG" >&2; die "podman system service exited"; }
        sleep 0.25
    done
    api_up || { tail -n 30 "$PODMAN_LOG" >&2; die "podman service not answering on $PODMAN_SOCKET after 30 s"; }
    log "podman service is up (pid $spid)"
fi

# --- 4. the test image ----------------------------------------------------------------------------
# The same image the docker lane uses, copied from the Docker engine (built by docker-setup.sh).
docker_id="$(docker image inspect --format '{{.Id}}' "$TEST_IMAGE" 2>/dev/null || true)"
[ -n "$docker_id" ] || die "$TEST_IMAGE missing in the Docker engine; run .ci/docker-setup.sh first"
podman_label="$(podman image inspect --format '{{ index .Labels "org.megalodon.context" }}' "$TEST_IMAGE" 2>/dev/null || true)"
docker_label="$(docker image inspect --format '{{ index .Config.Labels "org.megalodon.context" }}' "$TEST_IMAGE")"
if [ -n "$podman_label" ] && [ "$podman_label" = "$docker_label" ]; then
    log "$TEST_IMAGE already in podman's storage"
else
    log "copying $TEST_IMAGE from the Docker engine"
    docker save "$TEST_IMAGE" | podman load -q >/dev/null
fi
podman run --rm --network none "$TEST_IMAGE" sh -c 'echo busybox-ok' | grep -q busybox-ok \
    || die "$TEST_IMAGE does not run under podman"
log "done (DOCKER_HOST=unix://$PODMAN_SOCKET)"
