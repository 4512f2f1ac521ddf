#!/usr/bin/env bash
# On the development machine: gathers the CUDA build of rwkvpp (and its test binary) with the
# shared libraries the GPU image lacks into .devshared/ (git-ignored), for scripts/gpu_bench.sh
# on a GPU machine reached through the device tool (carry=[".devshared"]). The GPU image has
# CUDA but not the project's build dependencies, so we build here and carry the binaries.
# Usage: scripts/gpu_stage.sh [build dir, default build-cuda]
# WITH_NODE=1 also packs this machine's node (for scripts/bench_serve.sh there; the GPU image
# has none) as .devshared/node.xz, which gpu_rwkvpp_env.sh unpacks and puts on PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build-cuda}
D=$ROOT/.devshared
mkdir -p "$D/bin"
rm -rf "$D/rlib" "$D/rlib.tar.xz"
mkdir -p "$D/rlib"
strip -o "$D/bin/rwkvpp" "$BUILD/coordinator/rwkvpp"
ldd "$D/bin/rwkvpp" | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcublas|libcublasLt|libcudart)\.so' |
  while read -r lib; do cp -L "$lib" "$D/rlib/"; done
tar -C "$D/rlib" -cf - . | xz -T2 -6 > "$D/rlib.tar.xz"
rm -rf "$D/rlib"
rm -f "$D/node.xz"
[ "${WITH_NODE:-0}" = 1 ] && xz -T2 -6 -c "$(readlink -f "$(command -v node)")" > "$D/node.xz"
du -sh "$D"/bin/rwkvpp "$D/rlib.tar.xz" "$D"/node.xz 2>/dev/null
