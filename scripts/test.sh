#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the unit suites, then the end-to-end
# suites under mpirun, then the sanitizer stage (scripts/fuzz.sh ci). The reference data is read
# from $RWKVPP_SHARED (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's time goes to stderr (CI must stay within 90 minutes on 2 cores).
t0=$SECONDS
stage_done() { echo "test.sh: $1 took $((SECONDS - t0)) s" >&2; t0=$SECONDS; }
./scripts/deps.sh --slurm
./scripts/build.sh
stage_done "set-up and build"
build=${RWKVPP_BUILD_DIR:-build}
export RWKVPP_SHARED=${RWKVPP_SHARED:-$(cd .. && pwd)/shared}
if [[ ! -d "$RWKVPP_SHARED/fixtures" ]]; then
  echo "test.sh: no reference data at $RWKVPP_SHARED (set RWKVPP_SHARED)" >&2
  exit 1
fi
# Open MPI as root inside CI containers.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
(cd "$build" && ctest --output-on-failure --timeout 3000)
stage_done "ctest"
# The sanitizer stage (docs/security.md, "CI"): every fuzz corpus and regression input through
# the harnesses under ASan + UBSan, 30 s of fuzzing per harness, and the suites of the code that
# reads hostile input under ASan + UBSan. RWKVPP_SANITIZE_STAGE=0 skips it.
if [[ "${RWKVPP_SANITIZE_STAGE:-1}" != 0 ]]; then
  ./scripts/fuzz.sh ci
  stage_done "the sanitizer stage"
fi
