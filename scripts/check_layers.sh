#!/usr/bin/env bash
# The include fence of the layer table (docs/architecture.md, "Layers"): every `#include "dir/..."`
# of a source file in a layer's folder must name that layer or one below it. CMake runs this
# before anything is compiled (target layer_fence), so an upward include fails the build, as an
# upward link does. Prints each violation as FILE:LINE and exits 1; 0 when there is none.
# Usage: scripts/check_layers.sh [ROOT]   (ROOT: the repository, default this script's)
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
# What each layer may include besides itself (its links, docs/architecture.md).
declare -A below=(
  [common]=""
  [kernels]="common"
  [shards]="common"
  [net]="common"
  [protocol]="common net"
  [worker]="common kernels shards net protocol"
  [coordinator]="common kernels shards net protocol worker"
)
layers=" ${!below[*]} "
bad=0
for layer in "${!below[@]}"; do
  [[ -d "$root/$layer" ]] || continue
  while IFS= read -r hit; do
    file=${hit%%:*}
    rest=${hit#*:}
    line=${rest%%:*}
    dep=$(sed -E 's/^[0-9]+:#include "([^/"]+)\/.*/\1/' <<<"$rest")
    # Only the project's layer folders are fenced (not e.g. "catch2/..." or a layer's own files).
    [[ "$layers" == *" $dep "* && "$dep" != "$layer" ]] || continue
    [[ " ${below[$layer]} " == *" $dep "* ]] && continue
    echo "${file#"$root"/}:$line: $layer/ may include only ${below[$layer]:-nothing of the other layers}, not $dep/ (docs/architecture.md, Layers)"
    bad=1
  done < <(grep -rnE --include='*.h' --include='*.cpp' --include='*.cu' --include='*.cuh' \
             '^#include "[^/"]+/' "$root/$layer" || true)
done
exit $bad
