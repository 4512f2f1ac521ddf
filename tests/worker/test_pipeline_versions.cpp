// Every RWKV version through the pipeline under mpirun with an uneven partition: the logits must
// equal the single-process run (same batching, so to float rounding), and match the outside
// reference. For RWKV-7 this proves that v_first crosses stage boundaries.
#include <nlohmann/json.hpp>

#include "catch.h"
#include "common/npy.h"
#include "helpers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::vector<float> logits(const std::string& launcher, const std::string& model, const std::string& tokens,
                          const std::string& flags, const std::string& out) {
  auto r = run(launcher + rwkvpp_binary() + " logits -m " + model + " --tokens " + tokens + " --chunk 5 -o " + out +
                   " " + flags, 300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return read_npy_f32(out, nullptr);
}

std::string join(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

TEST_CASE("every RWKV version gives the single-process logits under an uneven pipeline", "[mpi][pipeline][versions]") {
  struct Case {
    const char* name;
    std::string source;   // checkpoint
    std::vector<int32_t> tokens;
    std::string layers;   // uneven 3-stage partition
    std::string ref;      // float64 [T, vocab] reference of the last rows, or float32 last row
    bool ref_last_only;
    double tol;
  };
  auto pip_tokens = [](const char* json) {
    return nlohmann::json::parse(read_file(fixture(json))).at("tokens").get<std::vector<int32_t>>();
  };
  std::vector<Case> cases = {
      {"RWKV-4", fixture("hf-rwkv4/hf-rwkv4-small.safetensors"), pip_tokens("hf-rwkv4/hf-rwkv4-small.json"), "0-0,1-2,3-3",
       fixture("hf-rwkv4/hf-rwkv4-small.logits.f64"), false, 5e-5},
      {"RWKV-5.1", fixture("rwkv-cpp-tiny/tiny-rwkv-5v1-730K-FP32.bin"), {34, 105, 110}, "0-2,3-9,10-11",
       fixture("rwkv-cpp-tiny/expected-logits-5v1-730K.bin"), true, 1e-4},
      {"RWKV-5.2", fixture("rwkv-cpp-tiny/tiny-rwkv-5v2-730K-FP32.bin"), {34, 105, 110}, "0-0,1-10,11-11",
       fixture("rwkv-cpp-tiny/expected-logits-5v2-730K.bin"), true, 1e-4},
      {"RWKV-6", fixture("pip-rwkv/pip-rwkv6-small.safetensors"), pip_tokens("pip-rwkv/pip-rwkv6-small.json"), "0-0,1-2,3-3",
       fixture("pip-rwkv/pip-rwkv6-small.logits.f64"), false, 2e-4},
      {"RWKV-7", fixture("pip-rwkv/pip-rwkv7-small.safetensors"), pip_tokens("pip-rwkv/pip-rwkv7-small.json"), "0-0,1-2,3-3",
       fixture("pip-rwkv/pip-rwkv7-small.logits.f64"), false, 2e-4},
      {"RWKV-7 (rwkv.cpp)", fixture("rwkv-cpp-tiny/tiny-rwkv-7v0-834K-FP32.bin"), {34, 105, 110}, "0-1,2-8,9-11",
       fixture("rwkv-cpp-tiny/expected-logits-7v0-834K.bin"), true, 1e-4},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    TempDir d;
    auto conv = run(rwkvpp_binary() + " convert " + c.source + " -o " + d / "m" + " --shards 3", 120);
    INFO(conv.err);
    REQUIRE(conv.exit_code == 0);
    auto single = logits("", d / "m", join(c.tokens), "", d / "single.npy");
    auto piped = logits("mpirun --allow-run-as-root --oversubscribe -np 3 ", d / "m", join(c.tokens),
                        "--layers " + c.layers, d / "pipe.npy");
    CHECK(max_abs_diff(piped, single) < 1e-6);
    if (c.ref_last_only) {
      auto ref = read_f32(c.ref);
      std::vector<float> last(single.end() - int64_t(ref.size()), single.end());
      CHECK(max_abs_diff(last, ref) < c.tol);
    } else {
      CHECK(max_abs_diff(single, read_f64(c.ref)) < c.tol);
    }
  }
}
