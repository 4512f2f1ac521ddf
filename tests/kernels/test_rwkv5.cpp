// RWKV-5.1 and 5.2 on the CPU backend against rwkv.cpp's tiny byte-level models
// (../shared/fixtures/rwkv-cpp-tiny: 12 layers, n_embd 64, 8 heads of 8): the logits after the
// bytes 34, 105, 110 from an empty state, for fp32, fp16 and bf16 weight storage, token by
// token and as one chunk, and a batch of sequences of different lengths.
#include <string>

#include "catch.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

struct TinyModel {
  const char* name;  // "5v1-730K"
  RwkvVersion version;
  bool gated;
};

const TinyModel kModels[] = {
    {"5v1-730K", RwkvVersion::V5_1, false},  // per-head decay, time_first, no gate
    {"5v2-730K", RwkvVersion::V5_2, true},   // per-channel decay, time_faaaa, gate
};

Checkpoint tiny_checkpoint(const TinyModel& m) {
  return read_checkpoint(fixture(std::string("rwkv-cpp-tiny/tiny-rwkv-") + m.name + "-FP32.bin"));
}

std::vector<float> expected(const TinyModel& m) {
  return read_f32(fixture(std::string("rwkv-cpp-tiny/expected-logits-") + m.name + ".bin"));
}

// The logits after the last of `tokens`, fed from a fresh state in chunks of `chunk`.
std::vector<float> last_logits(LocalModel& lm, const std::vector<int32_t>& tokens, int chunk) {
  lm.stage->state().reset(0);
  auto all = lm.run(0, tokens, chunk);
  return {all.end() - lm.vocab, all.end()};
}

const std::vector<int32_t> kPrompt = {34, 105, 110};  // "in

}  // namespace

TEST_CASE("RWKV-5.x config is inferred from rwkv.cpp's tiny models", "[kernels][v5]") {
  for (const TinyModel& m : kModels) {
    INFO(m.name);
    Checkpoint ck = tiny_checkpoint(m);
    CHECK(ck.tensors.count("blocks.0.att.gate.weight") == (m.gated ? 1u : 0u));
    ModelConfig c = infer_config(ck);
    CHECK(c.version == m.version);
    CHECK(c.n_layer == 12);
    CHECK(c.n_embd == 64);
    CHECK(c.n_head == 8);
    CHECK(c.head_size == 8);
    CHECK(c.vocab_size == 256);
  }
}

TEST_CASE("RWKV-5.x reproduces rwkv.cpp's expected logits token by token and in one chunk",
          "[kernels][v5]") {
  for (const TinyModel& m : kModels) {
    INFO(m.name);
    CheckpointSource src(tiny_checkpoint(m));
    auto want = expected(m);
    REQUIRE(want.size() == 256);
    LocalModel lm(src, DType::F32, 1);
    // Measured max |diff| 3.4e-6 (5.1) and 3.3e-6 (5.2); logits reach |7.2|.
    CHECK(max_abs_diff(last_logits(lm, kPrompt, 1), want) < 1e-4);
    CHECK(max_abs_diff(last_logits(lm, kPrompt, 3), want) < 1e-4);
  }
}

TEST_CASE("RWKV-5.x with fp16 and bf16 weight storage", "[kernels][v5]") {
  for (const TinyModel& m : kModels) {
    INFO(m.name);
    CheckpointSource src(tiny_checkpoint(m));
    auto want = expected(m);
    {
      // These models were trained in fp32, so fp16 rounds every matrix weight by up to 2^-12
      // relative. Through 12 layers and the head the logits (|l| up to 7.2) move by
      // measured 4.5e-3 (5.1) and 2.5e-3 (5.2); the bound leaves 3x room.
      LocalModel lm(src, DType::F16, 1);
      CHECK(max_abs_diff(last_logits(lm, kPrompt, 3), want) < 1.5e-2);
    }
    {
      // bf16 rounds by up to 2^-9 relative, 8x fp16's: measured 0.020 (5.1) and 0.029 (5.2).
      LocalModel lm(src, DType::BF16, 1);
      CHECK(max_abs_diff(last_logits(lm, kPrompt, 3), want) < 0.1);
    }
  }
}

TEST_CASE("RWKV-5.x batch of sequences of different lengths equals each run alone",
          "[kernels][v5]") {
  const std::string text = "\"in the beginning the state was empty, then bytes arrived.";
  std::vector<int32_t> bytes(text.begin(), text.end());
  std::vector<std::vector<int32_t>> seqs = {
      {bytes.begin(), bytes.begin() + 3},
      {bytes.begin() + 4, bytes.end()},
      {bytes.begin() + 20, bytes.begin() + 21},
      {bytes.begin() + 9, bytes.begin() + 35},
  };
  for (const TinyModel& m : kModels) {
    INFO(m.name);
    CheckpointSource src(tiny_checkpoint(m));
    LocalModel batch(src, DType::F32, int(seqs.size()));
    auto got = batch.run_batch(seqs);
    // The first sequence is the fixture's prompt: its last row is the expected logits.
    auto want0 = expected(m);
    CHECK(max_abs_diff(std::vector<float>(got[0].end() - 256, got[0].end()), want0) < 1e-4);
    LocalModel alone(src, DType::F32, 1);
    for (size_t i = 0; i < seqs.size(); ++i) {
      alone.stage->state().reset(0);
      auto want = alone.run(0, seqs[i], 1);
      INFO("sequence " << i);
      CHECK(max_abs_diff(got[i], want) < 2e-5);
    }
  }
}
