// int8 weights (--compute-dtype int8) on the CPU backend: the quantiser (kernels/quantize.h),
// the int8 matmul against the fp32 matmul of the dequantised weights, and whole models: exactly
// the fp32 model with dequantised matrices, and within a measured bound of the outside reference.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "catch.h"
#include "common/dtype.h"
#include "common/error.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "helpers.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/quantize.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

struct Quantised {
  std::vector<int8_t> q;
  std::vector<float> scales;
};

Quantised quantise(const std::vector<float>& w, int64_t rows, int64_t cols) {
  Quantised r{std::vector<int8_t>(size_t(rows * cols)), std::vector<float>(size_t(rows))};
  quantize_rows_i8(DType::F32, w.data(), rows, cols, r.q.data(), r.scales.data());
  return r;
}

std::vector<float> random_matrix(std::mt19937_64& g, int64_t rows, int64_t cols, float amp) {
  std::normal_distribution<float> d(0.0f, amp);
  std::vector<float> v(size_t(rows * cols));
  for (float& x : v) x = d(g);
  return v;
}

// Every 2-D ".weight" matrix except the embedding (what --compute-dtype int8 quantises) replaced
// by its dequantised fp32 values: the fp32 model that int8 stands for.
class DequantisedSource final : public TensorSource {
 public:
  // round_embedding: the embedding and the low-rank factors rounded to fp16, as int8 compute
  // stores them.
  explicit DequantisedSource(TensorSource& src, bool round_embedding = false)
      : src_(src), round_embedding_(round_embedding) {}
  const ModelConfig& config() const override { return src_.config(); }
  std::map<std::string, HostTensor> layer(int i) override {
    auto t = src_.layer(i);
    static const std::set<std::string> kLowRank = {
        "att.time_maa_w1", "att.time_maa_w2", "att.time_decay_w1", "att.time_decay_w2",  // v6
        "att.w1", "att.w2", "att.a1", "att.a2", "att.g1", "att.g2", "att.v1", "att.v2"};  // v7
    for (auto& [name, h] : t) {
      h = maybe_dequantise(name, h);
      if (round_embedding_ && kLowRank.count(name)) h = h.converted(DType::F16).converted(DType::F32);
    }
    return t;
  }
  HostTensor tensor(const std::string& name) override {
    if (name == "emb.weight" && round_embedding_)
      return src_.tensor(name).converted(DType::F16).converted(DType::F32);
    return maybe_dequantise(name, src_.tensor(name));
  }

 private:
  static HostTensor maybe_dequantise(const std::string& name, const HostTensor& h) {
    if (h.shape.size() != 2 || !name.ends_with(".weight") || name == "emb.weight") return h;
    const int64_t R = h.shape[0], K = h.shape[1];
    Quantised qz = quantise(h.to_f32(), R, K);
    std::vector<float> w(size_t(R * K));
    dequantize_rows_i8(qz.q.data(), qz.scales.data(), R, K, w.data());
    return HostTensor::from_f32(w, h.shape);
  }
  TensorSource& src_;
  bool round_embedding_;
};

std::vector<int32_t> fixture_tokens(const std::string& json) {
  return nlohmann::json::parse(read_file(fixture(json))).at("tokens").get<std::vector<int32_t>>();
}

}  // namespace

TEST_CASE("int8 dtype: name, size, and no storage as int8", "[common][int8]") {
  CHECK(parse_dtype("int8") == DType::I8);
  CHECK(parse_dtype("i8") == DType::I8);
  CHECK(std::string(dtype_name(DType::I8)) == "int8");
  CHECK(dtype_size(DType::I8) == 1);
  CHECK(unquantised_dtype(DType::I8) == DType::F16);
  CHECK(unquantised_dtype(DType::BF16) == DType::BF16);
  CHECK_THROWS_AS(parse_storage_dtype("int8", "--dtype"), Error);
  CHECK(parse_storage_dtype("fp16", "--dtype") == DType::F16);
  float f[2] = {1, 2};
  int8_t q[2] = {1, 2};
  CHECK_THROWS_AS(from_f32(DType::I8, f, q, 2), Error);
  CHECK_THROWS_AS(to_f32(DType::I8, q, f, 2), Error);
  CHECK_THROWS_AS(HostTensor::from_f32({1, 2}, {2}).converted(DType::I8), Error);
}

