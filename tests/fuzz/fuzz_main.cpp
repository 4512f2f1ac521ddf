// The libFuzzer entry of one harness: built once per target as fuzz_<name>, with the target's
// name in RWKVPP_FUZZ_TARGET (tests/fuzz/CMakeLists.txt, -DRWKVPP_FUZZ=ON).
//   build-fuzz/tests/fuzz/fuzz_safetensors -jobs=1 -max_total_time=60 CORPUS_COPY
//   tests/fuzz/corpus/safetensors
#include <cstdio>
#include <cstdlib>

#include "fuzz/targets.h"

namespace {

const rwkvpp::fuzz::Target& target() {
  static const rwkvpp::fuzz::Target* t = [] {
    const rwkvpp::fuzz::Target* found = rwkvpp::fuzz::find_target(RWKVPP_FUZZ_TARGET);
    if (!found) {
      std::fprintf(stderr, "no fuzz target named %s\n", RWKVPP_FUZZ_TARGET);
      std::abort();
    }
    return found;
  }();
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Anything but a normal return (another exception, an abort, a sanitizer report) is a finding.
  target().run({data, size});
  return 0;
}
