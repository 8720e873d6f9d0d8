#!/usr/bin/env bash
# How far a long search gets, and how big the store grows, in its first SECONDS (BENCHMARKS.md,
# throughput of evolution): a fresh `aiop serve` is given a zero-shot DARTS task (the first 20
# networks of the shipped table, budget 1,000,000 evaluations) through its watched folder; after
# SECONDS of searching it prints the store's size, the generations counted by the metrics and
# the search's record. Settings come from the environment (e.g. AIOP_CHECKPOINT_INTERVAL_MS=0).
# Usage: tests/bench/daemon_growth.sh [BINARY] [SECONDS]
set -euo pipefail
. "$(dirname "$0")/serve.sh"
bin=$(realpath "${1:-target/release/aiop}")
secs=${2:-120}
labels=$(cd "$(dirname "$0")/../.." && pwd)/search_spaces/darts/labels.csv
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
state="$dir/state"
mkdir -p "$state/tasks" "$dir/stage"
head -21 "$labels" | sed '1s/.*/arch,value/' > "$dir/stage/d.csv"
printf 'name = "darts-zs"\nspace = "darts"\nhead = "cifar10"\nsamples = "d.csv"\nmode = "zero-shot"\n[search]\nbudget = 1000000\n' > "$dir/stage/d.toml"
start_serve "$bin" "$dir" "$state" "$dir/serve.log"
cp "$dir/stage/d.csv" "$dir/stage/d.toml" "$state/tasks/"
until "$bin" searches --state "$state" 2>/dev/null | grep -q running; do sleep 0.2; done
sleep "$secs"
gens=$(curl -s "http://$(cat "$state/aiop.addr")/metrics" | sed -n 's/^aiop_search_generations_total //p')
rec=$("$bin" searches --state "$state" | tail -1 | tr -s ' ')
echo "after $secs s: store $(du -sk "$state/db" | cut -f1) KiB, $gens generations; record:$rec"
kill -TERM "$pid"
wait "$pid"
