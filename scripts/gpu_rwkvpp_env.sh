# Sourced on a GPU machine (bash), from the repository root: makes the rwkvpp carried in
# .devshared/ (scripts/gpu_stage.sh) runnable there: unpacks its libraries, finds cuBLAS 13
# (the toolkit's, else the one pip installed for PyTorch) and sets LD_LIBRARY_PATH. With the
# argument `mpi`, also the carried Open MPI runtime (scripts/gpu_mpi_env.sh); node, where
# gpu_stage.sh packed it (WITH_NODE=1) and the machine has none. Sets D to the .devshared folder.
D=$PWD/.devshared
[ "${1:-}" = mpi ] && source scripts/gpu_mpi_env.sh
mkdir -p /tmp/rwkvpp-rlib && xz -dc "$D/rlib.tar.xz" | tar -C /tmp/rwkvpp-rlib -xf -
CUBLAS_DIR=$(dirname "$(ls /usr/local/cuda/lib64/libcublas.so.13 2>/dev/null ||
  find / -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=/tmp/rwkvpp-rlib:$CUBLAS_DIR:${LD_LIBRARY_PATH:-}
# The machine's own tools must not load the carried libraries (its curl died on the carried
# libcurl: "undefined symbol: curl_global_trace"): curl runs with the machine's.
mkdir -p /tmp/rwkvpp-tools
printf '#!/bin/sh\nLD_LIBRARY_PATH= exec %s "$@"\n' "$(command -v curl)" > /tmp/rwkvpp-tools/curl
chmod +x /tmp/rwkvpp-tools/curl
export PATH=/tmp/rwkvpp-tools:$PATH
chmod +x "$D/bin/rwkvpp"
if [ -f "$D/node.xz" ] && ! command -v node >/dev/null 2>&1; then
  mkdir -p /tmp/rwkvpp-node/bin && xz -dc "$D/node.xz" > /tmp/rwkvpp-node/bin/node &&
    chmod +x /tmp/rwkvpp-node/bin/node && export PATH=/tmp/rwkvpp-node/bin:$PATH
fi
