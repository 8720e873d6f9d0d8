#!/usr/bin/env bash
# Time from SIGTERM to exit of `aiop serve` while a long fine-tuning job runs (BENCHMARKS.md,
# daemon footprint). Usage: tests/bench/stop_during_finetune.sh [BINARY] [RUNS]
set -euo pipefail
bin=${1:-target/release/aiop}
runs=${2:-3}
labels=$(cd "$(dirname "$0")/../.." && pwd)/search_spaces/tnb101_macro/labels.csv
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
awk -F, 'NR==1{print "arch,value"} NR>1 && (NR-2)%160==0 && n<20 {print $1","$7; n++}' "$labels" > "$dir/l.csv"
printf 'name = "long"\nspace = "tnb101_macro"\nhead = "segmentsemantic"\nsamples = "l.csv"\n[finetune]\nepochs = 100000\nselect_epochs = false\n' > "$dir/l.toml"
for i in $(seq 1 "$runs"); do
  state="$dir/state$i"
  mkdir -p "$state/tasks"
  "$bin" serve --listen 127.0.0.1:0 --state "$state" 2> "$dir/serve$i.log" &
  pid=$!
  until [ -s "$state/aiop.addr" ]; do sleep 0.1; done
  cp "$dir/l.csv" "$dir/l.toml" "$state/tasks/"
  until grep -q 'fine-tuning started' "$dir/serve$i.log"; do sleep 0.1; done
  sleep 1
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  wait "$pid"
  t1=$(date +%s.%N)
  echo "run $i: exit $(echo "$t1 - $t0" | bc) s after SIGTERM"
done
