#!/usr/bin/env bash
# Prepare a Docker engine, a local registry and the offline test images for megalodon's docker tests.
#
# Runs as root on a fresh Debian machine (CI=true, no stdin, no internet except the Debian mirror).
# Every step checks first, so running it again is cheap and harmless.
#
# Environment knobs:
#   DOCKERD_LOG         dockerd log file (default /tmp/dockerd.log)
#   REGISTRY_ADDR       local registry listen address (default 127.0.0.1:5000)
#   REGISTRY_DIR        registry storage root (default /tmp/megalodon-registry)
#   REGISTRY_LOG        registry log file (default /tmp/docker-registry.log)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
REGISTRY_ADDR="${REGISTRY_ADDR:-127.0.0.1:5000}"
REGISTRY_DIR="${REGISTRY_DIR:-/tmp/megalodon-registry}"
REGISTRY_LOG="${REGISTRY_LOG:-/tmp/docker-registry.log}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUSYBOX_CONTEXT_SRC="$REPO_ROOT/tests/docker/images/busybox"
TEST_IMAGE="megalodon-test/busybox:latest"
REGISTRY_IMAGE="$REGISTRY_ADDR/megalodon-test/busybox:latest"

log() { printf '[docker-setup %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# --- 1. Debian packages ---------------------------------------------------------------------------
# docker.io gives dockerd (+ CLI), busybox-static the only binary our test image needs, docker-registry a
# registry that needs no image from the internet, zstd/lz4 for making compressed image tarballs by hand,
# libarchive-tools (bsdtar/bsdcat) for the 7z, rar and lzip mount formats (megalodon-features).
wanted=(docker.io busybox-static docker-registry zstd lz4 libarchive-tools)
missing=()
for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    # Only refresh indexes when they are absent or older than a day: the update is the slow part.
    lists=(/var/lib/apt/lists/*_Packages*)
    if [ ! -e "${lists[0]}" ] || [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin +1440 -print -quit)" ]; then
        apt-get update -qq
    fi
    # policy-rc.d 101 stops the packages' postinst from starting daemons we start ourselves below.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    fi
    if [ "$policy_created" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
else
    log "packages already installed"
fi

# --- 2. dockerd -----------------------------------------------------------------------------------
DOCKERD="$(command -v dockerd || true)"
[ -n "$DOCKERD" ] || die "dockerd not found after installing docker.io"
# The Debian CLI matches the Debian daemon; prefer it over any other docker binary earlier on PATH.
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER="$(command -v docker)"

wait_for_docker() {
    local deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
        # Give up early when the daemon we started has already died.
        if [ -n "${1:-}" ] && ! kill -0 "$1" 2>/dev/null; then return 1; fi
        sleep 0.5
    done
    return 1
}

if "$DOCKER" info >/dev/null 2>&1; then
    log "dockerd already running"
else
    log "starting dockerd (log: $DOCKERD_LOG)"
    # containerd is bundled as a dependency of docker.io; dockerd starts its own managed containerd.
    # setsid: the daemons must outlive this script (and a CI step's process group); env -C /: they must not
    # keep a checkout as their working directory (it may be a temporary clone that is deleted).
    env -C / setsid nohup "$DOCKERD" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    if ! wait_for_docker "$pid"; then
        # Some VMs lack the overlay module: retry once with the vfs driver, which works everywhere.
        log "dockerd did not come up with default settings; retrying with --storage-driver=vfs"
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -f /var/run/docker.pid
        env -C / setsid nohup "$DOCKERD" --storage-driver=vfs >>"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
        wait_for_docker "$pid" || { tail -n 40 "$DOCKERD_LOG" >&2; die "dockerd did not start within 60 s"; }
    fi
    log "dockerd is up (pid $pid)"
fi

# --- 3. local registry ----------------------------------------------------------------------------
if command -v curl >/dev/null 2>&1; then
    registry_up() { curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }
    registry_has_test_image() {
        curl -fsS -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            "http://$REGISTRY_ADDR/v2/megalodon-test/busybox/manifests/latest" 2>/dev/null
    }
else
    registry_up() { (exec 3<>"/dev/tcp/${REGISTRY_ADDR%:*}/${REGISTRY_ADDR##*:}") 2>/dev/null; }
    registry_has_test_image() { return 1; }  # pushing again is cheap and harmless
fi
if registry_up; then
    log "registry already listening on $REGISTRY_ADDR"
else
    mkdir -p "$REGISTRY_DIR"
    config="$REGISTRY_DIR/config.yml"
    # Same layout as Debian's /etc/docker/registry/config.yml, but loopback-only and storage under /tmp.
    cat >"$config" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
    log "starting docker-registry on $REGISTRY_ADDR (log: $REGISTRY_LOG)"
    env -C / setsid nohup /usr/bin/docker-registry serve "$config" >>"$REGISTRY_LOG" 2>&1 </dev/null &
    rpid=$!
    for _ in $(seq 1 60); do
        registry_up && break
        kill -0 "$rpid" 2>/dev/null || { tail -n 20 "$REGISTRY_LOG" >&2; die "docker-registry exited"; }
        sleep 0.25
    done
    registry_up || die "docker-registry not listening on $REGISTRY_ADDR after 15 s"
    log "registry is up (pid $rpid)"
fi

# --- 4. test images -------------------------------------------------------------------------------
BUSYBOX_BIN=/bin/busybox
[ -x "$BUSYBOX_BIN" ] || BUSYBOX_BIN="$(dpkg -L busybox-static | grep -m1 '/busybox$')"
# The image carries a hash of its build context, so editing the Dockerfile (or a busybox upgrade) rebuilds it.
context_hash="$(cat "$BUSYBOX_CONTEXT_SRC/Dockerfile" "$BUSYBOX_BIN" | sha256sum | cut -c1-16)"
built_hash="$("$DOCKER" image inspect --format '{{ index .Config.Labels "org.megalodon.context" }}' "$TEST_IMAGE" 2>/dev/null || true)"
rebuilt=0
if [ "$built_hash" = "$context_hash" ]; then
    log "$TEST_IMAGE already built"
else
    ctx="$(mktemp -d /tmp/megalodon-busybox-ctx.XXXXXX)"
    trap 'rm -rf "$ctx"' EXIT
    cp -a "$BUSYBOX_CONTEXT_SRC/." "$ctx/"
    cp "$BUSYBOX_BIN" "$ctx/busybox"
    chmod 0755 "$ctx/busybox"
    log "building $TEST_IMAGE"
    # The legacy builder needs no buildkit frontend image from the internet.
    DOCKER_BUILDKIT=0 "$DOCKER" build -q --label "org.megalodon.context=$context_hash" -t "$TEST_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
    trap - EXIT
    rebuilt=1
    old_id="$("$DOCKER" image inspect --format '{{.Id}}' "$REGISTRY_IMAGE" 2>/dev/null || true)"
fi
"$DOCKER" run --rm --network none "$TEST_IMAGE" sh -c 'echo busybox-ok' | grep -q busybox-ok \
    || die "$TEST_IMAGE does not run"

# Push when the image changed or the registry lacks it (a fresh /tmp or a re-created registry dir).
if [ "$rebuilt" -eq 0 ] && registry_has_test_image; then
    log "$REGISTRY_IMAGE already in the registry"
else
    log "pushing $REGISTRY_IMAGE"
    "$DOCKER" tag "$TEST_IMAGE" "$REGISTRY_IMAGE"
    "$DOCKER" push -q "$REGISTRY_IMAGE" >/dev/null
fi
# Drop the previous build (only that image: other dangling images on a dev machine are not ours).
if [ -n "${old_id:-}" ] && [ "$old_id" != "$("$DOCKER" image inspect --format '{{.Id}}' "$TEST_IMAGE")" ]; then
    "$DOCKER" rmi -f "$old_id" >/dev/null 2>&1 || true
fi
log "done"
