#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   scripts/test.sh [extra cargo test args]
# Brings up what the tests need (Chromium and the browser-test npm
# packages), runs every test, and stops whatever it started.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/browser.sh
ensure_browser

cargo test --locked "$@"