TEST_CASE("int8 quantiser: error at most half a step, zero rows, outliers", "[kernels][int8]") {
  std::mt19937_64 g(7);
  const int64_t R = 9, K = 301;
  auto w = random_matrix(g, R, K, 0.05f);
  for (int64_t c = 0; c < K; ++c) w[size_t(3 * K + c)] = 0.0f;  // a zero row
  w[size_t(5 * K + 17)] = 40.0f;                                // one huge value
  w[size_t(6 * K + 100)] = -1e-3f;                              // a row of one tiny value
  for (int64_t c = 0; c < K; ++c)
    if (c != 100) w[size_t(6 * K + c)] = 0.0f;
  Quantised qz = quantise(w, R, K);
  for (int64_t r = 0; r < R; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < K; ++c) amax = std::max(amax, std::fabs(w[size_t(r * K + c)]));
    const float s = qz.scales[size_t(r)];
    CHECK(s == amax / 127.0f);
    for (int64_t c = 0; c < K; ++c) {
      const float v = w[size_t(r * K + c)];
      const int q = qz.q[size_t(r * K + c)];
      REQUIRE(q >= -127);
      REQUIRE(q <= 127);
      // Half a step, plus the fp32 rounding of v / s and of q * s.
      INFO("row " << r << " col " << c << " value " << v << " q " << q << " scale " << s);
      REQUIRE(std::fabs(double(v) - double(q) * double(s)) <= 0.5 * double(s) * (1 + 1e-6) + 1e-7 * std::fabs(v));
    }
  }
  CHECK(qz.scales[3] == 0.0f);
  for (int64_t c = 0; c < K; ++c) CHECK(qz.q[size_t(3 * K + c)] == 0);
  CHECK(qz.q[size_t(5 * K + 17)] == 127);       // the outlier takes the top code ...
  CHECK(qz.scales[5] == 40.0f / 127.0f);        // ... and the row's step
  CHECK(qz.q[size_t(6 * K + 100)] == -127);
  // Ties go to even: 2.5 -> 2, 3.5 -> 4 (scale 1 with a 127 in the row).
  std::vector<float> ties = {127.0f, 2.5f, 3.5f, -2.5f, 0.5f, -0.5f, 1.5f};
  Quantised t = quantise(ties, 1, int64_t(ties.size()));
  CHECK(t.scales[0] == 1.0f);
  CHECK(std::vector<int>(t.q.begin(), t.q.end()) == std::vector<int>{127, 2, 4, -2, 0, 0, 2});
  // Not finite: refused, naming the element.
  std::vector<float> bad = {1.0f, std::numeric_limits<float>::infinity()};
  CHECK_THROWS_AS(quantise(bad, 1, 2), Error);
  bad[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(quantise(bad, 1, 2), Error);
  // fp16 and bf16 sources quantise their widened values; big matrices use threads with the
  // same result as one row at a time.
  const int64_t BR = 1200, BK = 4000;  // 4.8M values: above the threading threshold
  auto big = random_matrix(g, BR, BK, 0.02f);
  HostTensor h16 = HostTensor::from_f32(big, {BR, BK}).converted(DType::F16);
  Quantised a{std::vector<int8_t>(size_t(BR * BK)), std::vector<float>(size_t(BR))};
  quantize_rows_i8(DType::F16, h16.data.data(), BR, BK, a.q.data(), a.scales.data());
  auto widened = h16.to_f32();
  for (int64_t r = 0; r < BR; r += 97) {
    Quantised one = quantise(std::vector<float>(widened.begin() + r * BK, widened.begin() + (r + 1) * BK), 1, BK);
    REQUIRE(one.scales[0] == a.scales[size_t(r)]);
    REQUIRE(std::memcmp(one.q.data(), a.q.data() + r * BK, size_t(BK)) == 0);
  }
}

