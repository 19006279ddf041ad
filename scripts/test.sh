#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   scripts/test.sh [extra cargo test args]
# Brings up what the tests need — Chromium and the browser-test npm
# packages; RabbitMQ at $AMQP_URL (started locally when it is stopped);
# Redis on 127.0.0.1:6379 (and redis-server for tests that start their
# own); nats-server (the NATS tests start their own, with JetStream); a Kafka-protocol broker at $KAFKA_BOOTSTRAP (default 127.0.0.1:9092,
# started from the Tansu wheel when none answers); the benchmark peer's npm
# packages — runs the browser client's unit tests and build check, every
# cargo test, then the load generator's smoke test, and
# stops whatever it started.
set -euo pipefail
cd "$(dirname "$0")/.."

# Stop, on any exit, the services this run started (and only those).
stop_started() {
  local stop
  for stop in kafka_stop_if_started redis_stop_if_started rabbitmq_stop_if_started; do
    if declare -F "$stop" >/dev/null; then "$stop"; fi
  done
}
trap stop_started EXIT

# A C toolchain and OpenSSL's headers for the bundled librdkafka.
scripts/build-deps.sh
# Each script starts its service when sourced.
source scripts/browser.sh
ensure_browser
source scripts/rabbitmq.sh
source scripts/redis.sh
source scripts/nats.sh
# Exports KAFKA_BOOTSTRAP and TANSU_BIN (the outage tests start their own
# Tansu brokers with it).
source scripts/kafka.sh

# The browser client (clients/js): its unit tests (node's test runner),
# then the committed build served at /client.js against a fresh build, and
# its size against the budget.
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run check)

cargo test --locked --no-fail-fast "$@"

# The load generator at small scale against the debug build: every scenario,
# herald and the Node.js ws peer, correctness only (no timing assertion).
# The dev profile reuses what `cargo test` just built.
if [[ ! -d benches/peer/node_modules/ws || benches/peer/package-lock.json -nt benches/peer/node_modules/.package-lock.json ]]; then
  (cd benches/peer && npm ci --no-audit --no-fund --silent)
fi
cargo bench --locked --profile dev --bench herald-bench -- all --quick --peer \
  --herald "${CARGO_TARGET_DIR:-target}/debug/herald"
