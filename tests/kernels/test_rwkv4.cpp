// RWKV-4 on the CPU backend against transformers' float64 reference (../shared/fixtures/hf-rwkv4).
#include <nlohmann/json.hpp>

#include "catch.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::vector<int32_t> hf_tokens() {
  auto j = nlohmann::json::parse(read_file(fixture("hf-rwkv4/hf-rwkv4-small.json")));
  return j.at("tokens").get<std::vector<int32_t>>();
}

}  // namespace

TEST_CASE("RWKV-4 from official safetensors matches transformers token by token and in chunks", "[kernels][v4]") {
  CheckpointSource src(read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors")));
  auto ref = read_f64(fixture("hf-rwkv4/hf-rwkv4-small.logits.f64"));
  auto tokens = hf_tokens();
  REQUIRE(tokens.size() == 48);
  REQUIRE(ref.size() == 48 * 300);
  LocalModel m(src, DType::F32, 4);
  auto by_token = m.run(0, tokens, 1);
  CHECK(max_abs_diff(by_token, ref) < 5e-5);
  for (int chunk : {5, 16, 48}) {
    m.stage->state().reset(1);
    auto chunked = m.run(1, tokens, chunk);
    INFO("chunk " << chunk);
    CHECK(max_abs_diff(chunked, by_token) < 1e-5);
  }
}
