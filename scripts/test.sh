#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   scripts/test.sh [extra cargo test args]
# Brings up what the tests need (Chromium and the browser-test npm
# packages; RabbitMQ at $AMQP_URL, started locally when it is stopped),
# runs every test, and stops whatever it started.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/browser.sh
ensure_browser

source scripts/rabbitmq.sh
trap rabbitmq_stop_if_started EXIT

cargo test --locked "$@"
