#!/usr/bin/env bash
# On a GPU machine with several GPUs, from the repository root, over the binary and Open MPI
# runtime staged as for scripts/gpu_scaling.sh: the added latency per stage hop at batch 1, the
# way docs/perf.md measures it (fifth session): runs at 1 rank and at each NP alternate for
# ROUNDS rounds, so that a machine's drift shows in every configuration alike, and the figure
# is the median over rounds of (T_np - T_1) / (np - 1). One run alone moves by up to ~40 us.
# With RWKVPP_DEVICE_TIMES=1 set, also the same with each run's own layers' device time per
# decode step taken out (so that a process's compute speed does not count as hop time).
# Usage: scripts/gpu_hop.sh SHAPE ROUNDS NP...   e.g. 1.5b 6 2 4
set -u
OUT=${OUT:-/tmp/out}
shape=$1
rounds=$2
shift 2
for rep in $(seq 1 "$rounds"); do
  line="round $rep:"
  for np in 1 "$@"; do
    OUT=$OUT/hop/$rep/np$np timeout 120 bash scripts/gpu_scaling.sh "$shape" "--batch 1 --prompt 16 --gen 512" "$np" > /dev/null 2>&1
    line="$line np$np=$(python3 -c "import json; print('%.4f' % [x for x in json.load(open('$OUT/hop/$rep/np$np/scale-$shape-np$np.json'))['decode'] if x['batch'] == 1][0]['ms_per_step'])" 2>/dev/null || echo none)"
  done
  echo "$line (ms per step)"
done
python3 - "$OUT/hop" "$shape" "$rounds" "$@" <<'PY'
import json, os, statistics as st, sys
root, shape, rounds, nps = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(n) for n in sys.argv[4:]]
def load(rep, np):
    p = f"{root}/{rep}/np{np}/scale-{shape}-np{np}.json"
    return json.load(open(p)) if os.path.exists(p) else None
def ms(rep, np):  # us per batch-1 step
    d = load(rep, np)
    return d and [x for x in d["decode"] if x["batch"] == 1][0]["ms_per_step"] * 1e3
def rest(rep, np):  # the step less the run's own layers' device time per decode step (us)
    d = load(rep, np)
    if not d or any(s.get("decode_layers_s", 0) <= 0 for s in d["stages"]): return None
    return ms(rep, np) - sum(s["decode_layers_s"] / s["decode_steps"] for s in d["stages"]) * 1e6
for np in nps:
    for name, f in (("", ms), (" (less each run's layers: RWKVPP_DEVICE_TIMES=1)", rest)):
        d = [(f(r, np) - f(r, 1)) / (np - 1) for r in range(1, rounds + 1) if f(r, np) and f(r, 1)]
        if d: print(f"{np} ranks: +{st.median(d):.1f} us per hop{name} (median of {len(d)} rounds; {min(d):.1f} to {max(d):.1f})")
PY
