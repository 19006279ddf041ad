#!/usr/bin/env bash
# Rerun every benchmark of BENCHMARKS.md and keep the figures:
#   benches/run-all.sh            # 3 runs per case, pinned: server CPU 0, generator CPU 1
#   RUNS=1 benches/run-all.sh     # quicker look
# Builds herald (release) and the load generator, installs the ws peer's
# packages, runs each scenario (herald and, where it compares, the Node.js
# ws peer in the same run), then the criterion micro-benchmarks. Output:
# target/herald-bench/run-<time>/ (one .txt table and one .json per
# scenario, the machine's load before and after). Takes about 45 minutes;
# run it on a quiet machine: the figures are only as good as the quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-3}"
out="target/herald-bench/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

(cd benches/peer && npm ci --no-audit --no-fund --silent)
cargo build --release --locked --bin herald
cargo bench --locked --bench herald-bench --no-run

{ date -u; nproc; free -g | head -2; uptime; } >"$out/machine-start.txt"

bench() {
  local name="$1"
  shift
  echo "== $name (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  cargo bench --locked --bench herald-bench -- "$@" --runs "$runs" \
    --json "$out/$name.json" | tee "$out/$name.txt"
}

bench fanout fanout --peer --pin --deliveries 1000000
bench latency latency --peer --pin
bench idle-memory idle-memory --peer
bench replay replay --pin
bench reconnect-storm reconnect-storm --pin
bench slow-consumer slow-consumer --pin
bench ingest-http ingest --source http --peer --pin
bench e2e-http e2e --source http --peer --pin --events 100000
# Brokers for the Kafka and RabbitMQ legs and Redis for the store (each
# started when none answers, and stopped at exit if started here).
trap 'for f in kafka_stop_if_started rabbitmq_stop_if_started redis_stop_if_started; do if declare -F "$f" >/dev/null; then "$f"; fi; done' EXIT
source scripts/kafka.sh
source scripts/rabbitmq.sh
source scripts/redis.sh
bench e2e-kafka e2e --source kafka --peer --pin --events 100000
bench e2e-amqp e2e --source amqp --pin --events 100000
for store in memory disk redis; do
  bench "ingest-kafka-$store" ingest --source kafka --store "$store" --peer --pin
done
bench ingest-amqp ingest --source amqp --pin

cargo bench --locked --bench rules -- --warm-up-time 1 --measurement-time 3 | tee "$out/criterion-rules.txt"
cargo bench --locked --bench store -- --warm-up-time 1 --measurement-time 3 | tee "$out/criterion-store.txt"

uptime >"$out/machine-end.txt"
echo "figures in $out"
