#!/usr/bin/env bash
# Redis for herald's tests: the shared server on 127.0.0.1:6379 (nothing kept
# on disk), and redis-server on PATH for the tests that start their own.
#
#   source scripts/redis.sh     # ensures both; then e.g.
#                               # `trap redis_stop_if_started EXIT`
#   scripts/redis.sh start|stop|status
#
# If something already answers PING on 127.0.0.1:6379 it is used as is.
# Otherwise redis-server (installed with apt-get when missing) is started
# there, daemonized, without persistence; only a server this script
# started is stopped.

REDIS_PORT=6379
REDIS_STARTED=""

_redis_log() { printf 'redis.sh: %s\n' "$*" >&2; }

redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
  else
    # bash alone: one PING in RESP.
    (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}

ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _redis_log "redis-server is missing and apt-get is not available"
    return 1
  fi
  local log
  log="$(mktemp "${TMPDIR:-/tmp}/herald-apt.XXXXXX")" || return 1
  _redis_log "installing redis-server with apt-get (log: $log)"
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 redis-server)
  if ! "${install[@]}" >>"$log" 2>&1; then
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 && "${install[@]}" >>"$log" 2>&1; }; then
      _redis_log "could not install redis-server; last lines of $log:"
      tail -n 20 "$log" >&2 || true
      return 1
    fi
  fi
  rm -f "$log"
}

redis_start() {
  ensure_redis_server || return 1
  if redis_ping; then return 0; fi
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir "${TMPDIR:-/tmp}" \
    --pidfile "${TMPDIR:-/tmp}/herald-test-redis.pid" >/dev/null || return 1
  for _ in {1..100}; do
    if redis_ping; then
      REDIS_STARTED=1
      _redis_log "redis-server started on 127.0.0.1:$REDIS_PORT"
      return 0
    fi
    sleep 0.1
  done
  _redis_log "redis-server did not answer on 127.0.0.1:$REDIS_PORT"
  return 1
}

_redis_shutdown() {
  local pidfile="${TMPDIR:-/tmp}/herald-test-redis.pid" pid
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [[ -n "$pid" && "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *redis-server* ]]; then
    kill "$pid" 2>/dev/null || true
    for _ in {1..50}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
}

# Stops the server only if this shell started it.
redis_stop_if_started() {
  if [[ -n "$REDIS_STARTED" ]]; then _redis_shutdown; REDIS_STARTED=""; fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    start) redis_start ;;
    stop) _redis_shutdown ;;
    status) if redis_ping; then echo "up: 127.0.0.1:$REDIS_PORT"; else echo "down: 127.0.0.1:$REDIS_PORT"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status   (or: source $0)" >&2; exit 2 ;;
  esac
else
  redis_start
fi