TEST_CASE("int8 matmul on the CPU: the row-scaled sum over q, near the product of the original weights",
          "[kernels][int8]") {
  auto be = make_cpu_backend(3);
  std::mt19937_64 g(11);
  struct Shape {
    int64_t R, K, n;
  };
  // Rows across the 128-row blocks, odd widths, n = 1, 7, 257.
  const std::vector<Shape> shapes = {{1, 1, 1},     {5, 3, 7},     {128, 64, 1},   {129, 33, 7},
                                     {300, 257, 1}, {257, 301, 8}, {513, 96, 257}, {64, 1000, 9},
                                     {1031, 517, 33}};
  for (const Shape& sh : shapes) {
    INFO("R " << sh.R << " K " << sh.K << " n " << sh.n);
    auto w = random_matrix(g, sh.R, sh.K, 0.1f);
    auto x = random_matrix(g, sh.n, sh.K, 1.0f);
    HostTensor wt = HostTensor::from_f32(w, {sh.R, sh.K});
    std::unique_ptr<DeviceBuffer> own8;
    WeightView W8 = be->load_weight(wt, DType::I8, own8);
    REQUIRE(W8.dtype == DType::I8);
    REQUIRE(W8.scales != nullptr);
    REQUIRE(own8->bytes() == cpu::packed_bytes(DType::I8, sh.R, sh.K));
    REQUIRE(reinterpret_cast<uintptr_t>(W8.scales) % 16 == 0);
    // The CPU stores its own layout (kernels/cpu/gemm.h): every weight it stands for is the
    // quantiser's q * scale, and the scales are the quantiser's.
    Quantised qz = quantise(w, sh.R, sh.K);
    REQUIRE(std::memcmp(W8.scales, qz.scales.data(), qz.scales.size() * 4) == 0);
    for (int64_t r = 0; r < sh.R; ++r)
      for (int64_t c = 0; c < sh.K; ++c)
        REQUIRE(cpu::packed_at(W8, r, c) == float(qz.q[size_t(r * sh.K + c)]) * qz.scales[size_t(r)]);
    std::vector<float> y8(size_t(sh.n * sh.R), -1.0f);
    be->matmul(W8, x.data(), y8.data(), sh.n);
    // Exactly the sum over q in k order with fused multiply-adds, then times the row's scale
    // (the contract of kernels/cpu/gemm.h, written out here on its own).
    for (int64_t t = 0; t < sh.n; ++t)
      for (int64_t r = 0; r < sh.R; ++r) {
        float acc = 0.0f;
        for (int64_t c = 0; c < sh.K; ++c)
          acc = std::fma(x[size_t(t * sh.K + c)], float(qz.q[size_t(r * sh.K + c)]), acc);
        REQUIRE(y8[size_t(t * sh.R + r)] == acc * qz.scales[size_t(r)]);
      }
    // And close to the product with the original weights: each term off by at most half a
    // step of its row, so |err| <= sum_c |x_c| * scale_r / 2 (plus fp32 summation).
    std::vector<float> yo(y8.size());
    std::unique_ptr<DeviceBuffer> own_o;
    be->matmul(be->load_weight(wt, DType::F32, own_o), x.data(), yo.data(), sh.n);
    for (int64_t t = 0; t < sh.n; ++t) {
      double l1 = 0;
      for (int64_t c = 0; c < sh.K; ++c) l1 += std::fabs(x[size_t(t * sh.K + c)]);
      for (int64_t r = 0; r < sh.R; ++r)
        REQUIRE(std::fabs(double(y8[size_t(t * sh.R + r)]) - double(yo[size_t(t * sh.R + r)])) <=
                0.5 * l1 * qz.scales[size_t(r)] * 1.001 + 1e-5);
    }
  }
  // The embedding is never int8.
  std::unique_ptr<DeviceBuffer> own;
  WeightView E = be->load_weight(HostTensor::from_f32({1, 2, 3, 4}, {2, 2}), DType::I8, own);
  int32_t id = 1;
  float y[2];
  CHECK_THROWS_AS(be->embedding(E, &id, 1, y), Error);
}

