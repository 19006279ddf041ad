#!/usr/bin/env bash
# Browser test prerequisites for herald: Debian's chromium + playwright-core.
#
# Source it and call the functions:
#   source scripts/browser.sh
#   ensure_browser                      # chromium + tests/browser/node_modules
#   HERALD_URL=http://127.0.0.1:PORT run_browser_tests [name-filter...]
# or run it directly:
#   scripts/browser.sh                  # same as ensure_browser
#   HERALD_URL=... scripts/browser.sh test [name-filter...]
#
# Safe under `set -euo pipefail`; when sourced it does not change the
# caller's shell options. Needs root (or sudo-less apt) only when chromium is
# missing. Playwright never downloads a browser here: run.mjs launches
# /usr/bin/chromium (override with CHROMIUM_PATH).

HERALD_BROWSER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
HERALD_CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"

_browser_log() { printf 'browser.sh: %s\n' "$*" >&2; }

_apt_install_chromium() {
  local log="$1"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    chromium >>"$log" 2>&1
}

ensure_chromium() {
  if [[ -x "$HERALD_CHROMIUM" ]]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _browser_log "$HERALD_CHROMIUM is missing and apt-get is not available"
    return 1
  fi
  local log
  log="$(mktemp "${TMPDIR:-/tmp}/herald-apt.XXXXXX")" || return 1
  _browser_log "installing chromium with apt-get (log: $log)"
  if ! _apt_install_chromium "$log"; then
    _browser_log "install failed; running apt-get update and retrying"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 && _apt_install_chromium "$log"; }; then
      _browser_log "could not install chromium; last lines of $log:"
      tail -n 20 "$log" >&2 || true
      return 1
    fi
  fi
  if [[ ! -x "$HERALD_CHROMIUM" ]]; then
    _browser_log "chromium installed but $HERALD_CHROMIUM is not executable"
    return 1
  fi
  rm -f "$log"
}

ensure_browser_node_modules() {
  local dir="$HERALD_BROWSER_DIR"
  if ! command -v npm >/dev/null 2>&1; then
    _browser_log "npm is not installed"
    return 1
  fi
  # npm writes node_modules/.package-lock.json on every install; it is older
  # than package-lock.json when the lock changed since the last install.
  local stamp="$dir/node_modules/.package-lock.json"
  if [[ -f "$stamp" && -d "$dir/node_modules/playwright-core" && ! "$dir/package-lock.json" -nt "$stamp" ]]; then
    return 0
  fi
  _browser_log "npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2 || {
    _browser_log "npm ci failed"
    return 1
  }
}

ensure_browser() {
  ensure_chromium || return 1
  ensure_browser_node_modules || return 1
}

run_browser_tests() {
  if [[ -z "${HERALD_URL:-}" ]]; then
    _browser_log "HERALD_URL is not set (e.g. http://127.0.0.1:PORT)"
    return 2
  fi
  node "$HERALD_BROWSER_DIR/run.mjs" "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-ensure}" in
    ensure) ensure_browser ;;
    test) shift; ensure_browser; run_browser_tests "$@" ;;
    *) echo "usage: $0 [ensure | test [name-filter...]]" >&2; exit 2 ;;
  esac
fi
