// RWKV-6 on the CPU backend against ChatRWKV's rwkv package 0.8.32 ('cpu fp32', token by token;
// ../shared/fixtures/pip-rwkv/pip-rwkv6-small): fp32, fp16 and bf16 weight storage, chunked
// prompts and a batch of sequences of different lengths.
#include <nlohmann/json.hpp>

#include "catch.h"
#include "common/error.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

const char* kModel = "pip-rwkv/pip-rwkv6-small";

std::vector<int32_t> pip_tokens() {
  auto j = nlohmann::json::parse(read_file(fixture(std::string(kModel) + ".json")));
  return j.at("tokens").get<std::vector<int32_t>>();
}

CheckpointSource pip_source() {
  return CheckpointSource(read_checkpoint(fixture(std::string(kModel) + ".safetensors")));
}

}  // namespace

TEST_CASE("RWKV-6 config is inferred from the official names", "[kernels][v6]") {
  CheckpointSource src = pip_source();
  const ModelConfig& c = src.config();
  CHECK(c.version == RwkvVersion::V6);
  CHECK(c.n_layer == 4);
  CHECK(c.n_embd == 128);
  CHECK(c.n_head == 2);
  CHECK(c.head_size == 64);
  CHECK(c.ffn_dim == 448);
  CHECK(c.vocab_size == 300);
}

TEST_CASE("RWKV-6 matches the rwkv package token by token and in chunks", "[kernels][v6]") {
  CheckpointSource src = pip_source();
  auto ref = read_f64(fixture(std::string(kModel) + ".logits.f64"));
  auto tokens = pip_tokens();
  REQUIRE(tokens.size() == 40);
  REQUIRE(ref.size() == 40 * 300);
  LocalModel m(src, DType::F32, 2);
  auto by_token = m.run(0, tokens, 1);
  // The reference computes in fp32 too; measured max |diff| 4.4e-6 (5.7e-6 in chunks of 7).
  CHECK(max_abs_diff(by_token, ref) < 2e-4);
  for (int chunk : {7, 40}) {
    m.stage->state().reset(1);
    auto chunked = m.run(1, tokens, chunk);
    INFO("chunk " << chunk);
    CHECK(max_abs_diff(chunked, ref) < 2e-4);
    // Same fp32 math in another grouping: only summation order differs.
    CHECK(max_abs_diff(chunked, by_token) < 2e-5);
  }
}

TEST_CASE("RWKV-6 with fp16 and bf16 weight storage", "[kernels][v6]") {
  CheckpointSource src = pip_source();
  auto ref = read_f64(fixture(std::string(kModel) + ".logits.f64"));
  auto tokens = pip_tokens();
  LocalModel f32(src, DType::F32, 1);
  auto base = f32.run(0, tokens, 40);
  {
    // Every parameter of the fixture is an fp16 value, so fp16 matrices hold exactly the
    // same numbers (vectors stay fp32): only the blocking of the widened matmul may differ.
    LocalModel m(src, DType::F16, 1);
    auto got = m.run(0, tokens, 40);
    CHECK(max_abs_diff(got, base) < 1e-5);
    CHECK(max_abs_diff(got, ref) < 2e-4);
  }
  {
    // bf16 keeps 8 significant bits: each matrix weight moves by up to 2^-9 relative (about
    // 0.1% rms). These errors add up with random signs through every matmul of 4 layers and
    // the head, so the logits (|l| up to 4.1) move by about 1% of their scale: measured max
    // 0.038. The bound, 0.1 (2.5% of the largest logit), leaves 2.5x room.
    LocalModel m(src, DType::BF16, 1);
    auto got = m.run(0, tokens, 40);
    CHECK(max_abs_diff(got, ref) < 0.1);
  }
}

TEST_CASE("RWKV-6 batch of sequences of different lengths equals each run alone", "[kernels][v6]") {
  CheckpointSource src = pip_source();
  auto tokens = pip_tokens();
  std::vector<std::vector<int32_t>> seqs = {
      {tokens.begin(), tokens.begin() + 17},
      {tokens.begin() + 5, tokens.begin() + 7},
      {tokens.begin() + 3, tokens.end()},
      {tokens.begin() + 20, tokens.begin() + 29},
  };
  LocalModel batch(src, DType::F32, int(seqs.size()));
  // Two steps: a prompt chunk per sequence, then more tokens continuing each state.
  std::vector<std::vector<int32_t>> first, second;
  for (auto& s : seqs) {
    size_t cut = (s.size() + 1) / 2;
    first.emplace_back(s.begin(), s.begin() + int64_t(cut));
    second.emplace_back(s.begin() + int64_t(cut), s.end());
  }
  auto out1 = batch.run_batch(first);
  auto out2 = batch.run_batch(second);
  LocalModel alone(src, DType::F32, 1);
  for (size_t i = 0; i < seqs.size(); ++i) {
    alone.stage->state().reset(0);
    auto want = alone.run(0, seqs[i], 1);
    std::vector<float> got = out1[i];
    got.insert(got.end(), out2[i].begin(), out2[i].end());
    INFO("sequence " << i);
    CHECK(max_abs_diff(got, want) < 2e-5);
  }
}

TEST_CASE("RWKV-6 block errors name the layer and the tensor", "[kernels][v6]") {
  CheckpointSource src = pip_source();
  auto be = make_cpu_backend(1);
  TensorMap t = src.layer(3);
  t["att.time_maa_w2"].shape = {5, 16, 256};  // same element count, wrong shape
  std::string m = "(no error)";
  try {
    make_block(*be, src.config(), 3, t, DType::F32);
  } catch (const Error& e) {
    m = e.what();
  }
  INFO(m);
  CHECK(m.find("layer 3") != std::string::npos);
  CHECK(m.find("att.time_maa_w2") != std::string::npos);
}
