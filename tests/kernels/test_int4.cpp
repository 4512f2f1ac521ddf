// int4 weights (--compute-dtype int4) on the CPU backend: the dtype, the group quantiser
// (kernels/quantize.h) and whole models: the fp32 model with the dequantised matrices up to
// rounding, near the outside references, and the quality on rwkv.cpp's trained tiny models
// (KL divergence from fp16 and top-1 agreement over a byte stream none of them was trained on).
// The kernels against their contract, bit for bit: test_cpu_gemm.cpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "catch.h"
#include "common/dtype.h"
#include "common/error.h"
#include "common/tensor.h"
#include "helpers.h"
#include "kernels/backend.h"
#include "kernels/quantize.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

struct Groups {
  std::vector<uint8_t> q;
  std::vector<float> d, m;  // [rows, groups]
  int64_t ng = 0;
};

Groups quantise4(const std::vector<float>& w, int64_t rows, int64_t cols,
                 int64_t group = kI4Group) {
  Groups r;
  r.ng = (cols + group - 1) / group;
  r.q.resize(size_t(rows * cols));
  std::vector<uint16_t> d(size_t(rows * r.ng)), m(d.size());
  quantize_rows_i4(DType::F32, w.data(), rows, cols, group, r.q.data(), d.data(), m.data());
  for (size_t i = 0; i < d.size(); ++i) {
    r.d.push_back(f16_to_f32(d[i]));
    r.m.push_back(f16_to_f32(m[i]));
  }
  return r;
}

// What int4 compute holds for a [R, K] matrix, as fp32: q * d + m.
std::vector<float> dequantise4(const std::vector<float>& w, int64_t R, int64_t K) {
  const Groups g = quantise4(w, R, K);
  std::vector<float> out(w.size());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < K; ++c) {
      const size_t gi = size_t(r * g.ng + c / kI4Group);
      out[size_t(r * K + c)] = float(g.q[size_t(r * K + c)]) * g.d[gi] + g.m[gi];
    }
  return out;
}

// The fp32 model int4 compute stands for: the layers' 2-D ".weight" matrices dequantised from
// int4, the head (head_dtype), the embedding and the low-rank factors rounded to fp16.
class Int4Source final : public TensorSource {
 public:
  explicit Int4Source(TensorSource& src) : src_(src) {}
  const ModelConfig& config() const override { return src_.config(); }
  std::map<std::string, HostTensor> layer(int i) override {
    static const std::set<std::string> kLowRank = {"att.time_maa_w1",
                                                   "att.time_maa_w2",
                                                   "att.time_decay_w1",
                                                   "att.time_decay_w2",  // v6
                                                   "att.w1",
                                                   "att.w2",
                                                   "att.a1",
                                                   "att.a2",
                                                   "att.g1",
                                                   "att.g2",
                                                   "att.v1",
                                                   "att.v2"};  // v7
    auto t = src_.layer(i);
    for (auto& [name, h] : t) {
      if (kLowRank.count(name))
        h = h.converted(DType::F16).converted(DType::F32);
      else if (h.shape.size() == 2 && name.ends_with(".weight"))
        h = HostTensor::from_f32(dequantise4(h.to_f32(), h.shape[0], h.shape[1]), h.shape);
    }
    return t;
  }
  HostTensor tensor(const std::string& name) override {
    HostTensor h = src_.tensor(name);
    if (name == "emb.weight" || name == "head.weight")
      return h.converted(DType::F16).converted(DType::F32);
    return h;
  }

 private:
  TensorSource& src_;
};

std::vector<int32_t> fixture_tokens(const std::string& json) {
  return nlohmann::json::parse(read_file(fixture(json))).at("tokens").get<std::vector<int32_t>>();
}

// int4 against its dequantised fp32 model: the same weights, summed in another order (per group,
// then scaled) and the activations not rounded alike; measured at most 2e-5 on these fixtures.
constexpr double kDeqTol = 1e-4;

