#!/usr/bin/env bash
# A search that exhausts NB-201 in a fresh `aiop serve` (base model, CIFAR-10, budget 200,000:
# it stops as stalled near 15,600 networks): wall time from submission to done, and the store's
# size on disk (BENCHMARKS.md, throughput of evolution). A smaller BUDGET measures the store's
# growth per evaluation (docs/daemon.md, Footprint): each run also prints the store per
# evaluation (KB = 1000 bytes, the empty store's share included; compare two budgets for the
# growth alone). Each run prints its record's
# evaluations, generations, why it ended and a digest of its results. The daemon's settings
# come from the environment (AIOP_CHECKPOINT_INTERVAL_MS=0: a checkpoint every generation), never
# from a config/aiop.toml (it runs in a temporary folder). With COMPACT=1 each run then also
# exports the store, imports it into a fresh state and compacts it, printing the sizes
# (BENCHMARKS.md, store compaction).
# Usage: [COMPACT=1] tests/bench/daemon_search.sh [BINARY] [RUNS] [BUDGET]
set -euo pipefail
. "$(dirname "$0")/serve.sh"
bin=$(realpath "${1:-target/release/aiop}")
runs=${2:-3}
budget=${3:-200000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "{\"task\": \"cifar10\", \"space\": \"nb201\", \"budget\": $budget, \"seed\": 0}" > "$dir/body.json"
for i in $(seq 1 "$runs"); do
  state="$dir/state$i"
  mkdir -p "$state/tasks"
  start_serve "$bin" "$dir" "$state" "$dir/serve$i.log"
  t0=$(date +%s.%N)
  id=$("$bin" submit "$dir/body.json" --state "$state" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)
  until "$bin" searches "$id" --state "$state" --json > "$dir/rec.json" 2>/dev/null \
      && grep -Eq '"status": *"(done|failed|cancelled)"' "$dir/rec.json"; do
    sleep 0.5
  done
  t1=$(date +%s.%N)
  kill -TERM "$pid"
  wait "$pid"
  rec=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); import hashlib; print(r["status"], "evaluations", r["evaluations"], "generations", r["generation"], "ended_because", r["ended_because"], "results", hashlib.sha256(json.dumps(r["results"], sort_keys=True).encode()).hexdigest()[:12])' "$dir/rec.json")
  store=$(du -sk "$state/db" | cut -f1)
  evals=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["evaluations"])' "$dir/rec.json")
  per=$(python3 -c 'import sys; print(f"{int(sys.argv[1]) * 1.024 / max(int(sys.argv[2]), 1):.2f}")' "$store" "$evals")
  echo "run $i: $(echo "$t1 - $t0" | bc) s, store $store KiB ($per KB/evaluation), $rec"
  if [ "${COMPACT:-0}" = 1 ]; then
    "$bin" store export --state "$state" > "$dir/export$i.jsonl"
    "$bin" store import --state "$dir/imported$i" "$dir/export$i.jsonl" 2> /dev/null
    echo "  imported: $(du -sk "$dir/imported$i/db" | cut -f1) KiB; $("$bin" store compact --state "$state")"
  fi
done
