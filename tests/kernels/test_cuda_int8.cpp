// int8 weights on the CUDA backend against the CPU backend (the reference, itself tested in
// test_int8.cpp): the matmul for every token count the GEMV takes (1..8), its passes of 8 (9 to
// 16), the dequantise-and-cuBLAS path (17 and more, in tiles when the matrix is large), with
// widths that are multiples of 16 (the 16-byte int8 loads) and widths that are not, and with an
// unaligned x (the scalar fallback); then whole models in int8, GPU against CPU. Outputs are
// poisoned with NaN first, so an unwritten element fails. Each case prints what it measured.
// Without a GPU every test here skips (tests/cuda_skip.h).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "common/tensor.h"
#include "cuda_skip.h"
#include "helpers.h"
#include "kernels/backend.h"
#include "shards/checkpoint.h"
#include "kernels/cuda_test_util.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;
using rwkvpp::cuda_test::rel_err;

namespace {

std::vector<float> normal(std::mt19937_64& g, size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

}  // namespace

TEST_CASE("CUDA int8 matmul matches the CPU backend for every path", "[cuda][int8]") {
  RWKVPP_REQUIRE_CUDA();
  auto gpu = make_cuda_backend(0);
  gpu->set_batch_invariant(false);  // the GEMV and cuBLAS paths (the invariant ones: test_cuda_invariance.cpp)
  auto cpu = make_cpu_backend(0);
  std::mt19937_64 g(2026);
  struct Shape {
    int64_t R, K;
  };
  // K multiple of 16 (vector GEMV) or not (scalar GEMV); R odd, below and above a block's rows.
  const std::vector<Shape> shapes = {{77, 512}, {300, 1024}, {65, 100}, {129, 37}, {33, 16}, {5, 1},
                                      {150, 4096}};  // K split over warps at 1-2 tokens
  std::vector<int64_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 33, 257};
  double worst_gemv = 0, worst_gemm = 0;
  for (const Shape& sh : shapes) {
    auto w = normal(g, size_t(sh.R * sh.K), 0.05f);
    w[0] = 1.5f;  // an outlier in row 0
    HostTensor wt = HostTensor::from_f32(w, {sh.R, sh.K});
    std::unique_ptr<DeviceBuffer> own_g, own_c;
    const WeightView Wg = gpu->load_weight(wt, DType::I8, own_g);
    const WeightView Wc = cpu->load_weight(wt, DType::I8, own_c);
    REQUIRE(Wg.scales != nullptr);
    for (int64_t n : tokens) {
      for (bool unaligned : {false, true}) {
        INFO("R " << sh.R << " K " << sh.K << " n " << n << (unaligned ? " x unaligned" : ""));
        auto x = normal(g, size_t(n * sh.K), 1.0f);
        std::vector<float> yc(size_t(n * sh.R));
        cpu->matmul(Wc, x.data(), yc.data(), n);
        // x one float past a 16-byte boundary when `unaligned`.
        const size_t off = unaligned ? 1 : 0;
        DeviceBuffer xb(gpu.get(), (x.size() + 4) * 4), yb(gpu.get(), yc.size() * 4 + 4);
        gpu->upload(xb.f32() + off, x.data(), x.size() * 4);
        const std::vector<float> nan(yc.size(), std::numeric_limits<float>::quiet_NaN());
        gpu->upload(yb.get(), nan.data(), nan.size() * 4);
        gpu->matmul(Wg, xb.f32() + off, yb.f32(), n);
        std::vector<float> yg(yc.size());
        gpu->download(yg.data(), yb.get(), yg.size() * 4);
        const double e = rel_err(yg, yc);
        if (n <= 16) {
          // GEMV: x in fp32, fp32 sums; only the order of the sums and where the scale is
          // applied (sum(q x) s against sum((q s) x)) differ.
          worst_gemv = std::max(worst_gemv, e);
          CHECK(e < 1e-5);
        } else {
          // cuBLAS on fp16 x (11-bit mantissa) and the exact fp16 integers q: as the fp16 path.
          worst_gemm = std::max(worst_gemm, e);
          CHECK(e < 1e-2);
        }
      }
    }
  }
  // A matrix larger than one dequantised tile (~16 MiB of fp16): 4200 rows of 4096 -> tiles of
  // 2048, 2048 and 104 rows.
  {
    const int64_t R = 4200, K = 4096, n = 40;
    auto w = normal(g, size_t(R * K), 0.02f);
    HostTensor wt = HostTensor::from_f32(w, {R, K});
    std::unique_ptr<DeviceBuffer> own_g, own_c;
    const WeightView Wg = gpu->load_weight(wt, DType::I8, own_g);
    const WeightView Wc = cpu->load_weight(wt, DType::I8, own_c);
    auto x = normal(g, size_t(n * K), 1.0f);
    std::vector<float> yc(size_t(n * R)), yg(yc.size());
    cpu->matmul(Wc, x.data(), yc.data(), n);
    DeviceBuffer xb(gpu.get(), x.size() * 4), yb(gpu.get(), yc.size() * 4);
    gpu->upload(xb.get(), x.data(), x.size() * 4);
    const std::vector<float> nan(yc.size(), std::numeric_limits<float>::quiet_NaN());
    gpu->upload(yb.get(), nan.data(), nan.size() * 4);
    gpu->matmul(Wg, xb.f32(), yb.f32(), n);
    gpu->download(yg.data(), yb.get(), yg.size() * 4);
    const double e = rel_err(yg, yc);
    worst_gemm = std::max(worst_gemm, e);
    CHECK(e < 1e-2);
  }
  std::printf("[cuda] int8 matmul worst normalised error: GEMV (n <= 16) %.3g, cuBLAS (n > 16) %.3g\n",
              worst_gemv, worst_gemm);
}