struct Quality {
  double kl = 0, top1 = 0;  // mean KL(p || q) in nats over positions; share of equal argmax
};

Quality compare(const std::vector<float>& p_logits, const std::vector<float>& q_logits,
                int64_t vocab) {
  Quality r;
  const int64_t T = int64_t(p_logits.size()) / vocab;
  for (int64_t t = 0; t < T; ++t) {
    const float* p = p_logits.data() + t * vocab;
    const float* q = q_logits.data() + t * vocab;
    const double pm = *std::max_element(p, p + vocab), qm = *std::max_element(q, q + vocab);
    double zp = 0, zq = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      zp += std::exp(p[v] - pm);
      zq += std::exp(q[v] - qm);
    }
    double kl = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double lp = p[v] - pm - std::log(zp), lq = q[v] - qm - std::log(zq);
      kl += std::exp(lp) * (lp - lq);
    }
    r.kl += kl;
    r.top1 += (std::max_element(p, p + vocab) - p) == (std::max_element(q, q + vocab) - q);
  }
  r.kl /= double(T);
  r.top1 /= double(T);
  return r;
}

// A held-out byte stream: plain English prose written for this test.
const char kProse[] =
    "The harbour was quiet in the early morning. A few boats rocked against the pier, and an old "
    "man sat on a crate mending a net. He had done this every day for forty years. When the "
    "children "
    "came down the hill on their way to school, they stopped to watch his hands move, quick and "
    "sure, "
    "tying knot after knot. \"Why do you mend it,\" one girl asked, \"if the sea only tears it "
    "again?\" "
    "He laughed and held the net up to the light. \"Because tomorrow there will be fish,\" he "
    "said, "
    "\"and a net with holes catches nothing but water.\" The girl thought about this all day. In "
    "the "
    "evening she went back to the pier with a ball of string, and he showed her the first knot.";

}  // namespace

TEST_CASE("int4 dtype: name, bytes, no element size, compute only", "[common][int4]") {
  CHECK(parse_dtype("int4") == DType::I4);
  CHECK(parse_dtype("i4") == DType::I4);
  CHECK(std::string(dtype_name(DType::I4)) == "int4");
  CHECK_THROWS_AS(dtype_size(DType::I4), Error);
  // Half a byte a weight and two fp16 per group of 32 per row.
  REQUIRE(kI4Group == 32);
  CHECK(matrix_bytes(DType::I4, 10, 128) == 10 * 64 + 10 * 4 * 4);
  CHECK(matrix_bytes(DType::I4, 3, 65) == (3 * 65 + 1) / 2 + 3 * 3 * 4);
  CHECK(matrix_bytes(DType::F16, 10, 128) == 10 * 128 * 2);
  CHECK_THROWS_AS(parse_storage_dtype("int4", "--dtype"), Error);
  CHECK(unquantised_dtype(DType::I4) == DType::F16);
  CHECK(head_dtype(DType::I4) == DType::F16);
}

