#!/usr/bin/env bash
# ctest `layers`: the include fence (scripts/check_layers.sh) passes on the repository and fails,
# naming the file, the line and both layers, on a copy of it with one upward include planted
# per layer (the fence must catch what the build would otherwise accept: every layer folder is
# on the include path).
set -euo pipefail
root=${1:?usage: fence_test.sh REPOSITORY}
fence="$root/scripts/check_layers.sh"
bash "$fence" "$root" || { echo "FAIL: the repository itself breaks the fence"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0
# layer -> a layer above it
for pair in common:kernels kernels:worker shards:net net:protocol protocol:worker worker:coordinator; do
  low=${pair%%:*} high=${pair#*:}
  rm -rf "$work/tree" && mkdir -p "$work/tree"
  cp -r "$root/$low" "$work/tree/"
  mkdir -p "$work/tree/$high"
  victim=$(cd "$work/tree" && find "$low" -name '*.cpp' | sort | head -1)
  printf '#include "%s/planted.h"\n' "$high" >> "$work/tree/$victim"
  line=$(wc -l < "$work/tree/$victim")
  if out=$(bash "$fence" "$work/tree" 2>&1); then
    echo "FAIL: $low/ including $high/ passed the fence"; fails=1; continue
  fi
  if ! grep -q "^$victim:$line: $low/ may include only .*, not $high/" <<<"$out" &&
     ! grep -q "^$victim:$line: $low/ may include only nothing of the other layers, not $high/" <<<"$out"; then
    echo "FAIL: the fence did not name $victim:$line for $low/ -> $high/:"; echo "$out"; fails=1
  fi
done
# An include of a layer below, and of a folder that is no layer, stay allowed.
rm -rf "$work/tree" && mkdir -p "$work/tree/worker" "$work/tree/common"
printf '#include "kernels/backend.h"\n#include "catch2/catch.hpp"\n' > "$work/tree/worker/ok.cpp"
bash "$fence" "$work/tree" || { echo "FAIL: allowed includes were refused"; fails=1; }
[[ $fails == 0 ]] && echo "include fence: 6 planted upward includes caught, allowed ones passed"
exit $fails
