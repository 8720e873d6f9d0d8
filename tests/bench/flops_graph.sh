#!/usr/bin/env bash
# A FLOP reduction over a free graph: a chain of N 3x3 convs (8 channels at 8x8, the shape the
# moves of a large graph take; N = 1600 by default), budget 5, the embedded predictor with the
# NB-201 CIFAR-10 statistics. Prints, per binary and run, the wall seconds and the peak
# resident memory (GNU time's %e and %M), then the medians and a digest of the results (the
# same for every binary when the search itself is unchanged) (BENCHMARKS.md, FLOP reduction
# over free graphs).
# Usage: tests/bench/flops_graph.sh [N] [RUNS] BINARY...
set -euo pipefail
n=${1:-1600}
runs=${2:-3}
shift 2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$n" > "$dir/chain.json" <<'PY'
import json, sys
n = int(sys.argv[1])
nodes = [{"id": "x", "op": "input", "out": [8, 8, 8]}]
prev = "x"
for i in range(n):
    nodes.append({"id": f"c{i}", "op": "conv", "inputs": [prev], "out": [8, 8, 8],
                  "kernel": 3, "padding": 1})
    prev = f"c{i}"
nodes.append({"id": "y", "op": "output", "inputs": [prev]})
print(json.dumps({"format": "aiop-graph", "version": 1, "nodes": nodes}))
PY
for bin in "$@"; do
  : > "$dir/times"
  for i in $(seq 1 "$runs"); do
    /usr/bin/time -f "%e %M" -o "$dir/t" "$bin" search --space nb201 --task cifar10 \
      --algorithm flops --start-graph "$dir/chain.json" --budget 5 -q --json "$dir/r.json" > /dev/null
    cat "$dir/t" >> "$dir/times"
    echo "$bin run $i: $(cat "$dir/t") (s, KB)"
  done
  sort -n -k1 "$dir/times" | awk -v b="$bin" '{s[NR]=$1} END {printf "%s median wall %s s\n", b, s[int((NR+1)/2)]}'
  sort -n -k2 "$dir/times" | awk -v b="$bin" '{m[NR]=$2} END {printf "%s median peak %.1f MB\n", b, m[int((NR+1)/2)]/1024}'
  python3 -c "import json,hashlib,sys; r=json.load(open(sys.argv[1]))['results']; print('results digest', hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16], len(r), 'results')" "$dir/r.json"
done
