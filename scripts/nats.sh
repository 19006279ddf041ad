#!/usr/bin/env bash
# nats-server for herald's tests: the NATS tests start their own servers
# (with JetStream, on random ports and their own store directories), so
# this only makes sure the binary is there: Debian's package installs it as
# /usr/sbin/nats-server, which the tests look for (or set NATS_SERVER).
#
#   source scripts/nats.sh     # installs nats-server with apt-get when missing
#   scripts/nats.sh            # the same

_nats_log() { printf 'nats.sh: %s\n' "$*" >&2; }

ensure_nats_server() {
  if [[ -n "${NATS_SERVER:-}" && -x "${NATS_SERVER}" ]] \
    || [[ -x /usr/sbin/nats-server ]] || command -v nats-server >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _nats_log "nats-server is missing and apt-get is not available (set NATS_SERVER)"
    return 1
  fi
  local log
  log="$(mktemp "${TMPDIR:-/tmp}/herald-apt.XXXXXX")" || return 1
  _nats_log "installing nats-server with apt-get (log: $log)"
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 nats-server)
  if ! "${install[@]}" >>"$log" 2>&1; then
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 && "${install[@]}" >>"$log" 2>&1; }; then
      _nats_log "could not install nats-server; last lines of $log:"
      tail -n 20 "$log" >&2 || true
      return 1
    fi
  fi
  rm -f "$log"
}

ensure_nats_server
