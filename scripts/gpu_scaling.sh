#!/usr/bin/env bash
# On a GPU machine with several GPUs, from the repository root, over the binary staged by
# scripts/gpu_stage.sh and the Open MPI runtime staged by scripts/gpu_stage_mpi.sh: runs
# `rwkvpp bench` under mpirun with 1, 2, ... ranks (one GPU each, one stage each) and writes
# the JSON of each to $OUT/scale-SHAPE-npN.json, then prints the scaling table.
# RWKVPP=path runs another rwkvpp binary (e.g. an earlier build, to compare within one call).
# Usage: scripts/gpu_scaling.sh SHAPE "BENCH ARGS" NP...   e.g. 14b "--batch 1,256 --prompt 4096" 1 2 4
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
shape=$1
args=$2
shift 2
# shellcheck source=scripts/gpu_rwkvpp_env.sh
source scripts/gpu_rwkvpp_env.sh mpi
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
nvidia-smi topo -m 2>/dev/null | head -8
# Every RWKVPP_* variable set here (RWKVPP_SPIN_US, RWKVPP_SIDE_COPIES, ...) goes to the ranks.
fwd=()
for v in $(compgen -e | grep '^RWKVPP_'); do fwd+=(-x "$v"); done
for np in "$@"; do
  echo "== $shape on $np rank(s) $args"
  # shellcheck disable=SC2086
  timeout 500 mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" \
    -x LD_LIBRARY_PATH -x OPAL_PREFIX -x PMIX_PREFIX -x PMIX_MCA_mca_base_component_path "${fwd[@]}" \
    "${RWKVPP:-$D/bin/rwkvpp}" bench --synthetic "$shape" --device cuda $args -o "$OUT/scale-$shape-np$np.json" \
    > "$OUT/scale-$shape-np$np.log" 2>&1
  echo "rc=$?"
  [ -s "$OUT/scale-$shape-np$np.json" ] || tail -20 "$OUT/scale-$shape-np$np.log"
done
python3 - "$OUT" "$shape" "$@" <<'PY'
import json, sys, os
out, shape, nps = sys.argv[1], sys.argv[2], sys.argv[3:]
base = {}
for np in nps:
    p = os.path.join(out, f"scale-{shape}-np{np}.json")
    if not os.path.exists(p):
        print(f"np {np}: no result"); continue
    d = json.load(open(p))
    f = d["floors"]
    print(f"np {np}: floors copy {f['copy_GBps']:.0f} GB/s gemm {f['gemm_TFLOPs']:.0f} TFLOP/s b1 floor {f['decode_b1_floor_ms']:.3f} ms")
    for x in d.get("decode", []):
        b = x["batch"]
        base.setdefault(("d", b), x)
        r = x["tokens_per_s"] / base[("d", b)]["tokens_per_s"]
        extra = ""
        if b == 1 and np != nps[0]:
            hops = int(np) - int(nps[0])
            extra = f", +{(x['ms_per_step'] - base[('d', 1)]['ms_per_step']) * 1e3 / max(hops, 1):.1f} us per added hop"
        print(f"  decode b{b} x{x.get('sequences', b)} seqs: {x['ms_per_step']:.3f} ms/step {x['tokens_per_s']:.0f} tok/s = {r:.2f}x np{nps[0]}{extra}")
    for x in d.get("prefill", []):
        base.setdefault(("p", x["prompt"]), x)
        print(f"  prefill {x['prompt']}: {x['tokens_per_s']:.0f} tok/s = {x['tokens_per_s'] / base[('p', x['prompt'])]['tokens_per_s']:.2f}x")
    for s in d.get("stages", []):
        print(f"    rank {s['rank']} {s['backend']} layers {s['layers']} compute {s['compute_s']:.2f} s wait {s['wait_s']:.2f} s"
              f" device {s.get('device_s', 0):.2f} s (layers {s.get('layers_s', 0):.2f} s, after {s.get('out_s', 0):.2f} s,"
              f" idle: host {s.get('idle_host_s', 0):.2f} s"
              f" upload {s.get('idle_upload_s', 0):.2f} s) host: handling {s.get('handle_s', 0):.2f} s"
              f" ring wait {s.get('ring_wait_s', 0):.2f} s, sent {s['bytes_sent'] / 1e6:.0f} MB,"
              f" received through shared slots {s.get('bytes_shared', 0) / 1e6:.0f} MB")
PY
