// Batch invariance on the CUDA backend (its invariant products, kernels/cuda/imma.cuh): a token's
// results are bit-identical whatever else shares its step. Products: rows 1, 7, 64 and 257 of one
// input (and rows taken from the middle, and one row alone) against the same rows of the
// 257-row product, every weight dtype, with and without epilogues, shapes with one and several
// K slices and the plain kernel's shapes; and near the CPU's product. Whole models (RWKV-4, 6,
// 7 fixtures, every dtype): token by token with and without CUDA graphs, in chunks, as part of
// a batch of 64 prompts (2,500+ rows) and of a decode batch of 64, against each other bit for
// bit, and near the CPU and the reference. Without a GPU every test here skips.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "catch.h"
#include "cuda_skip.h"
#include "helpers.h"
#include "kernels/cuda_test_util.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;
using rwkvpp::cuda_test::Gpu;
using rwkvpp::cuda_test::Rng;
using rwkvpp::cuda_test::rel_err;

namespace {

bool same_rows(const std::vector<float>& a, size_t a_row, const std::vector<float>& b, size_t b_row,
               size_t rows, size_t width) {
  return std::memcmp(a.data() + a_row * width, b.data() + b_row * width, rows * width * 4) == 0;
}

// Normalised error of the product against the CPU's (fp32 arithmetic on the same weights): the
// input is rounded to 16 bits for fp16 and int8 (11-bit mantissa after the per-token scale),
// split into two bf16 terms for bf16 (about 2^-17), kept for fp32.
double product_tol(DType dt) {
  switch (dt) {
    case DType::F32: return 1e-5;
    case DType::BF16: return 1e-4;
    case DType::F16:
    case DType::I8: return 2e-3;
    case DType::I4: break;
  }
  return 0;
}

}  // namespace

TEST_CASE("CUDA invariant products: any rows of a batch equal those rows of the whole, bit for bit",
          "[cuda][invariance]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu(true);
  REQUIRE(gpu.be().batch_invariant());
  auto cpu = make_cpu_backend(2);
  Rng rng(21);
  struct Shape {
    int64_t R, K;
  };
  // 2048 x 2048 and 64 x 4096 cut K into several slices; 129 x 1000 is the plain kernel's for
  // int8 (K % 16 != 0); 77 x 24 for every dtype's MMA tail handling (one partial tile);
  // 8192 x 1024 takes, by row count, each of the three MMA kernels with several slices (the few
  // tokens' launch up to 32 input columns, the split one at 33 and 64, the folding one at 257).
  const std::vector<Shape> shapes = {{300, 256}, {129, 1000}, {2048, 2048}, {64, 4096}, {77, 24},
                                     {8192, 1024}};
  const int64_t N = 257;
  for (const Shape& sh : shapes)
    for (DType dt : {DType::F16, DType::BF16, DType::I8, DType::F32}) {
      INFO("R " << sh.R << " K " << sh.K << " " << dtype_name(dt));
      const auto w = rng.uniform(size_t(sh.R * sh.K), -0.05f, 0.05f);
      const auto x = rng.uniform(size_t(N * sh.K), -3.0f, 3.0f);
      const auto gate = rng.uniform(size_t(N * sh.R), -1.0f, 1.0f);
      const HostTensor wt = HostTensor::from_f32(w, {sh.R, sh.K});
      std::unique_ptr<DeviceBuffer> own_g, own_c;
      const WeightView Wg = gpu.be().load_weight(wt, dt, own_g), Wc = cpu->load_weight(wt, dt, own_c);
      float* gx = gpu.put(x);
      float* gg = gpu.put(gate);
      float* gy = gpu.zeros(size_t(N * sh.R));
      float* scratch = gpu.zeros(size_t(N * sh.R));
      auto product = [&](int64_t row0, int64_t n, int kind) {
        // kind 0: the product; 1: sigmoid, gate and accumulate onto 1.0; 2: relu(x)^2 folded.
        std::vector<float> ones(size_t(n * sh.R), 1.0f);
        gpu.set(gy, ones);
        Backend::Epilogue ep;
        if (kind == 1) {
          ep.has_act = true;
          ep.act = Unary::Sigmoid;
          ep.gate = gg + row0 * sh.R;
          ep.accumulate = true;
        }
        if (kind == 0) gpu.be().matmul(Wg, gx + row0 * sh.K, gy, n);
        else if (kind == 1) gpu.be().matmul_ex(Wg, gx + row0 * sh.K, gy, n, ep, scratch);
        else gpu.be().matmul_ex_relu_square_x(Wg, gx + row0 * sh.K, gy, n, {}, scratch);
        return gpu.get(gy, size_t(n * sh.R));
      };
      for (int kind : {0, 1, 2}) {
        INFO("kind " << kind);
        if (kind == 2) gx = gpu.put(x);  // relu_square_x may overwrite its input
        const auto full = product(0, N, kind);
        for (int64_t n : {1, 7, 20, 33, 64})
          CHECK(same_rows(product(0, n, kind), 0, full, 0, size_t(n), size_t(sh.R)));
        CHECK(same_rows(product(100, 7, kind), 0, full, 100, 7, size_t(sh.R)));
        CHECK(same_rows(product(200, 1, kind), 0, full, 200, 1, size_t(sh.R)));
        if (kind == 0) {
          std::vector<float> ref(size_t(N * sh.R));
          cpu->matmul(Wc, x.data(), ref.data(), N);
          const double e = rel_err(full, ref);
          std::printf("[cuda] invariant matmul %-5s R %5lld K %5lld  normalised error vs CPU %.2e\n",
                      dtype_name(dt), (long long)sh.R, (long long)sh.K, e);
          CHECK(e < product_tol(dt));
        }
      }
    }
}

