// The CPU matrix kernels (kernels/cpu/gemm.h) against their contract, written out here on its
// own: every output element is one fma chain in k order from +0 over the stored weights (int8:
// over q, then times the row's scale; int4: a chain over q per group, folded in group order). Every
// instruction set the machine has, every dtype, odd shapes across the 128-row blocks and
// batches 1..9 (and larger), bit for bit: so the results do not depend on the batch, the thread
// count or the instruction set.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "common/dtype.h"
#include "common/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/quantize.h"

using namespace rwkvpp;

namespace {

std::vector<float> randn(std::mt19937_64& g, size_t n, float amp) {
  std::normal_distribution<float> d(0.0f, amp);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// The weights a dtype stores, as fp32, and (int8) the row scales; computed with the common
// conversions and the quantiser, not with the kernels' packing.
struct Stored {
  std::vector<float> w;       // [R, K]: the value each chain multiplies by (int8: q)
  std::vector<float> scales;  // int8 only
  std::vector<float> d, m;    // int4 only: [R, groups]
};

Stored stored(const std::vector<float>& w, int64_t R, int64_t K, DType dt) {
  Stored s;
  s.w.resize(w.size());
  if (dt == DType::I4) {
    const int64_t ng = (K + kI4Group - 1) / kI4Group;
    std::vector<uint8_t> q(w.size());
    std::vector<uint16_t> d(size_t(R * ng)), m(size_t(R * ng));
    quantize_rows_i4(DType::F32, w.data(), R, K, kI4Group, q.data(), d.data(), m.data());
    for (size_t i = 0; i < q.size(); ++i) s.w[i] = float(q[i]);
    for (size_t i = 0; i < d.size(); ++i) {
      s.d.push_back(f16_to_f32(d[i]));
      s.m.push_back(f16_to_f32(m[i]));
    }
  } else if (dt == DType::I8) {
    std::vector<int8_t> q(w.size());
    s.scales.resize(size_t(R));
    quantize_rows_i8(DType::F32, w.data(), R, K, q.data(), s.scales.data());
    for (size_t i = 0; i < q.size(); ++i) s.w[i] = float(q[i]);
  } else if (dt == DType::F32) {
    s.w = w;
  } else {
    std::vector<uint16_t> h(w.size());
    from_f32(dt, w.data(), h.data(), w.size());
    to_f32(dt, h.data(), s.w.data(), w.size());
  }
  return s;
}

// int4: per group, A = the fma chain over q and X = the plain sum of x, then T = fma(d, A, T),
// T = fma(m, X, T), groups in order (gemm.h).
float int4_chain(const Stored& s, const float* x, int64_t r, int64_t K) {
  const int64_t G = kI4Group, ng = (K + G - 1) / G;
  float T = 0.0f;
  for (int64_t g = 0; g < ng; ++g) {
    float A = 0.0f, X = 0.0f;
    for (int64_t k = g * G; k < std::min(K, (g + 1) * G); ++k) {
      A = std::fma(x[k], s.w[size_t(r * K + k)], A);
      X = X + x[k];
    }
    T = std::fma(s.d[size_t(r * ng + g)], A, T);
    T = std::fma(s.m[size_t(r * ng + g)], X, T);
  }
  return T;
}

std::vector<float> reference(const Stored& s, const std::vector<float>& x, int64_t R, int64_t K,
                             int64_t n) {
  std::vector<float> y(size_t(n * R));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < R; ++r) {
      if (!s.d.empty()) {
        y[size_t(t * R + r)] = int4_chain(s, x.data() + t * K, r, K);
        continue;
      }
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k)
        acc = std::fma(x[size_t(t * K + k)], s.w[size_t(r * K + k)], acc);
      y[size_t(t * R + r)] = s.scales.empty() ? acc : acc * s.scales[size_t(r)];
    }
  return y;
}

std::vector<cpu::Isa> isas() {
  std::vector<cpu::Isa> v;
  for (cpu::Isa i : {cpu::Isa::Scalar, cpu::Isa::Avx2, cpu::Isa::Avx512})
    if (cpu::isa_supported(i)) v.push_back(i);
  return v;
}

