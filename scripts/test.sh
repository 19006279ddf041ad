#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   scripts/test.sh [extra cargo test args]
# Brings up what the tests need (Chromium and the browser-test npm
# packages, the benchmark peer's npm packages), runs every test, then the
# load generator's smoke test, and stops whatever it started.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/browser.sh
ensure_browser

cargo test --locked "$@"

# The load generator at small scale against the debug build: every scenario,
# herald and the Node.js ws peer, correctness only (no timing assertion).
# The dev profile reuses what `cargo test` just built.
(cd benches/peer && npm ci --no-audit --no-fund --silent)
cargo bench --locked --profile dev --bench herald-bench -- all --quick --peer \
  --herald "${CARGO_TARGET_DIR:-target}/debug/herald"
