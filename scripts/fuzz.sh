#!/usr/bin/env bash
# The sanitizer stage of scripts/test.sh (issue 21, docs/security.md), and a way to fuzz by hand.
#
#   scripts/fuzz.sh ci            build build-fuzz/ (clang, -DRWKVPP_FUZZ=ON: every library with
#                                 ASan + UBSan + libFuzzer coverage), replay every corpus and
#                                 regression input through every harness, fuzz each harness for
#                                 $RWKVPP_FUZZ_SECONDS (default 30) from a copy of its corpus, and
#                                 run the unit subset $RWKVPP_ASAN_TESTS under ASan + UBSan.
#   scripts/fuzz.sh run NAME [libFuzzer flags...]
#                                 fuzz one harness (build-fuzz/tests/fuzz/fuzz_NAME) on a copy of
#                                 its corpus in build-fuzz/corpus/NAME; crashes land in
#                                 build-fuzz/artifacts/.
#
# Without clang's libFuzzer the stage says so and returns 0: the corpora and regression inputs
# are still replayed through the same harnesses by the Catch2 test [fuzz] of every build.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${RWKVPP_FUZZ_BUILD_DIR:-build-fuzz}
seconds=${RWKVPP_FUZZ_SECONDS:-30}
# Replayed but not fuzzed in CI: model_h5 reaches libhdf5 1.10's own crashes within seconds
# (docs/security.md, "model.h5"; inputs in tests/fuzz/known/), which rwkvpp cannot fix.
skip=" ${RWKVPP_FUZZ_SKIP-model_h5} "
# Every suite of rwkvpp_tests_asan (tests/CMakeLists.txt): common, shards, tokenizers, batch
# input lines, wire framing, the fuzz replay.
asan_tests=${RWKVPP_ASAN_TESTS:-}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

have_libfuzzer() {
  command -v clang++ >/dev/null 2>&1 &&
    echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
      clang++ -x c++ -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1
}

configure() {
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    local gen=()
    if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
    CC=clang CXX=clang++ cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DRWKVPP_CUDA=OFF -DRWKVPP_FUZZ=ON >/dev/null
  fi
}

# One corpus folder per harness (the [fuzz] test checks that they match tests/fuzz/targets.cpp).
targets() { ls tests/fuzz/corpus; }

fuzz_one() {  # NAME SECONDS [flags...]: fuzz from a fresh copy of the corpus
  local t=$1 s=$2
  shift 2
  local work="$build/corpus/$t"
  mkdir -p "$work" "$build/artifacts"  # new inputs go to the first folder, not the checked-in one
  "$build/tests/fuzz/fuzz_$t" -max_total_time="$s" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/$t-" "$@" "$work" tests/fuzz/corpus/"$t"
}

case "${1:-ci}" in
  ci)
    if ! have_libfuzzer; then
      echo "fuzz.sh: no clang with libFuzzer here: the sanitizer stage is skipped (the [fuzz] test of" \
        "the normal build still replays every corpus and regression input)" >&2
      exit 0
    fi
    configure
    t0=$(date +%s)
    cmake --build "$build" -j "$(nproc)" --target fuzz rwkvpp_tests_asan
    echo "fuzz.sh: build $(($(date +%s) - t0)) s" >&2
    for t in $(targets); do
      dirs=(tests/fuzz/corpus/"$t")
      [[ -d tests/fuzz/regressions/$t ]] && dirs+=(tests/fuzz/regressions/"$t")
      "$build/tests/fuzz/fuzz_$t" -runs=0 -timeout=10 -rss_limit_mb=2048 "${dirs[@]}" 2>&1 | tail -1
    done
    for t in $(targets); do
      [[ "$skip" == *" $t "* ]] && continue
      rm -rf "$build/corpus/$t"
      fuzz_one "$t" "$seconds" 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|==|SUMMARY)" || true
      if compgen -G "$build/artifacts/$t-*" >/dev/null; then
        echo "fuzz.sh: fuzz_$t found a crash, a leak or a timeout: $(ls "$build"/artifacts/"$t"-*)" >&2
        exit 1
      fi
    done
    export RWKVPP_SHARED=${RWKVPP_SHARED:-$(cd .. && pwd)/shared}
    "$build/tests/rwkvpp_tests_asan" ${asan_tests:+"$asan_tests"}
    echo "fuzz.sh: sanitizer stage done in $(($(date +%s) - t0)) s" >&2
    ;;
  run)
    t=${2:?usage: fuzz.sh run NAME [libFuzzer flags]}
    shift 2
    configure
    cmake --build "$build" -j "$(nproc)" --target "fuzz_$t"
    fuzz_one "$t" "${RWKVPP_FUZZ_SECONDS:-600}" "$@"
    ;;
  *)
    echo "usage: $0 ci | run NAME [libFuzzer flags]" >&2
    exit 2
    ;;
esac
