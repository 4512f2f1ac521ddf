#!/usr/bin/env bash
# The cost of --trace at batch 1: `rwkvpp bench` of a synthetic shape, alternating runs with
# tracing off and on, ms per decode step of each (docs/perf.md, "The cost of --trace").
# Usage: scripts/bench_trace_cost.sh [BUILD_DIR] [SHAPE] [ROUNDS] [GEN] [RANKS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"; shape="${2:-169m}"; rounds="${3:-5}"; gen="${4:-128}"; ranks="${5:-1}"
bin="$build/coordinator/rwkvpp"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
launch=()
if [[ "$ranks" -gt 1 ]]; then launch=(mpirun --allow-run-as-root --oversubscribe -np "$ranks"); fi
ms() { /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["decode"][0]["ms_per_step"])' "$1"; }
echo "round off_ms on_ms (b1 decode, $shape, $ranks rank(s), $gen tokens)"
for r in $(seq 1 "$rounds"); do
  "${launch[@]}" "$bin" bench --synthetic "$shape" --batch 1 --prompt 16 --gen "$gen" \
      -o "$tmp/off.json" >/dev/null 2>&1
  "${launch[@]}" "$bin" bench --synthetic "$shape" --batch 1 --prompt 16 --gen "$gen" \
      --trace "$tmp/t.json" -o "$tmp/on.json" >/dev/null 2>&1
  echo "$r $(ms "$tmp/off.json") $(ms "$tmp/on.json")"
done