TEST_CASE("int4 quantiser: within half a step and fp16's rounding, short last group, edge cases",
          "[kernels][int4]") {
  std::mt19937_64 g(11);
  const int64_t R = 7, K = 300, G = 64;  // 5 groups, the last of 44 columns (any group works)
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> w(size_t(R * K));
  for (float& v : w) v = nd(g);
  for (int64_t c = 0; c < K; ++c) w[size_t(2 * K + c)] = 0.0f;      // a zero row
  for (int64_t c = 64; c < 128; ++c) w[size_t(3 * K + c)] = 0.25f;  // a constant group
  w[size_t(4 * K + 10)] = 30.0f;                                    // an outlier: its group only
  for (int64_t c = 0; c < K; ++c) w[size_t(5 * K + c)] = 1000.0f + float(c);  // far from zero
  const Groups qz = quantise4(w, R, K, G);
  REQUIRE(qz.ng == 5);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t gi = 0; gi < qz.ng; ++gi) {
      const float d = qz.d[size_t(r * qz.ng + gi)], m = qz.m[size_t(r * qz.ng + gi)];
      float lo = w[size_t(r * K + gi * G)], hi = lo;
      for (int64_t c = gi * G; c < std::min(K, (gi + 1) * G); ++c) {
        lo = std::min(lo, w[size_t(r * K + c)]);
        hi = std::max(hi, w[size_t(r * K + c)]);
      }
      INFO("row " << r << " group " << gi << " d " << d << " m " << m << " lo " << lo << " hi "
                  << hi);
      REQUIRE(d >= 0.0f);
      REQUIRE(m == f16_to_f32(f32_to_f16(lo)));  // the group's least value, to nearest fp16
      // fp16's rounding of m and of d: what an edge value may be clipped by.
      const double slack =
          std::ldexp(1.0, -11) * (std::fabs(lo) + std::fabs(double(hi) - m)) + 1e-9;
      REQUIRE(std::fabs(double(m) + 15.0 * double(d) - double(hi)) <= slack);
      for (int64_t c = gi * G; c < std::min(K, (gi + 1) * G); ++c) {
        const float v = w[size_t(r * K + c)];
        const int q = qz.q[size_t(r * K + c)];
        REQUIRE(q >= 0);
        REQUIRE(q <= 15);
        INFO("col " << c << " value " << v << " q " << q);
        REQUIRE(std::fabs(double(v) - (double(q) * d + m)) <=
                0.5 * double(d) * (1 + 1e-5) + slack + 1e-6 * std::fabs(v));
      }
    }
  // The zero row and the constant group: d == 0, q == 0, exact.
  for (int64_t gi = 0; gi < qz.ng; ++gi) CHECK(qz.d[size_t(2 * qz.ng + gi)] == 0.0f);
  CHECK(qz.d[size_t(3 * qz.ng + 1)] == 0.0f);
  CHECK(qz.m[size_t(3 * qz.ng + 1)] == 0.25f);
  // The outlier sets its own group's step, not its neighbours'.
  CHECK(qz.d[size_t(4 * qz.ng)] > 30.0f / 16);
  CHECK(qz.d[size_t(4 * qz.ng + 1)] < 0.1f);
  // Not finite, or beyond fp16's range: refused.
  std::vector<float> bad = {1.0f, std::numeric_limits<float>::infinity()};
  CHECK_THROWS_AS(quantise4(bad, 1, 2), Error);
  bad[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(quantise4(bad, 1, 2), Error);
  std::vector<float> huge = {-1e6f, 0.0f};
  CHECK_THROWS_AS(quantise4(huge, 1, 2), Error);
  // fp16 sources quantise their widened values.
  HostTensor h16 = HostTensor::from_f32(w, {R, K}).converted(DType::F16);
  std::vector<uint8_t> q16(size_t(R * K));
  std::vector<uint16_t> d16(size_t(R * qz.ng)), m16(d16.size());
  quantize_rows_i4(DType::F16, h16.data.data(), R, K, G, q16.data(), d16.data(), m16.data());
  const Groups wid = quantise4(h16.to_f32(), R, K, G);
  CHECK(q16 == wid.q);
}

