#!/usr/bin/env bash
# On a GPU machine, from the repository root, over binaries staged by scripts/gpu_stage.sh
# (carry=[".devshared"]): `rwkvpp bench` of each SHAPE with several binaries (builds of other
# commits), alternately, ROUNDS times, and the medians side by side, each against the first
# (+x %: that much slower than the first, in time per step or per prompt token).
# Usage: BINS="new=.devshared/bin/rwkvpp old=.devshared/bin/rwkvpp_old" scripts/gpu_compare.sh
#        SHAPE[:ARGS]...   (env ROUNDS, default 2; ENV="VAR=value ...", the environment of every
#        run; a name may carry its own: BINS="plain=.devshared/bin/rwkvpp@RWKVPP_V7_FUSED=0")
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-2}
# shellcheck source=scripts/gpu_rwkvpp_env.sh
source scripts/gpu_rwkvpp_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
names=()
for b in ${BINS:?BINS=\"name=path ...\"}; do
  names+=("${b%%=*}")
  chmod +x "$(printf '%s' "${b#*=}" | cut -d@ -f1)"
done
for spec in "$@"; do
  shape=${spec%%:*}
  args=""
  [[ "$spec" == *:* ]] && args=${spec#*:}
  for r in $(seq 1 "$ROUNDS"); do
    for b in $BINS; do
      name=${b%%=*} rest=${b#*=}
      bin=${rest%%@*} own=""
      [[ "$rest" == *@* ]] && own=${rest#*@}
      f="$OUT/cmp-$shape-$name-$r.json"
      # shellcheck disable=SC2086
      env ${ENV:-} $own timeout 280 "$bin" bench --synthetic "$shape" --device cuda $args -o "$f" \
        > "$f.log" 2>&1 || { echo "bench $shape $name rc=$?"; tail -3 "$f.log"; }
    done
  done
  python3 - "$OUT" "$shape" "$ROUNDS" "${names[@]}" <<'PY'
import json, sys, statistics as st
out, shape, rounds, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
runs = {}
for n in names:
    runs[n] = []
    for r in range(1, rounds + 1):
        try: runs[n].append(json.load(open(f"{out}/cmp-{shape}-{n}-{r}.json")))
        except Exception: pass
if any(not v for v in runs.values()): sys.exit(print(shape, "missing runs"))
base = names[0]
print(f"== {shape} (median of {rounds}); floors of {base}: {runs[base][0]['floors']}")
def row(label, key, sel, unit, higher):
    vals = [st.median([sel(d) for d in runs[n]]) for n in names]
    cells = [f"{n} {v:9.3f} {unit}" if unit == "ms" else f"{n} {v:9.0f} {unit}" for n, v in zip(names, vals)]
    rel = [f"{n} {100 * ((vals[0] / v if higher else v / vals[0]) - 1):+5.1f} %" for n, v in zip(names[1:], vals[1:])]
    print(f"{label:<13}" + "  ".join(cells) + ("   vs " + base + ": " + ", ".join(rel) if rel else ""))
for i, x in enumerate(runs[base][0]["decode"]):
    row(f"decode b{x['batch']}", i, lambda d: d["decode"][i]["ms_per_step"], "ms", False)
for i, x in enumerate(runs[base][0]["prefill"]):
    row(f"prefill {x['prompt']}", i, lambda d: d["prefill"][i]["tokens_per_s"], "tok/s", True)
PY
done
