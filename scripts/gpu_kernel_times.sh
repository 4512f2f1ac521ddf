#!/usr/bin/env bash
# On a GPU machine, from the repository root, over binaries staged by scripts/gpu_stage.sh
# (carry=[".devshared"]): where one decode step's device time goes, kernel by kernel. Runs
# `rwkvpp bench` under Nsight Compute (one metric, gpu__time_duration, clocks left alone) twice,
# with --gen 2 and --gen 4, and prints the difference per kernel over 2: the kernels of one
# decode step (prompt, warm-up and floors cancel out), their launches and microseconds per step.
# Usage: scripts/gpu_kernel_times.sh SHAPE BATCH [bench args...]
#   e.g. scripts/gpu_kernel_times.sh v7-1.5b 32 --compute-dtype fp16   (env BIN, default rwkvpp)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu_rwkvpp_env.sh
source scripts/gpu_rwkvpp_env.sh
shape=$1 batch=$2
shift 2
bin=${BIN:-$D/bin/rwkvpp}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
for gen in 2 4; do
  f="$OUT/ncu-$shape-b$batch-g$gen.csv"
  timeout 280 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --page raw \
    --print-units base --print-kernel-base function --log-file "$f" \
    "$bin" bench --synthetic "$shape" --device cuda --batch "$batch" --prompt 16 --gen $gen \
    --max-batch "$batch" "$@" > "$f.log" 2>&1 || { echo "ncu gen $gen rc=$?"; tail -3 "$f.log"; }
done
python3 - "$OUT/ncu-$shape-b$batch-g2.csv" "$OUT/ncu-$shape-b$batch-g4.csv" "$shape b$batch" <<'PY'
import csv, sys, collections
def load(path):
    t, n = collections.Counter(), collections.Counter()
    lines = [l for l in open(path) if l.startswith('"')]
    rows = list(csv.reader(lines))
    head = rows[0]
    ki, ti = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
    for r in rows[1:]:
        try: v = float(r[ti].replace(",", ""))
        except ValueError: continue
        t[r[ki]] += v; n[r[ki]] += 1
    return t, n
(ta, na), (tb, nb) = load(sys.argv[1]), load(sys.argv[2])
rows = [(k, (tb[k] - ta[k]) / 2e3, (nb[k] - na[k]) / 2) for k in tb if nb[k] != na[k]]
rows.sort(key=lambda r: -r[1])
total = sum(r[1] for r in rows)
print(f"== {sys.argv[3]}: one decode step, {total:.1f} us of kernels, {sum(r[2] for r in rows):.0f} launches")
for k, us, n in rows[:25]:
    print(f"{us:9.1f} us {100 * us / total:5.1f} %  {n:6.0f} x  {k[:90]}")
PY
