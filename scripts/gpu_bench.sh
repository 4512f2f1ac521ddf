#!/usr/bin/env bash
# On a GPU machine, from the repository root, over binaries staged by scripts/gpu_stage.sh:
# runs `rwkvpp bench` on synthetic RWKV-4 shapes (fp16) and writes JSON to $OUT.
# Usage: scripts/gpu_bench.sh SHAPE[:ARGS] ...   e.g. 1.5b 14b ":--context 1024,65536"
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu_rwkvpp_env.sh
source scripts/gpu_rwkvpp_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
ldd "$D/bin/rwkvpp" | grep "not found" && echo "MISSING LIBRARIES"
for spec in "$@"; do
  shape=${spec%%:*}
  args=""
  [[ "$spec" == *:* ]] && args=${spec#*:}
  # Runs of one shape with another dtype get their own files (bench-14b-int8.json).
  tag=$(printf '%s' "$args" | grep -oE 'int8|bf16|fp32' | head -1)
  name=$shape${tag:+-$tag}
  echo "== bench $shape $args"
  # shellcheck disable=SC2086
  timeout 400 "$D/bin/rwkvpp" bench --synthetic "$shape" --device cuda $args -o "$OUT/bench-$name.json" \
    > "$OUT/bench-$name.log" 2>&1
  echo "rc=$?"
  python3 - "$OUT/bench-$name.json" <<'PY' || tail -5 "$OUT/bench-$name.log"
import json, sys
d = json.load(open(sys.argv[1]))
f = d["floors"]
print(f"floors: copy {f['copy_GBps']:.0f} GB/s, gemm {f['gemm_TFLOPs']:.1f} TFLOP/s, b1 floor {f['decode_b1_floor_ms']:.3f} ms")
for x in d.get("decode", []):
    print(f"decode b{x['batch']}: {x['ms_per_step']:.3f} ms/step, {x['tokens_per_s']:.0f} tok/s, gemm {x['gemm_fraction']:.2f}")
for x in d.get("prefill", []):
    print(f"prefill {x['prompt']}: {x['tokens_per_s']:.0f} tok/s, gemm {x['gemm_fraction']:.2f}")
for x in d.get("context", []):
    print(f"context {x['context']}: {x['ms_per_token']:.3f} ms/token")
print("ratios", d.get("ratios"), "memory", d["memory_bytes"])
PY
done
