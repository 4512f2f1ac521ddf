#!/usr/bin/env bash
# On a GPU machine, from the repository root, over binaries staged by kernels/cuda/dev/
# stage_device.sh and scripts/gpu_stage.sh (carry=[".devshared"]): the batch-invariance checks
# and their cost (docs/perf.md). Runs the [cuda] tests (the invariant products and models among
# them), then `rwkvpp bench` of each SHAPE with the invariant products (RWKVPP_INVARIANT=1) and the
# fast ones (RWKVPP_INVARIANT=0) alternately, ROUNDS times, and prints the medians side by side.
# Usage: scripts/gpu_invariance.sh [--no-tests] SHAPE[:ARGS]...   (env ROUNDS, default 2;
# VARIANT="VAR=value ...": a third mode, the invariant products with that environment, e.g.
# VARIANT=RWKVPP_IMMA_TILE=128; AB=VAR: the switch compared instead of RWKVPP_INVARIANT, e.g.
# AB=RWKVPP_V7_FUSED for the fused RWKV-7 time mix against its plain ops; the columns then read
# "on" and "off" for VAR=1 and VAR=0; VARIANT_BIN=path: the third mode runs that binary with
# VAR=1, e.g. the build of an earlier commit)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-2}
AB=${AB:-RWKVPP_INVARIANT}
tests=1
[ "${1:-}" = --no-tests ] && { tests=0; shift; }
# shellcheck source=scripts/gpu_rwkvpp_env.sh
source scripts/gpu_rwkvpp_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ $tests = 1 ]; then
  mkdir -p /tmp/rwkvpp-lib && xz -dc "$D/lib.tar.xz" | tar -C /tmp/rwkvpp-lib -xf -
  export LD_LIBRARY_PATH=/tmp/rwkvpp-lib:$LD_LIBRARY_PATH RWKVPP_SHARED=$D
  chmod +x "$D/bin/rwkvpp_tests"
  timeout 300 "$D/bin/rwkvpp_tests" "[cuda]" --durations yes > "$OUT/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "invariant|FAILED|failed|passed|with expansion" -A1 "$OUT/tests.log" | grep -v "^--" | head -60
fi
for spec in "$@"; do
  shape=${spec%%:*}
  args=""
  [[ "$spec" == *:* ]] && args=${spec#*:}
  for r in $(seq 1 "$ROUNDS"); do
    third=${VARIANT:+v}
    [ -n "${VARIANT_BIN:-}" ] && third=v
    for mode in 1 0 $third; do
      f="$OUT/inv-$shape-$mode-$r.json"
      inv=$mode venv="" bin=$D/bin/rwkvpp
      [ "$mode" = v ] && inv=1 venv=${VARIANT:-} bin=${VARIANT_BIN:-$bin}
      # shellcheck disable=SC2086
      env "$AB=$inv" $venv timeout 280 "$bin" bench --synthetic "$shape" --device cuda $args \
        -o "$f" > "$f.log" 2>&1 || { echo "bench $shape mode $mode rc=$?"; tail -3 "$f.log"; }
    done
  done
  python3 - "$OUT" "$shape" "$ROUNDS" "$AB" <<'PY'
import json, sys, statistics as st
out, shape, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
on, off = ("invariant", "fast") if sys.argv[4] == "RWKVPP_INVARIANT" else ("on", "off")
runs = {m: [] for m in ("1", "0", "v")}
for m in runs:
    for r in range(1, rounds + 1):
        try: runs[m].append(json.load(open(f"{out}/inv-{shape}-{m}-{r}.json")))
        except Exception: pass
if not runs["1"] or not runs["0"]: sys.exit(print(shape, "missing runs"))
def med(m, key, sel):
    return st.median([sel(d) for d in runs[m]])
print(f"== {shape}: {sys.argv[4]} {on} vs {off} (median of {rounds}); floors {runs['0'][0]['floors']}")
for i, x in enumerate(runs["0"][0]["decode"]):
    inv = med("1", 0, lambda d: d["decode"][i]["ms_per_step"]); fast = med("0", 0, lambda d: d["decode"][i]["ms_per_step"])
    line = f"decode b{x['batch']:<4} {on} {inv:8.3f} ms  {off} {fast:8.3f} ms  cost {100*(inv/fast-1):+6.1f} %"
    if runs["v"]:
        v = med("v", 0, lambda d: d["decode"][i]["ms_per_step"]); line += f"  variant {v:8.3f} ms {100*(v/fast-1):+6.1f} %"
    print(line)
for i, x in enumerate(runs["0"][0]["prefill"]):
    inv = med("1", 0, lambda d: d["prefill"][i]["tokens_per_s"]); fast = med("0", 0, lambda d: d["prefill"][i]["tokens_per_s"])
    line = f"prefill {x['prompt']:<5} {on} {inv:9.0f} tok/s  {off} {fast:9.0f} tok/s  cost {100*(fast/inv-1):+6.1f} %"
    if runs["v"]:
        v = med("v", 0, lambda d: d["prefill"][i]["tokens_per_s"]); line += f"  variant {v:9.0f} tok/s {100*(fast/v-1):+6.1f} %"
    print(line)
PY
done
