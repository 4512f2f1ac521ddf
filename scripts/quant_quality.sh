#!/usr/bin/env bash
# Quality of rwkvpp's quantised compute dtypes beside rwkv.cpp's own formats, on rwkv.cpp's
# trained tiny byte-level models (../shared/fixtures/rwkv-cpp-tiny), by hand (not in CI; the
# int4 unit tests bound the same figures for rwkvpp alone). Method: docs/perf-cpu.md, "int4".
#
#   For each model: rwkvpp (convert --tokenizer bytes, then `logits` at fp32, fp16, int8, int4)
#   and rwkv.cpp (its FP32 file and its own quantiser's Q8_0, Q5_1, Q4_1 and Q4_0, through
#   kernels/cpu/dev/rwkvcpp_driver.cpp) each give the logits after every byte of a held-out
#   English text written for this script. Every variant is compared with rwkvpp's fp32 logits
#   (which agree with rwkv.cpp FP32 to ~1e-5; the script prints that agreement) and with fp16:
#   mean KL(reference || variant) in nats per byte and top-1 agreement.
#
# Needs a built rwkv.cpp and driver: scripts/bench_rwkvcpp.sh leaves them in $WORK (run it once,
# e.g. SHAPES=169m DTYPES=fp32 THREADS=1 ROUNDS=1). Output: $WORK/quality/summary.json, a table.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/rwkvpp-peer}
build=$repo/${RWKVPP_BUILD_DIR:-build}
rwkvpp=$build/coordinator/rwkvpp
driver=$WORK/rwkvcpp_driver
fixtures=${RWKVPP_SHARED:-$repo/../shared}/fixtures/rwkv-cpp-tiny
out=$WORK/quality
die() {
  echo "quant_quality: $*" >&2
  exit 1
}
[[ -x $rwkvpp ]] || die "no $rwkvpp: build rwkvpp first (./scripts/build.sh)"
[[ -x $driver ]] || die "no $driver: run scripts/bench_rwkvcpp.sh once (it builds rwkv.cpp and the driver)"
[[ -d $fixtures ]] || die "no $fixtures"
mkdir -p "$out"

# The held-out text: plain prose written for this script, none of it from a training set.
cat >"$out/text.txt" <<'EOF'
The harbour was quiet in the early morning. A few boats rocked against the pier, and an old man sat on a crate mending a net. He had done this every day for forty years. When the children came down the hill on their way to school, they stopped to watch his hands move, quick and sure, tying knot after knot. "Why do you mend it," one girl asked, "if the sea only tears it again?" He laughed and held the net up to the light. "Because tomorrow there will be fish," he said, "and a net with holes catches nothing but water." The girl thought about this all day. In the evening she went back to the pier with a ball of string, and he showed her the first knot.
Once there was a small brown dog who lived at the end of a long road. Every morning he ran to the gate to wait for the baker's van. The baker always threw him the end of a loaf, and the dog carried it home as if it were a prize. One winter the van stopped coming. The dog waited at the gate for three days, and on the fourth day he walked all the way into town by himself and sat outside the bakery until the baker came out and laughed and gave him a whole loaf.
EOF
ids=$(od -An -v -tu1 "$out/text.txt" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
echo "$ids" | tr ' ' '\n' >"$out/ids.txt"
csv=$(echo "$ids" | tr ' ' ',')

for f in "$fixtures"/tiny-rwkv-*-FP32.bin; do
  name=$(basename "$f" -FP32.bin)
  d=$out/$name
  mkdir -p "$d"
  [[ -f $d/model/model.h5 ]] || "$rwkvpp" convert "$f" -o "$d/model" --tokenizer bytes >"$d/convert.log" 2>&1 ||
    die "convert $f failed: $d/convert.log"
  for dt in fp32 fp16 int8 int4; do
    "$rwkvpp" logits -m "$d/model" --compute-dtype "$dt" --threads 2 --tokens-file "$out/ids.txt" \
      -o "$d/rwkvpp-$dt.npy" >"$d/rwkvpp-$dt.log" 2>&1 || die "rwkvpp logits $dt failed: $d/rwkvpp-$dt.log"
  done
  "$driver" logits "$f" --threads 2 --tokens "$csv" --every 1 -o "$d/rwkvcpp-FP32.f32" 2>"$d/rwkvcpp-FP32.log"
  for q in Q8_0 Q5_1 Q4_1 Q4_0; do
    [[ -f $d/$q.bin ]] || "$driver" quantize "$f" "$d/$q.bin" "$q" >"$d/quantize-$q.log" 2>&1 ||
      die "rwkv.cpp quantize $q failed: $d/quantize-$q.log"
    "$driver" logits "$d/$q.bin" --threads 2 --tokens "$csv" --every 1 -o "$d/rwkvcpp-$q.f32" 2>"$d/rwkvcpp-$q.log"
  done
done

node "$repo/scripts/quant_quality.mjs" "$out" | tee "$out/table.txt"
