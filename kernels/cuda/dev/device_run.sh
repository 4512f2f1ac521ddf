#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, over binaries built on the development
# machine and carried in .devshared/ (docs/cuda.md): .devshared/bin/{rwkvpp_tests,bench},
# .devshared/lib.tar.xz (shared libraries the build machine had and the GPU image may lack),
# .devshared/fixtures/ (the reference data the model tests read). Writes logs to $OUT.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
D=$PWD/.devshared
export RWKVPP_SHARED=$D
mkdir -p /tmp/rwkvpp-lib && xz -dc "$D/lib.tar.xz" | tar -C /tmp/rwkvpp-lib -xf -
# cuBLAS: the toolkit's, else the one pip installed for PyTorch.
CUBLAS_DIR=$(dirname "$(ls /usr/local/cuda/lib64/libcublas.so.13 2>/dev/null ||
  find / -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=/tmp/rwkvpp-lib:$CUBLAS_DIR:${LD_LIBRARY_PATH:-}
# What the image offers for building the project there (docs/cuda.md).
echo "image: $(. /etc/os-release; echo $PRETTY_NAME), cmake $(cmake --version | head -1 | cut -d' ' -f3)," \
  "dev packages: $(dpkg -l 2>/dev/null | awk '/^ii/ {print $2}' | grep -E '^(libhdf5-dev|libopenmpi-dev|catch2|libopenblas-dev|libfmt-dev|libspdlog-dev|nlohmann-json3-dev)$' | tr '\n' ' ')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
echo "cublas from $CUBLAS_DIR"
ldd $D/bin/rwkvpp_tests | grep -E "not found" && echo "MISSING LIBRARIES"
chmod +x $D/bin/* 2>/dev/null
rc=0
$D/bin/rwkvpp_tests "[cuda]" --durations yes > "$OUT/tests.log" 2>&1 || rc=$?
grep -E "^\[cuda\]|FAILED|failed|passed|skipped|error" "$OUT/tests.log" | head -80
echo "tests rc=$rc"
if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  # Out-of-bounds accesses and races in the op kernels (slow: the ops tests only).
  for tool in memcheck racecheck; do
    timeout 75 compute-sanitizer --tool $tool --print-limit 20 $D/bin/rwkvpp_tests \
      "CUDA wkv*,CUDA token_shift*,CUDA layer_norm*,CUDA head*" > "$OUT/$tool.log" 2>&1
    echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1)"
  done
fi
if [ "${1:-}" != "--tests-only" ]; then
  $D/bin/bench "$OUT/bench.csv" 2>&1 | tee "$OUT/bench.log"
fi
exit $rc
