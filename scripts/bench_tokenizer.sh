#!/usr/bin/env bash
# Tokenizer speed: one JSON line per tokenizer (World, 20B) from `rwkvpp bench-tokenizer`, with
# encode/decode MB/s on one thread (see coordinator/tokenizer/tokenizer_bench.h and
# docs/perf-tokenizer.md). Measure with a Release build.
# Usage: scripts/bench_tokenizer.sh [TEXT_FILE]
#   TEXT_FILE  English text to tokenize (default: ~4 MB of generated English-like text)
# Environment: RWKVPP_BIN (default build-release/coordinator/rwkvpp, else build/coordinator/rwkvpp),
#              RWKVPP_SHARED (default ../shared beside the project).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${RWKVPP_SHARED:-$root/../shared}
bin=${RWKVPP_BIN:-}
if [[ -z "$bin" ]]; then
  for b in "$root/build-release/coordinator/rwkvpp" "$root/build/coordinator/rwkvpp"; do
    if [[ -x "$b" ]]; then bin=$b; break; fi
  done
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "bench_tokenizer: no rwkvpp binary; build one, e.g." >&2
  echo "  cmake -S $root -B $root/build-release -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C $root/build-release rwkvpp" >&2
  exit 1
fi
text=()
if [[ $# -ge 1 ]]; then text=(--text "$1"); fi
for tok in "$shared/tokenizers/rwkv_vocab_v20230424.txt" "$shared/tokenizers/20B_tokenizer.json"; do
  "$bin" bench-tokenizer --tokenizer "$tok" "${text[@]}"
done
