#!/usr/bin/env bash
# RabbitMQ for herald's tests.
#
#   source scripts/rabbitmq.sh   # ensures a broker, exports AMQP_URL;
#                                # then e.g. `trap rabbitmq_stop_if_started EXIT`
#   scripts/rabbitmq.sh start|stop|status
#
# AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f): if a broker
# already answers there it is used as is. Otherwise, when the URL names this
# machine and RabbitMQ is installed (the rabbitmq-server package), the local
# node is started with `rabbitmq-server -detached` and waited for (the node,
# then the AMQP port); rabbitmq_stop_if_started stops it again. The tests
# also run `rabbitmqctl` (override with RABBITMQCTL, e.g.
# "docker exec rabbitmq rabbitmqctl"); without root it is run with `sudo -n`.

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
RABBITMQ_STARTED="${RABBITMQ_STARTED:-}"
RABBITMQ_WAIT_SECS="${RABBITMQ_WAIT_SECS:-90}"

_rabbitmq_sudo=""
if [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  _rabbitmq_sudo="sudo -n"
fi
export RABBITMQCTL="${RABBITMQCTL:-${_rabbitmq_sudo:+$_rabbitmq_sudo }rabbitmqctl}"

# "host port" of $AMQP_URL.
_rabbitmq_hostport() {
  "${PYTHON:-python3}" - "$AMQP_URL" <<'EOF'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(u.hostname or "localhost", u.port or (5671 if u.scheme == "amqps" else 5672))
EOF
}

# True when an AMQP 0-9-1 broker answers at host $1, port $2 (it replies to
# the protocol header with a method frame: connection.start).
rabbitmq_probe() {
  "${PYTHON:-python3}" - "$1" "$2" <<'EOF' 2>/dev/null
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
    s.settimeout(2)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) == b"\x01" else 1)
EOF
}

rabbitmq_start() {
  local host port deadline
  read -r host port < <(_rabbitmq_hostport) || { echo "rabbitmq.sh: cannot parse AMQP_URL" >&2; return 1; }
  if rabbitmq_probe "$host" "$port"; then return 0; fi
  case "$host" in
    127.0.0.1|localhost|::1) ;;
    *) echo "rabbitmq.sh: no AMQP broker answers at $host:$port (AMQP_URL)" >&2; return 1 ;;
  esac
  if ! command -v rabbitmq-server >/dev/null; then
    echo "rabbitmq.sh: no broker at $host:$port and rabbitmq-server is not installed;" \
      "install RabbitMQ or point AMQP_URL at one" >&2
    return 1
  fi
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    echo "rabbitmq.sh: $host:$port is taken by something that is not an AMQP broker" >&2
    return 1
  fi
  echo "rabbitmq.sh: starting the local RabbitMQ node" >&2
  $_rabbitmq_sudo rabbitmq-server -detached >&2 || return 1
  RABBITMQ_STARTED=1
  deadline=$((SECONDS + RABBITMQ_WAIT_SECS))
  until $RABBITMQCTL -q await_startup >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "rabbitmq.sh: the node did not start within ${RABBITMQ_WAIT_SECS} s" >&2
      return 1
    fi
    sleep 1
  done
  until rabbitmq_probe "$host" "$port"; do
    if ((SECONDS >= deadline)); then
      echo "rabbitmq.sh: the node runs but $host:$port does not answer AMQP" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "rabbitmq.sh: RabbitMQ ready on $host:$port" >&2
}

# Stops the node only if this shell started it (the sourced case).
rabbitmq_stop_if_started() {
  if [[ -n "$RABBITMQ_STARTED" ]]; then
    $RABBITMQCTL -q stop >/dev/null 2>&1 || true
    RABBITMQ_STARTED=""
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    start) rabbitmq_start ;;
    stop) $RABBITMQCTL -q stop ;;
    status)
      read -r host port < <(_rabbitmq_hostport)
      if rabbitmq_probe "$host" "$port"; then echo "up: $host:$port"; else echo "down: $host:$port"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status   (or: source $0)" >&2; exit 2 ;;
  esac
else
  rabbitmq_start
fi