// Whole models in int8 on the CPU: the fp32 model whose matrices are the dequantised weights up
// to rounding (int8 scales each finished sum, the fp32 model each weight: kernels/cpu/gemm.h;
// the embedding, kept fp16, and the fixtures' weights are fp16-exact, so fp16 changes nothing
// there), and within a bound of the outside reference.
//
// The bound. Per-row int8 moves each weight by up to scale / 2 = max|row| / 254; in these
// tiny random-weight fixtures (no outlier structure, few columns) that is a few % of a typical
// weight, and the logits (within about +-4) move by a few 1e-2. Measured here (CPU, max
// |int8 - ref| over every position; fp32 is ~4e-6): hf-rwkv4-small 4.7e-2, pip-rwkv6-small
// 1.26e-1, pip-rwkv7-small 8.7e-2. The bounds are about 2x those. They can fail: with every
// dequantised weight 2 % too large (scale * 1.02) the errors were 2.1e-1, 3.8e-1 and 2.7e-1.
// (Scales from max / 100, which clips the largest values of each row, gave 6.8e-2, 1.45e-1 and
// 1.2e-1, inside the v6 and v7 bounds: the comparison with the dequantised model, within
// kDeqTol, is the sharp test of the int8 path, the reference bound a check of the quantisation
// scheme.) kDeqTol: the two roundings differ by a few fp32 ulps per product; measured here
// (max over every logit; six models) 7.4e-6 at most, against 2e-1 for scales 2 % off.
constexpr double kDeqTol = 5e-5;
TEST_CASE("int8 models on the CPU: the dequantised fp32 model up to rounding, and near the reference",
          "[kernels][int8]") {
  struct Case {
    const char* name;
    const char* json;
    double tol;
  };
  const std::vector<Case> cases = {{"hf-rwkv4/hf-rwkv4-small", "hf-rwkv4/hf-rwkv4-small.json", 1e-1},
                                   {"pip-rwkv/pip-rwkv6-small", "pip-rwkv/pip-rwkv6-small.json", 2.5e-1},
                                   {"pip-rwkv/pip-rwkv7-small", "pip-rwkv/pip-rwkv7-small.json", 1.8e-1}};
  for (const Case& c : cases) {
    INFO(c.name);
    CheckpointSource src(read_checkpoint(fixture(std::string(c.name) + ".safetensors")));
    DequantisedSource deq(src);
    const auto ref = read_f64(fixture(std::string(c.name) + ".logits.f64"));
    const auto tokens = fixture_tokens(c.json);
    LocalModel m8(src, DType::I8, 2);
    LocalModel m32(deq, DType::F32, 2);
    const auto l8 = m8.run(0, tokens, 1);
    const auto l32 = m32.run(0, tokens, 1);
    REQUIRE(l8.size() == ref.size());
    const double e_deq = max_abs_diff(l8, l32);
    CHECK(e_deq < kDeqTol);
    const double e_ref = max_abs_diff(l8, ref);
    // The fp32 model for scale: how far int8 moved the logits.
    LocalModel mf(src, DType::F32, 1);
    const double e_f32 = max_abs_diff(mf.run(0, tokens, 1), ref);
    const auto chunked = m8.run(1, tokens, 16);
    const double e_chunk = max_abs_diff(chunked, l8);
    std::printf("[int8] %-26s max|int8-ref| %.2e (fp32: %.2e)  |int8-dequantised| %.2e  chunked vs token by token %.2e\n",
                c.name, e_ref, e_f32, e_deq, e_chunk);
    CHECK(e_ref < c.tol);
    CHECK(e_chunk == 0.0);  // the CPU kernels do not depend on the batch (kernels/cpu/gemm.h)
    // Memory: matrices at a byte per weight plus a scale per row, well under half of fp32.
    CHECK(m8.stage->weight_bytes() < mf.stage->weight_bytes() / 2);
  }
}