// Restores the instruction set the process chose when a test ends.
struct IsaGuard {
  cpu::Isa saved = cpu::current_isa();
  ~IsaGuard() { cpu::set_isa(saved); }
};

}  // namespace

TEST_CASE(
    "CPU matmul: every instruction set, dtype, odd shape and batch 1..9 is the fma chain, bit for "
    "bit",
    "[kernels][cpu][gemm]") {
  IsaGuard guard;
  std::mt19937_64 g(7);
  struct Shape {
    int64_t R, K;
  };
  const std::vector<Shape> shapes = {{1, 1},    {15, 3},   {16, 64},   {17, 257},
                                     {127, 33}, {128, 8},  {129, 100}, {300, 17},
                                     {513, 65}, {33, 128}, {64, 191}};
  std::vector<int64_t> ns = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 37};
  auto be1 = make_cpu_backend(1), be3 = make_cpu_backend(3);
  const auto sets = isas();
  INFO("instruction sets here: " << sets.size());
  for (const Shape& sh : shapes)
    for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I8, DType::I4}) {
      INFO("R " << sh.R << " K " << sh.K << " " << dtype_name(dt));
      const auto w = randn(g, size_t(sh.R * sh.K), 0.3f);
      const Stored s = stored(w, sh.R, sh.K, dt);
      const HostTensor wt = HostTensor::from_f32(w, {sh.R, sh.K});
      std::unique_ptr<DeviceBuffer> o1, o3;
      const WeightView W1 = be1->load_weight(wt, dt, o1), W3 = be3->load_weight(wt, dt, o3);
      for (int64_t n : ns) {
        const auto x = randn(g, size_t(n * sh.K), 1.0f);
        const auto want = reference(s, x, sh.R, sh.K, n);
        for (cpu::Isa isa : sets) {
          INFO("n " << n << " " << cpu::isa_name(isa));
          cpu::set_isa(isa);
          for (auto* p : {&W1, &W3}) {
            Backend& be = p == &W1 ? *be1 : *be3;
            std::vector<float> y(size_t(n * sh.R), 123.0f);
            be.matmul(*p, x.data(), y.data(), n);
            REQUIRE(std::memcmp(y.data(), want.data(), y.size() * 4) == 0);
          }
        }
      }
    }
}

TEST_CASE("CPU matmul: a large batch (prefill) is the fma chain too, in every instruction set",
          "[kernels][cpu][gemm]") {
  IsaGuard guard;
  std::mt19937_64 g(8);
  const int64_t R = 260, K = 700, n = 131;  // chunks of K, tall tiles, ragged token tiles
  auto be = make_cpu_backend(2);
  for (DType dt : {DType::F16, DType::I8, DType::I4}) {
    const auto w = randn(g, size_t(R * K), 0.1f);
    const auto x = randn(g, size_t(n * K), 1.0f);
    const auto want = reference(stored(w, R, K, dt), x, R, K, n);
    std::unique_ptr<DeviceBuffer> own;
    const WeightView W = be->load_weight(HostTensor::from_f32(w, {R, K}), dt, own);
    for (cpu::Isa isa : isas()) {
      INFO(dtype_name(dt) << " " << cpu::isa_name(isa));
      cpu::set_isa(isa);
      std::vector<float> y(size_t(n * R));
      be->matmul(W, x.data(), y.data(), n);
      REQUIRE(std::memcmp(y.data(), want.data(), y.size() * 4) == 0);
    }
  }
}

