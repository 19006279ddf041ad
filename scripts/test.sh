#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   scripts/test.sh [extra cargo test args]
# Brings up what the tests need (Chromium and the browser-test npm
# packages; RabbitMQ at $AMQP_URL, started locally when it is stopped;
# Redis on 127.0.0.1:6379 and redis-server for tests that start their own),
# runs every test, and stops whatever it started.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/browser.sh
source scripts/rabbitmq.sh
source scripts/redis.sh

# Stop, on any exit, the services this run started (and only those).
stop_started() {
  redis_stop_if_started
  rabbitmq_stop_if_started
}
trap stop_started EXIT

ensure_browser

cargo test --locked "$@"
