#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   scripts/test.sh [extra cargo test args]
# Brings up what the tests need (Chromium and the browser-test npm
# packages; a Kafka-protocol broker at KAFKA_BOOTSTRAP, default
# 127.0.0.1:9092, started from the Tansu wheel when none answers), runs
# every test, and stops whatever it started.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/browser.sh
ensure_browser

# Exports KAFKA_BOOTSTRAP and TANSU_BIN (the outage tests start their own
# Tansu brokers with it).
source scripts/kafka.sh
trap kafka_stop_if_started EXIT

cargo test --locked "$@"
