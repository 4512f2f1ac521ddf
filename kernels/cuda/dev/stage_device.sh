#!/usr/bin/env bash
# Runs on the development machine (no GPU): gathers what device_run.sh needs into .devshared/
# (git-ignored; pass carry=[".devshared"] to the device tool): the [cuda] test binary of
# build-cuda/ and the lab bench, stripped; the shared libraries they load that the GPU image may
# lack (everything but glibc, libstdc++/libgcc and the CUDA libraries, which the image has); and
# the fixtures the model tests read. The libraries travel as lib.tar.xz. Usage: kernels/cuda/dev/stage_device.sh [build dir]
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
BUILD=${1:-$ROOT/build-cuda}
SHARED=${RWKVPP_SHARED:-$ROOT/../shared}
D=$ROOT/.devshared
rm -rf "$D/lib" "$D/fixtures" "$D/lib.tar.xz"
[ "${KEEP_BENCH:-0}" = 1 ] || rm -rf "$D/bin"
mkdir -p "$D/bin" "$D/lib" "$D/fixtures/hf-rwkv4" "$D/fixtures/pip-rwkv"
strip -o "$D/bin/rwkvpp_tests" "$BUILD/tests/rwkvpp_tests"
[ "${KEEP_BENCH:-0}" = 1 ] && [ -x "$D/bin/bench" ] ||  # KEEP_BENCH=1: reuse the last build
(cd "$ROOT/kernels/cuda/dev" &&
  /usr/local/cuda/bin/nvcc -std=c++20 -O3 -arch=sm_90 -I../../.. bench.cu ../wkv4.cu ../wkv5.cu \
    ../wkv7.cu -lcublas -o "$D/bin/bench")
for bin in "$D/bin/rwkvpp_tests" "$D/bin/bench"; do
  ldd "$bin" | awk '$3 ~ /^\// {print $3}'
done | sort -u | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcublas|libcublasLt)\.so' |
  while read -r lib; do cp -L "$lib" "$D/lib/"; done
# Packed: the libraries compress about 5x, and what travels is limited to 64 MiB.
tar -C "$D/lib" -cf - . | xz -T2 -6 > "$D/lib.tar.xz"
rm -rf "$D/lib"
for f in hf-rwkv4/hf-rwkv4-small pip-rwkv/pip-rwkv6-small pip-rwkv/pip-rwkv7-small; do
  for ext in json safetensors logits.f64; do cp "$SHARED/fixtures/$f.$ext" "$D/fixtures/$f.$ext"; done
done
du -sh "$D"/*