TEST_CASE("CUDA invariant products: a group of products in one launch equals each alone, bit for bit",
          "[cuda][invariance]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu(true);
  Rng rng(22);
  const int64_t R = 2048, K = 2048, N = 40;
  for (DType dt : {DType::F16, DType::BF16, DType::I8}) {
    INFO(dtype_name(dt));
    std::unique_ptr<DeviceBuffer> own[3];
    WeightView W[3];
    float *x[3], *y[3], *alone = gpu.zeros(size_t(N * R));
    for (int i = 0; i < 3; ++i) {
      const auto w = rng.uniform(size_t(R * K), -0.05f, 0.05f);
      W[i] = gpu.be().load_weight(HostTensor::from_f32(w, {R, K}), dt, own[i]);
      x[i] = gpu.put(rng.uniform(size_t(N * K), -3.0f, 3.0f));
      y[i] = gpu.zeros(size_t(N * R));
    }
    for (int64_t n : {1, 5, 16, 40}) {
      INFO("n " << n);
      Backend::MatmulJob jobs[3];
      for (int i = 0; i < 3; ++i) jobs[i] = {&W[i], x[i], y[i], {}};
      jobs[1].ep.has_act = true;
      jobs[1].ep.act = Unary::Sigmoid;  // one epilogue among plain products
      gpu.be().matmul_group(jobs, 3, n);
      for (int i = 0; i < 3; ++i) {
        INFO("product " << i);
        const auto grouped = gpu.get(y[i], size_t(n * R));
        if (i == 1) gpu.be().matmul_ex(W[i], x[i], alone, n, jobs[1].ep, nullptr);
        else gpu.be().matmul(W[i], x[i], alone, n);
        CHECK(same_rows(grouped, 0, gpu.get(alone, size_t(n * R)), 0, size_t(n), size_t(R)));
        // and the first row as in a batch of N
        if (i != 1) {
          gpu.be().matmul(W[i], x[i], alone, N);
          CHECK(same_rows(grouped, 0, gpu.get(alone, size_t(N * R)), 0, 1, size_t(R)));
        }
      }
    }
  }
}

