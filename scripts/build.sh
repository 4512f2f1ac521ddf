#!/usr/bin/env bash
# Configures and builds rwkvpp into build/ (or $RWKVPP_BUILD_DIR). Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${RWKVPP_BUILD_DIR:-build}
gen=()
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
fi
cmake --build "$build" -j "$(nproc)"
