#!/usr/bin/env bash
# Install a headless browser for the interactive shell page test (tests/features/test_interactive_browser.py).
#
# Runs as root on a fresh Debian machine (no stdin, the Debian mirror reachable). Checks first, so running it
# again is cheap. Debian's `chromium` package: the test drives it over the DevTools protocol on loopback.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
log() { printf '[browser-setup %(%H:%M:%S)T] %s\n' -1 "$*"; }

[ "$(id -u)" -eq 0 ] || { log "ERROR: must run as root" >&2; exit 1; }

if command -v chromium >/dev/null 2>&1; then
    log "chromium present: $(chromium --version 2>/dev/null || echo unknown version)"
    exit 0
fi
log "installing chromium"
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
log "installed: $(chromium --version)"
