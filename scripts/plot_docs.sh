#!/usr/bin/env bash
# Regenerates docs/plots/: a `rwkvpp bench` of the synthetic 169m shape on this machine's CPU
# (one rank: batch sweep and contexts) and a 2-rank pipeline bench (per-stage compute and
# wait), their JSON, and the PNG plots scripts/plot.py makes from them.
# Usage: scripts/plot_docs.sh [BUILD_DIR]   (needs mpirun and python3-matplotlib: scripts/deps.sh --plots)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
bin="$build/coordinator/rwkvpp"
out="$root/docs/plots"
mkdir -p "$out"
"$bin" bench --synthetic 169m --batch 1,2,4,8,16,32 --prompt 128 --gen 16 --context 128,1024,8192 \
    -o "$out/bench-169m-cpu.json" >/dev/null
mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" bench --synthetic 169m --batch 1,8 --prompt 128 --gen 16 \
    -o "$out/bench-169m-cpu-2stages.json" >/dev/null
/usr/bin/python3 "$root/scripts/plot.py" --out "$out" "$out/bench-169m-cpu.json" "$out/bench-169m-cpu-2stages.json"