TEST_CASE("CPU matmul_ex and matmul_group equal the plain ops they fuse, bit for bit",
          "[kernels][cpu][gemm]") {
  std::mt19937_64 g(9);
  auto be = make_cpu_backend(2);
  const int64_t R = 300, K = 96;
  for (int64_t n : {1, 5, 40})
    for (DType dt : {DType::F16, DType::I4}) {
      const auto w = randn(g, size_t(R * K), 0.2f);
      const auto x = randn(g, size_t(n * K), 1.0f);
      const auto gate = randn(g, size_t(n * R), 1.0f);
      const auto y0 = randn(g, size_t(n * R), 1.0f);
      std::unique_ptr<DeviceBuffer> own;
      const WeightView W = be->load_weight(HostTensor::from_f32(w, {R, K}), dt, own);
      std::vector<float> v(size_t(n * R));
      be->matmul(W, x.data(), v.data(), n);
      for (Unary act : {Unary::Sigmoid, Unary::ReluSquare}) {
        INFO("n " << n << " " << dtype_name(dt) << " act " << int(act));
        // Plain ops: v = act(x W^T); v = gate * v; y = y + v.
        std::vector<float> pv = v, py = y0;
        be->unary(act, pv.data(), pv.data(), n * R);
        be->binary(Binary::Mul, gate.data(), pv.data(), pv.data(), n * R);
        be->binary(Binary::Add, py.data(), pv.data(), py.data(), n * R);
        Backend::Epilogue ep;
        ep.has_act = true;
        ep.act = act;
        ep.gate = gate.data();
        ep.accumulate = true;
        std::vector<float> y = y0, scratch(size_t(n * R));
        be->matmul_ex(W, x.data(), y.data(), n, ep, scratch.data());
        CHECK(std::memcmp(y.data(), py.data(), y.size() * 4) == 0);
        // A group of two without accumulation: each equals its act(x W^T).
        Backend::Epilogue only_act;
        only_act.has_act = true;
        only_act.act = act;
        std::vector<float> a(size_t(n * R)), b(size_t(n * R)), pa = v;
        be->unary(act, pa.data(), pa.data(), n * R);
        const Backend::MatmulJob jobs[2] = {{&W, x.data(), a.data(), only_act},
                                            {&W, x.data(), b.data(), {}}};
        be->matmul_group(jobs, 2, n);
        CHECK(std::memcmp(a.data(), pa.data(), a.size() * 4) == 0);
        CHECK(std::memcmp(b.data(), v.data(), b.size() * 4) == 0);
      }
    }
}

TEST_CASE("CPU weights: packed values, embedding rows and the choice of instruction set",
          "[kernels][cpu][gemm]") {
  std::mt19937_64 g(10);
  auto be = make_cpu_backend(1);
  const int64_t R = 145, K = 19;
  const auto w = randn(g, size_t(R * K), 1.0f);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const Stored s = stored(w, R, K, dt);
    std::unique_ptr<DeviceBuffer> own;
    const WeightView E = be->load_weight(HostTensor::from_f32(w, {R, K}), dt, own);
    CHECK(own->bytes() == size_t(160 * K) * dtype_size(dt));  // rows padded to 32
    const int32_t ids[3] = {0, 144, 77};
    std::vector<float> y(3 * size_t(K));
    be->embedding(E, ids, 3, y.data());
    for (int i = 0; i < 3; ++i)
      for (int64_t c = 0; c < K; ++c) {
        REQUIRE(y[size_t(i * K + c)] == s.w[size_t(ids[i] * K + c)]);
        REQUIRE(cpu::packed_at(E, ids[i], c) == s.w[size_t(ids[i] * K + c)]);
      }
  }
  // int4: the weight a packed matrix stands for is q * d + m of its group.
  const Stored s4 = stored(w, R, K, DType::I4);
  std::unique_ptr<DeviceBuffer> own4;
  const WeightView W4 = be->load_weight(HostTensor::from_f32(w, {R, K}), DType::I4, own4);
  CHECK(own4->bytes() == cpu::packed_bytes(DType::I4, R, K));
  CHECK(own4->bytes() < size_t(160 * K));  // under half of fp16 even at this K (a group per row)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < K; ++c) {
      const float want =
          s4.w[size_t(r * K + c)] * s4.d[size_t(r)] + s4.m[size_t(r)];  // one group: K < 64
      REQUIRE(std::fabs(cpu::packed_at(W4, r, c) - want) <= 1e-6f * (1 + std::fabs(want)));
    }
  CHECK(cpu::isa_supported(cpu::Isa::Scalar));
  CHECK(std::string(cpu::isa_name(cpu::current_isa())).size() > 0);
}