namespace {

struct Fixture {
  const char* name;  // under fixtures/, without extension
  double tol_ref;    // int8 vs the reference: the CPU test's bound (test_int8.cpp)
};

void check_model_int8(const Fixture& f) {
  CheckpointSource src(read_checkpoint(fixture(std::string(f.name) + ".safetensors")));
  const auto ref = read_f64(fixture(std::string(f.name) + ".logits.f64"));
  const auto tokens = nlohmann::json::parse(read_file(fixture(std::string(f.name) + ".json")))
                          .at("tokens")
                          .get<std::vector<int32_t>>();
  LocalModel gpu(src, DType::I8, 4, fast_cuda_backend());
  LocalModel cpu(src, DType::I8, 4);
  const auto g1 = gpu.run(0, tokens, 1);
  const auto c1 = cpu.run(0, tokens, 1);
  const double e_cpu = max_abs_diff(g1, c1), e_ref = max_abs_diff(g1, ref);
  // Token by token the GEMV keeps x in fp32: GPU and CPU differ by summation order only, as
  // fp32 does (docs/cuda.md: 1.4e-6).
  CHECK(e_cpu < 5e-5);
  CHECK(e_ref < f.tol_ref);
  // Chunks of up to 8 tokens run every matrix through the GEMV (x fp32). Chunks of 16 run the
  // int8 matrices through two GEMV passes, but RWKV-6/7's low-rank matrices stay fp16 and take
  // cuBLAS on fp16 x above 8 tokens (measured on an H100: 2.7e-3 for RWKV-6); the whole prompt
  // (40 or 48 tokens) runs cuBLAS on fp16 x, which moves logits as the fp16 path does (up to
  // ~5e-3 there, bound 2e-2).
  double e_gemv = 0, e_gemm = 0;
  for (int chunk : {5, 8, 16, int(tokens.size())}) {
    INFO("chunk " << chunk);
    gpu.stage->state().reset(1);
    const double e = max_abs_diff(gpu.run(1, tokens, chunk), g1);
    if (chunk <= 8) {
      e_gemv = std::max(e_gemv, e);
      CHECK(e < 5e-5);
    } else {
      e_gemm = std::max(e_gemm, e);
      CHECK(e < 2e-2);
    }
  }
  // One batch of three sequences (27 tokens: cuBLAS on fp16 x) against the CPU.
  const std::vector<std::vector<int32_t>> seqs = {
      std::vector<int32_t>(tokens.begin(), tokens.begin() + 17), {tokens[20]},
      std::vector<int32_t>(tokens.begin() + 5, tokens.begin() + 14)};
  for (int s = 0; s < 3; ++s) {
    gpu.stage->state().reset(s);
    cpu.stage->state().reset(s);
  }
  const auto gb = gpu.run_batch(seqs), cb = cpu.run_batch(seqs);
  double e_batch = 0;
  for (size_t i = 0; i < seqs.size(); ++i) e_batch = std::max(e_batch, max_abs_diff(gb[i], cb[i]));
  CHECK(e_batch < 2e-2);
  std::printf("[cuda] %-26s int8 max|gpu-cpu| %.2e  max|gpu-ref| %.2e  chunks<=8 %.2e  16 and whole prompt %.2e  batch %.2e\n",
              f.name, e_cpu, e_ref, e_gemv, e_gemm, e_batch);
}

}  // namespace

TEST_CASE("CUDA int8 models match the CPU backend's int8 (RWKV-4, 6, 7)", "[cuda][int8]") {
  RWKVPP_REQUIRE_CUDA();
  for (const Fixture& f : {Fixture{"hf-rwkv4/hf-rwkv4-small", 1e-1}, Fixture{"pip-rwkv/pip-rwkv6-small", 2.5e-1},
                           Fixture{"pip-rwkv/pip-rwkv7-small", 1.8e-1}}) {
    INFO(f.name);
    check_model_int8(f);
  }
}
