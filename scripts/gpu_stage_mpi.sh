#!/usr/bin/env bash
# On the development machine: packs this machine's Open MPI runtime (mpirun, orted, MCA
# plugins, help texts, PMIx and the libraries they load) into .devshared/ompi.tar.xz, so that
# several ranks can be launched on a GPU machine whose image has no Open MPI (docs/cuda.md).
# scripts/gpu_mpi_env.sh unpacks it there under another prefix; Open MPI finds its files
# through OPAL_PREFIX, PMIx through PMIX_PREFIX.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=$ROOT/.devshared
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
A=/usr/lib/x86_64-linux-gnu
mkdir -p "$T/usr/bin" "$T/usr/lib/x86_64-linux-gnu" "$T/usr/share" "$T/lib"
for b in orterun orted ompi_info; do cp -L /usr/bin/$b "$T/usr/bin/"; done
ln -s orterun "$T/usr/bin/mpirun"
cp -a $A/openmpi "$T/usr/lib/x86_64-linux-gnu/"
rm -rf "$T/usr/lib/x86_64-linux-gnu/openmpi/include"
cp -a $A/pmix2 "$T/usr/lib/x86_64-linux-gnu/"
cp -a /usr/share/openmpi "$T/usr/share/"
mkdir -p "$T/etc" && cp -a /etc/openmpi "$T/etc/"
# Every library the binaries and plugins load, except the C/C++ runtime and CUDA (the GPU
# image has its own) and what is already in the tree.
find "$T" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0 |
  xargs -0 ldd 2>/dev/null | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart|libnvidia[^/]*)\.so' |
  grep -v "$A/openmpi/" | grep -v "$A/pmix2/" |
  while read -r lib; do cp -L "$lib" "$T/lib/"; done
tar -C "$T" -cf - . | xz -T2 -6 > "$D/ompi.tar.xz"
du -sh "$D/ompi.tar.xz"