namespace {

struct Fixture {
  const char* name;
  double tol_ref_f32;
};

std::vector<int32_t> fixture_tokens(const char* name) {
  auto j = nlohmann::json::parse(read_file(fixture(std::string(name) + ".json")));
  return j.at("tokens").get<std::vector<int32_t>>();
}

// The logits of `tokens` in slot 0 when every step also carries the other sequences' work:
// (a) 63 other prompts in the same step (rotations of the same tokens, all read at once), or
// (b) a decode batch: every sequence's first `warm` tokens read alone, then one token of each of
// the 64 per step.
std::vector<float> in_prompt_batch(LocalModel& m, const std::vector<int32_t>& tokens) {
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < 64; ++i) {
    std::vector<int32_t> t = tokens;
    std::rotate(t.begin(), t.begin() + int64_t(i % t.size()), t.end());
    t.resize(t.size() - (i % 7));
    seqs.push_back(t);
  }
  for (int s = 0; s < 64; ++s) m.stage->state().reset(s);
  return m.run_batch(seqs)[0];
}

std::vector<float> in_decode_batch(LocalModel& m, const std::vector<int32_t>& tokens, size_t warm) {
  const int S = 64;
  const int64_t V = m.vocab;
  std::vector<float> out;
  for (int s = 0; s < S; ++s) {
    m.stage->state().reset(s);
    std::vector<int32_t> pre(tokens.begin(), tokens.begin() + int64_t(warm));
    if (s) pre[0] = (pre[0] + s) % int32_t(V);
    const auto l = m.run(s, pre, int(warm));
    if (s == 0) out = l;
  }
  for (size_t p = warm; p < tokens.size(); ++p) {
    std::vector<std::vector<int32_t>> step;
    for (int s = 0; s < S; ++s) step.push_back({s == 0 ? tokens[p] : int32_t((tokens[p] + s) % V)});
    const auto l = m.run_batch(step);
    out.insert(out.end(), l[0].begin(), l[0].end());
  }
  return out;
}

}  // namespace

TEST_CASE("CUDA invariant models: token by token, in chunks, in batches and with graphs, bit for bit",
          "[cuda][invariance]") {
  RWKVPP_REQUIRE_CUDA();
  for (const Fixture f : {Fixture{"hf-rwkv4/hf-rwkv4-small", 5e-5}, Fixture{"pip-rwkv/pip-rwkv6-small", 2e-4},
                          Fixture{"pip-rwkv/pip-rwkv7-small", 2e-4}}) {
    CheckpointSource src(read_checkpoint(fixture(std::string(f.name) + ".safetensors")));
    const auto ref = read_f64(fixture(std::string(f.name) + ".logits.f64"));
    const auto tokens = fixture_tokens(f.name);
    for (DType dt : {DType::F16, DType::BF16, DType::I8, DType::F32}) {
      INFO(f.name << " " << dtype_name(dt));
      auto be = make_cuda_backend(0);
      REQUIRE(be->set_batch_invariant(true));
      LocalModel gpu(src, dt, 64, std::move(be));
      const auto one = gpu.run(0, tokens, 1);  // decode steps; recorded graphs from the second on
      gpu.stage->state().reset(0);
      CHECK(gpu.run(0, tokens, 1) == one);     // replayed graphs
      for (int chunk : {5, 16, int(tokens.size())}) {
        INFO("chunk " << chunk);
        gpu.stage->state().reset(0);
        CHECK(gpu.run(0, tokens, chunk) == one);
      }
      CHECK(in_prompt_batch(gpu, tokens) == one);
      CHECK(in_decode_batch(gpu, tokens, 10) == one);
      gpu.stage->use_graphs(false);
      gpu.stage->state().reset(0);
      CHECK(gpu.run(0, tokens, 1) == one);
      // Near the CPU and the reference (16-bit inputs for fp16 and int8, as the cuBLAS path).
      LocalModel cpu(src, dt, 1);
      const double e_cpu = max_abs_diff(one, cpu.run(0, tokens, 1));
      const double e_ref = max_abs_diff(one, ref);
      std::printf("[cuda] invariant %-26s %-4s max|gpu-cpu| %.2e  max|gpu-ref| %.2e\n", f.name,
                  dtype_name(dt), e_cpu, e_ref);
      const double tol = dt == DType::F32 ? 5e-5 : dt == DType::BF16 ? 1e-3 : 3e-2;
      CHECK(e_cpu < tol);
      if (dt != DType::I8) CHECK(e_ref < f.tol_ref_f32 + tol + (dt == DType::BF16 ? 5e-2 : 0.0));
    }
  }
}