// RWKV-5.1, 5.2 and the rwkv.cpp RWKV-7 (fp32 weights, not fp16-exact: the embedding and
// RWKV-7's low-rank factors are rounded to fp16 under int8, so the fp32 comparison model gets
// the same rounded values).
TEST_CASE("int8 rwkv.cpp models (RWKV-5.1, 5.2, 7) match their dequantised fp32 model", "[kernels][int8]") {
  for (const char* name : {"tiny-rwkv-5v1-730K", "tiny-rwkv-5v2-730K", "tiny-rwkv-7v0-834K"}) {
    INFO(name);
    CheckpointSource src(read_checkpoint(fixture(std::string("rwkv-cpp-tiny/") + name + "-FP32.bin")));
    DequantisedSource deq(src, true);
    const std::vector<int32_t> tokens = {34, 105, 110};
    LocalModel m8(src, DType::I8, 1);
    LocalModel m32(deq, DType::F32, 1);
    const auto l8 = m8.run(0, tokens, 1);
    const double e_deq = max_abs_diff(l8, m32.run(0, tokens, 1));
    std::printf("[int8] %-26s |int8-dequantised| %.2e\n", name, e_deq);
    CHECK(e_deq < kDeqTol);
    const std::string ref_name = "expected-logits-" + std::string(name).substr(10);  // after "tiny-rwkv-"
    const auto ref = read_f32(fixture("rwkv-cpp-tiny/" + ref_name + ".bin"));
    std::vector<float> last(l8.end() - int64_t(ref.size()), l8.end());
    std::printf("[int8] %-26s max|int8-ref| (last token) %.2e\n", name, max_abs_diff(last, ref));
  }
}

// The command line: int8 through the step protocol (an uneven 2-stage pipeline under mpirun gives
// the single-process int8 logits), and int8 refused as a storage dtype.
TEST_CASE("--compute-dtype int8 through mpirun equals one process; convert refuses int8", "[mpi][int8]") {
  TempDir d;
  const std::string src = fixture("hf-rwkv4/hf-rwkv4-small.safetensors");
  auto bad = run(rwkvpp_binary() + " convert " + src + " -o " + d / "bad" + " --dtype int8", 60);
  CHECK(bad.exit_code != 0);
  CHECK(bad.err.find("compute dtype") != std::string::npos);
  auto conv = run(rwkvpp_binary() + " convert " + src + " -o " + d / "m" + " --shards 2", 120);
  INFO(conv.err);
  REQUIRE(conv.exit_code == 0);
  const std::string args = " logits -m " + d / "m" + " --tokens 51,158,12,7,99,1 --chunk 4 --compute-dtype int8 -o ";
  auto one = run(rwkvpp_binary() + args + d / "one.npy", 120);
  INFO(one.err);
  REQUIRE(one.exit_code == 0);
  auto two = run("mpirun --allow-run-as-root --oversubscribe -np 2 " + rwkvpp_binary() + args + d / "two.npy" +
                     " --layers 0-0,1-3",
                 300);
  INFO(two.err);
  REQUIRE(two.exit_code == 0);
  const auto a = read_npy_f32(d / "one.npy", nullptr), b = read_npy_f32(d / "two.npy", nullptr);
  REQUIRE(a.size() == b.size());
  CHECK(max_abs_diff(a, b) == 0.0);
}
