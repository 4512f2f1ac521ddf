#!/usr/bin/env bash
# On a GPU machine with several GPUs, from the repository root, over the binary and Open MPI
# runtime staged as for scripts/gpu_scaling.sh: the added latency per stage hop at batch 1, the
# way docs/perf.md measures it (fifth session): runs at 1 rank and at each NP alternate for
# ROUNDS rounds, so that a machine's drift shows in every configuration alike, and the figure
# is the median over rounds of (T_np - T_1) / (np - 1). One run alone moves by up to ~40 us.
# HOP_CONFIGS="name:VAR=value,VAR=value other:..." runs 1 rank and each NP once per
# configuration (the variables set for those runs only; RWKVPP=path picks another binary),
# alternating within each round; each configuration's hop is against its own 1-rank runs. By
# default one configuration, "default".
# With RWKVPP_DEVICE_TIMES=1 set, also the same with each run's own layers' device time per
# decode step taken out (so that a process's compute speed does not count as hop time).
# Usage: [HOP_CONFIGS=...] [GEN=512] scripts/gpu_hop.sh SHAPE ROUNDS NP...   e.g. 1.5b 6 2 4
set -u
OUT=${OUT:-/tmp/out}
shape=$1
rounds=$2
shift 2
configs=${HOP_CONFIGS:-default:}
json() { echo "$OUT/hop/$1/$2/scale-$shape-np$3.json"; }
for rep in $(seq 1 "$rounds"); do
  line="round $rep:"
  for run in $(for c in $configs; do for np in 1 "$@"; do echo "$c-$np"; done; done); do
    name=${run%%:*} rest=${run#*:}
    np=${rest##*-} vars=${rest%-*}
    envs=()
    IFS=, read -ra envs <<< "$vars"
    env "${envs[@]}" OUT="$OUT/hop/$rep/$name" timeout 120 bash scripts/gpu_scaling.sh "$shape" \
      "--batch 1 --prompt 16 --gen ${GEN:-512}" "$np" > /dev/null 2>&1
    line="$line $name/np$np=$(python3 -c "import json; print('%.4f' % [x for x in json.load(open('$(json "$rep" "$name" "$np")'))['decode'] if x['batch'] == 1][0]['ms_per_step'])" 2>/dev/null || echo none)"
  done
  echo "$line (ms per step)"
done
python3 - "$OUT/hop" "$shape" "$rounds" "$configs" "$@" <<'PY'
import json, os, statistics as st, sys
root, shape, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
names, nps = [c.split(":")[0] for c in sys.argv[4].split()], [int(n) for n in sys.argv[5:]]
def load(rep, name, np):
    p = f"{root}/{rep}/{name}/scale-{shape}-np{np}.json"
    return json.load(open(p)) if os.path.exists(p) else None
def ms(d):  # us per batch-1 step
    return d and [x for x in d["decode"] if x["batch"] == 1][0]["ms_per_step"] * 1e3
def rest(d):  # the step less the run's own layers' device time per decode step (us)
    if not d or not d.get("stages") or any(s.get("decode_layers_s", 0) <= 0 for s in d["stages"]): return None
    return ms(d) - sum(s["decode_layers_s"] / s["decode_steps"] for s in d["stages"]) * 1e6
for name in names:
    one = [ms(load(r, name, 1)) for r in range(1, rounds + 1)]
    if all(one): print(f"{name}, 1 rank: {st.median(one):.1f} us per step (median of {rounds} rounds)")
    for np in nps:
        for what, f in (("", ms), (" (less each run's layers: RWKVPP_DEVICE_TIMES=1)", rest)):
            d = []
            for r in range(1, rounds + 1):
                a, b = f(load(r, name, np)), f(load(r, name, 1))
                if a and b: d.append((a - b) / (np - 1))
            if d:
                print(f"{name}, {np} ranks: +{st.median(d):.1f} us per hop{what} (median of {len(d)} rounds;"
                      f" {min(d):.1f} to {max(d):.1f})")
PY
