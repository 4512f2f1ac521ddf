// Whole models on the CUDA backend, in fp32, fp16 and bf16 weights: against the reference
// logits made outside the project (../shared/fixtures) and against the CPU backend, token by
// token, in chunks and as one batch of several sequences. Token-by-token steps run the GEMV
// (x stays fp32); chunks and batches of more than 8 tokens run cuBLAS, which rounds x to the
// weight dtype, hence the wider 16-bit tolerances there. Each case prints what it measured.
// Without a GPU every test here skips (tests/cuda_skip.h).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "catch.h"
#include "cuda_skip.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

struct Fixture {
  const char* name;   // under fixtures/, without extension
  size_t n_tokens;
  double tol_ref_f32;  // token by token vs the reference, fp32 weights (the CPU tests' bound)
};

// The fixtures' weights are fp16-exact (see fixtures/README.md), so fp16 storage changes no
// weight; bf16 rounds them (8-bit mantissa), which moves the logits by about 1e-2.
double tol_ref(const Fixture& f, DType dt) { return dt == DType::BF16 ? 5e-2 : f.tol_ref_f32; }
// Chunks and batches against token by token / the CPU: fp32 differs only in summation order;
// bf16 splits x into two bf16 terms up to 128 tokens (exact to ~2^-17), so it stays close too;
// fp16 rounds x to fp16 after scaling (11-bit mantissa) on the cuBLAS path. Logits here lie
// within about +-4. Measured on an H100: docs/cuda.md.
double tol_chunk(DType dt) {
  switch (dt) {
    case DType::F32: return 5e-5;
    case DType::F16: return 2e-2;
    case DType::BF16: return 2e-4;
    case DType::I8: break;  // int8 has its own test (test_cuda_int8.cpp)
  }
  return 0;
}

std::vector<int32_t> fixture_tokens(const Fixture& f) {
  auto j = nlohmann::json::parse(read_file(fixture(std::string(f.name) + ".json")));
  return j.at("tokens").get<std::vector<int32_t>>();
}

void check_model(const Fixture& f) {
  CheckpointSource src(read_checkpoint(fixture(std::string(f.name) + ".safetensors")));
  const auto ref = read_f64(fixture(std::string(f.name) + ".logits.f64"));
  const auto tokens = fixture_tokens(f);
  REQUIRE(tokens.size() == f.n_tokens);
  const int64_t vocab = src.config().vocab_size;
  REQUIRE(ref.size() == f.n_tokens * size_t(vocab));
  // Three sequences of different lengths (one of a single token) in one batch.
  const std::vector<std::vector<int32_t>> seqs = {
      std::vector<int32_t>(tokens.begin(), tokens.begin() + 17), {tokens[20]},
      std::vector<int32_t>(tokens.begin() + 5, tokens.begin() + 14)};

  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    INFO(f.name << " " << dtype_name(dt));
    LocalModel gpu(src, dt, 4, fast_cuda_backend());
    LocalModel cpu(src, dt, 4);
    const auto g1 = gpu.run(0, tokens, 1);
    const auto c1 = cpu.run(0, tokens, 1);
    const double e_ref = max_abs_diff(g1, ref), e_cpu = max_abs_diff(g1, c1);
    CHECK(e_ref < tol_ref(f, dt));
    CHECK(e_cpu < 5e-5);
    double e_chunk = 0;
    for (int chunk : {5, 16, int(f.n_tokens)}) {
      INFO("chunk " << chunk);
      gpu.stage->state().reset(1);
      const auto gc = gpu.run(1, tokens, chunk);
      const double e = max_abs_diff(gc, g1);
      e_chunk = std::max(e_chunk, e);
      CHECK(e < tol_chunk(dt));
      CHECK(max_abs_diff(gc, ref) < tol_ref(f, dt) + tol_chunk(dt));
    }
    for (int s = 0; s < 3; ++s) {
      gpu.stage->state().reset(s);
      cpu.stage->state().reset(s);
    }
    const auto gb = gpu.run_batch(seqs), cb = cpu.run_batch(seqs);
    double e_batch = 0;
    for (size_t i = 0; i < seqs.size(); ++i) e_batch = std::max(e_batch, max_abs_diff(gb[i], cb[i]));
    CHECK(e_batch < tol_chunk(dt));
    std::printf("[cuda] %-26s %-4s max|gpu-ref| %.2e  max|gpu-cpu| %.2e  chunked %.2e  batch %.2e\n",
                f.name, dtype_name(dt), e_ref, e_cpu, e_chunk, e_batch);
  }
}

}  // namespace

TEST_CASE("CUDA backend runs RWKV-4 (hf-rwkv4-small) like transformers and the CPU backend",
          "[cuda][v4]") {
  RWKVPP_REQUIRE_CUDA();
  // transformers in float64; an fp32 implementation lands within about 1e-5 (logits ~4).
  check_model({"hf-rwkv4/hf-rwkv4-small", 48, 5e-5});
}

TEST_CASE("CUDA backend runs RWKV-6 (pip-rwkv6-small) like the rwkv package and the CPU backend",
          "[cuda][v6]") {
  RWKVPP_REQUIRE_CUDA();
  check_model({"pip-rwkv/pip-rwkv6-small", 40, 2e-4});  // the reference runs in fp32
}

TEST_CASE("CUDA backend runs RWKV-7 (pip-rwkv7-small) like the rwkv package and the CPU backend",
          "[cuda][v7]") {
  RWKVPP_REQUIRE_CUDA();
  check_model({"pip-rwkv/pip-rwkv7-small", 40, 2e-4});
}
