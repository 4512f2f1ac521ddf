#!/usr/bin/env bash
# One command from a fresh clone to a running pipeline: installs what is missing, builds, makes
# a small model with RANDOM weights (there is no network to download a real one, and none ships
# with the project), converts it into 3 shards and runs a 3-stage pipeline with mpirun (rank 0
# coordinates and holds stage 0), printing the generated tokens and per-stage statistics.
# Pass a real checkpoint as the first argument to use it instead.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh
bin=${RWKVPP_BUILD_DIR:-build}/coordinator/rwkvpp
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ $# -ge 1 ]]; then
  "$bin" convert "$1" -o "$work/model" --shards 3
else
  echo "quickstart: no checkpoint given: generating a small RWKV-4 model with RANDOM weights (its output is noise)"
  "$bin" synth --shape tiny -o "$work/model" --shards 3
fi
"$bin" inspect "$work/model"
np=3
echo "quickstart: mpirun -np $np rwkvpp generate (3 pipeline stages)"
mpirun --allow-run-as-root --oversubscribe -np $np "$bin" generate --model "$work/model" \
  --prompt-tokens 1,2,3,4 -n 64 --stats
