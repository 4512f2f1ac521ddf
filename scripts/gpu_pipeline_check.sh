#!/usr/bin/env bash
# On a GPU machine with several GPUs (or here, with DEVICE=cpu): checks that the pipeline gives
# the same logits on 1, 2 and 4 ranks as one process, and that those match the CPU backend, for
# the hf-rwkv4-small fixture: three sequences fed one token per step (the decode path: graphs,
# fused kernels), one sequence per step so that several steps are in flight at once (the
# asynchronous transfers between stages). Exits non-zero on any difference above the bound.
# RWKVPP_* variables set here reach the ranks: RWKVPP_SIDE_COPIES=all checks the side-queue
# copies of hidden vectors, which otherwise only large batches use.
# Usage: [DEVICE=cuda] [RWKVPP=path] [FIXTURES=dir] scripts/gpu_pipeline_check.sh NP...
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
D=$PWD/.devshared
RWKVPP=${RWKVPP:-$D/bin/rwkvpp}
FIXTURES=${FIXTURES:-$D/fixtures}
# shellcheck source=scripts/gpu_rwkvpp_env.sh
[ "$DEVICE" = cuda ] && source scripts/gpu_rwkvpp_env.sh mpi
F=$FIXTURES/hf-rwkv4/hf-rwkv4-small
M=$(mktemp -d)/model
"$RWKVPP" convert "$F.safetensors" -o "$M" --shards 4 > "$OUT/convert.log" 2>&1 || { cat "$OUT/convert.log"; exit 1; }
T=$(python3 -c "import json; print(','.join(map(str, json.load(open('$F.json'))['tokens'])))")
A=$(echo "$T" | cut -d, -f1-20); B=$(echo "$T" | cut -d, -f21-31); C=$(echo "$T" | cut -d, -f32-48)
fwd=()
for v in $(compgen -e | grep '^RWKVPP_'); do fwd+=(-x "$v"); done
run() {  # ranks device out
  local np=$1 dev=$2 out=$3
  local cmd=("$RWKVPP" logits -m "$M" --device "$dev" --chunk 1 --max-batch 1 --tokens "$A" --tokens "$B" --tokens "$C" -o "$out")
  if [ "$np" = 0 ]; then "${cmd[@]}"; else
    mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" -x LD_LIBRARY_PATH "${fwd[@]}" \
      ${OPAL_PREFIX:+-x OPAL_PREFIX -x PMIX_PREFIX -x PMIX_MCA_mca_base_component_path} "${cmd[@]}"
  fi
}
rc=0
run 0 cpu "$OUT/cpu.npy" > "$OUT/cpu.log" 2>&1 || { echo "cpu run failed"; tail "$OUT/cpu.log"; rc=1; }
run 0 "$DEVICE" "$OUT/np0.npy" > "$OUT/np0.log" 2>&1 || { echo "one-process run failed"; tail "$OUT/np0.log"; rc=1; }
for np in "$@"; do
  run "$np" "$DEVICE" "$OUT/np$np.npy" > "$OUT/np$np.log" 2>&1 || { echo "np $np failed"; tail "$OUT/np$np.log"; rc=1; }
done
python3 - "$OUT" "$@" <<'PY' || rc=1
import ast, sys
from array import array
def load(path):  # .npy 1.0, '<f4', C order (what rwkvpp logits writes); no numpy needed
    with open(path, "rb") as f:
        assert f.read(6) == b"\x93NUMPY", path
        f.read(2)
        hlen = int.from_bytes(f.read(2), "little")
        h = ast.literal_eval(f.read(hlen).decode())
        assert h["descr"] == "<f4" and not h["fortran_order"], h
        a = array("f"); a.frombytes(f.read())
        return h["shape"], a
def maxdiff(x, y):
    return max(abs(p - q) for p, q in zip(x[1], y[1])) if x[0] == y[0] else float("inf")
out, nps = sys.argv[1], sys.argv[2:]
cpu, one = load(f"{out}/cpu.npy"), load(f"{out}/np0.npy")
ok = True
e = maxdiff(one, cpu); print(f"one process vs CPU backend: max |diff| {e:.3g} (bound 1e-4), shape {one[0]}"); ok &= e <= 1e-4
for n in nps:
    x = load(f"{out}/np{n}.npy")
    e = maxdiff(x, one); print(f"{n} ranks vs one process: max |diff| {e:.3g} (bound 1e-5)"); ok &= e <= 1e-5
print("PASS" if ok else "FAIL"); sys.exit(0 if ok else 1)
PY
exit $rc