TEST_CASE(
    "int4 models on the CPU: the dequantised fp32 model up to rounding, and near the reference",
    "[kernels][int4]") {
  struct Case {
    const char* name;
    const char* json;
    double tol;  // max |int4 - reference|, measured with margin (fp32: ~1e-5)
  };
  const std::vector<Case> cases = {
      {"hf-rwkv4/hf-rwkv4-small", "hf-rwkv4/hf-rwkv4-small.json", 1.0},
      {"pip-rwkv/pip-rwkv6-small", "pip-rwkv/pip-rwkv6-small.json", 2.5},
      {"pip-rwkv/pip-rwkv7-small", "pip-rwkv/pip-rwkv7-small.json", 1.5}};
  for (const Case& c : cases) {
    INFO(c.name);
    CheckpointSource src(read_checkpoint(fixture(std::string(c.name) + ".safetensors")));
    Int4Source deq(src);
    const auto ref = read_f64(fixture(std::string(c.name) + ".logits.f64"));
    const auto tokens = fixture_tokens(c.json);
    LocalModel m4(src, DType::I4, 2), m32(deq, DType::F32, 1), m8(src, DType::I8, 1);
    const auto l4 = m4.run(0, tokens, 1);
    REQUIRE(l4.size() == ref.size());
    const double e_deq = max_abs_diff(l4, m32.run(0, tokens, 1));
    const double e_ref = max_abs_diff(l4, ref), e_ref8 = max_abs_diff(m8.run(0, tokens, 1), ref);
    const double e_chunk = max_abs_diff(m4.run(1, tokens, 16), l4);
    std::printf(
        "[int4] %-26s max|int4-ref| %.2e (int8: %.2e)  |int4-dequantised| %.2e  chunked %.1e\n",
        c.name, e_ref, e_ref8, e_deq, e_chunk);
    CHECK(e_deq < kDeqTol);
    CHECK(e_ref < c.tol);
    CHECK(e_chunk == 0.0);  // the CPU kernels do not depend on the batch (kernels/cpu/gemm.h)
    CHECK(m4.stage->weight_bytes() < m8.stage->weight_bytes());
  }
}

// rwkv.cpp's trained byte-level models: int4 against its dequantised fp32 model, and its quality
// against fp16 over a byte stream (docs/perf-cpu.md compares it with rwkv.cpp's own Q4_1).
TEST_CASE("int4 on rwkv.cpp's trained tiny models: exact to its weights, near fp16 in distribution",
          "[kernels][int4]") {
  std::vector<int32_t> bytes;
  for (const char* p = kProse; *p; ++p) bytes.push_back(int32_t(uint8_t(*p)));
  struct Case {
    const char* name;
    double kl;  // bound on the mean KL(fp16 || int4), nats per byte: measured (docs/perf-cpu.md) x
                // ~1.5
  };
  for (const Case& c : {Case{"tiny-rwkv-4v0-660K", 6e-4}, Case{"tiny-rwkv-5v1-730K", 8e-2},
                        Case{"tiny-rwkv-5v2-730K", 6e-2}, Case{"tiny-rwkv-7v0-834K", 2e-5}}) {
    const char* name = c.name;
    INFO(name);
    CheckpointSource src(
        read_checkpoint(fixture(std::string("rwkv-cpp-tiny/") + name + "-FP32.bin")));
    Int4Source deq(src);
    LocalModel m4(src, DType::I4, 1), m32(deq, DType::F32, 1), m16(src, DType::F16, 1),
        m8(src, DType::I8, 1);
    const auto l4 = m4.run(0, bytes, 64);
    const double e_deq = max_abs_diff(l4, m32.run(0, bytes, 64));
    const auto l16 = m16.run(0, bytes, 64);
    const Quality q4 = compare(l16, l4, 256), q8 = compare(l16, m8.run(0, bytes, 64), 256);
    std::printf(
        "[int4] %-20s over %zu bytes vs fp16: int4 KL %.2e nats top-1 %.3f | int8 KL %.2e top-1 "
        "%.3f | "
        "|int4-dequantised| %.2e\n",
        name, bytes.size(), q4.kl, q4.top1, q8.kl, q8.top1, e_deq);
    CHECK(e_deq < kDeqTol);
    CHECK(q4.kl < c.kl);
    CHECK(q4.top1 > 0.8);
    CHECK(max_abs_diff(l4, l16) > 1e-3);  // a check that int4 ran at all (not the fp16 weights)
  }
}
