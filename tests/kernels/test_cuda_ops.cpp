// Every op of the CUDA backend against the CPU backend (the reference), over generated shapes:
// odd widths, one token and 257 tokens, widths that are not multiples of 32 or 64, batches of
// several segments of different lengths (length 1 and a long one among them), fresh random
// inputs every time and outputs poisoned with NaN before each run, so that an element the GPU
// does not write fails the comparison. Results are compared by normalised error
// ||gpu - cpu|| / ||cpu||; each test case prints the worst error it saw per dtype.
// Without a GPU every test here skips (tests/cuda_skip.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "common/error.h"
#include "common/tensor.h"
#include "cuda_skip.h"
#include "kernels/backend.h"
#include "kernels/cuda_test_util.h"

using namespace rwkvpp;

using namespace rwkvpp::cuda_test;


TEST_CASE("CUDA backend: memory, copies and the segment table", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  Backend& be = gpu.be();
  CHECK(be.name() == "cuda:0");
  CHECK_FALSE(be.host_memory());
  CHECK(be.free_memory() > 0);
  Rng rng(1);
  for (size_t bytes : {size_t(1), size_t(3), size_t(4096), size_t(1000003)}) {
    DeviceBuffer a(&be, bytes), b(&be, bytes + 8);
    std::vector<uint8_t> h(bytes, 0xab);
    be.download(h.data(), a.get(), bytes);
    CHECK(std::all_of(h.begin(), h.end(), [](uint8_t v) { return v == 0; }));  // zero-filled
    for (auto& v : h) v = uint8_t(rng.integer(0, 255));
    be.upload(a.get(), h.data(), bytes);
    be.copy(static_cast<uint8_t*>(b.get()) + 5, a.get(), bytes);
    be.synchronize();
    std::vector<uint8_t> back(bytes);
    be.download(back.data(), static_cast<uint8_t*>(b.get()) + 5, bytes);
    CHECK(back == h);
  }
  auto segs = make_segments({3, 1, 200, 2}, 6, rng);
  SegTable t = be.stage_segments(segs);
  CHECK(t.n_tokens == 206);
  CHECK(t.max_len == 200);
  CHECK(t.host.data() == segs.data());
  std::vector<Segment> back(segs.size());
  be.download(back.data(), t.device, segs.size() * sizeof(Segment));
  for (size_t i = 0; i < segs.size(); ++i) {
    CHECK(back[i].slot == segs[i].slot);
    CHECK(back[i].start == segs[i].start);
    CHECK(back[i].len == segs[i].len);
  }
  CHECK_THROWS_AS(make_cuda_backend(cuda_device_count()), Error);
}

TEST_CASE("CUDA layer_norm and group_norm match the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(2);
  Worst worst("layer/group norm");
  struct Ln { int64_t n, d; };
  for (Ln s : {Ln{1, 1}, Ln{1, 7}, Ln{3, 64}, Ln{257, 67}, Ln{5, 768}, Ln{2, 4097}, Ln{1, 5120}}) {
    INFO("layer_norm n=" << s.n << " d=" << s.d);
    const size_t nd = size_t(s.n * s.d);
    // A large mean relative to the spread checks the two-pass variance.
    auto x = rng.uniform(nd, -3, 3);
    for (float& v : x) v += 10.0f;
    auto w = rng.uniform(size_t(s.d), 0.5f, 1.5f), b = rng.uniform(size_t(s.d), -1, 1);
    std::vector<float> ref(nd);
    cpu->layer_norm(x.data(), w.data(), b.data(), ref.data(), s.n, s.d, 1e-5f);
    float *gx = gpu.put(x), *gw = gpu.put(w), *gb = gpu.put(b), *gy = gpu.poisoned(nd);
    gpu.be().layer_norm(gx, gw, gb, gy, s.n, s.d, 1e-5f);
    worst.check("ln", rel_err(gpu.get(gy, nd), ref), 1e-5);
    gpu.be().layer_norm(gx, gw, gb, gx, s.n, s.d, 1e-5f);  // in place
    worst.check("ln in-place", rel_err(gpu.get(gx, nd), ref), 1e-5);
  }
  struct Gn { int64_t n, H, N; };
  for (Gn s : {Gn{1, 1, 64}, Gn{3, 2, 64}, Gn{257, 4, 17}, Gn{2, 40, 64}, Gn{1, 3, 5}}) {
    INFO("group_norm n=" << s.n << " H=" << s.H << " N=" << s.N);
    const int64_t C = s.H * s.N;
    const size_t nd = size_t(s.n * C);
    auto x = rng.uniform(nd, -2, 4);
    auto w = rng.uniform(size_t(C), 0.5f, 1.5f), b = rng.uniform(size_t(C), -1, 1);
    std::vector<float> ref(nd);
    cpu->group_norm(x.data(), w.data(), b.data(), ref.data(), s.n, s.H, s.N, 64e-5f);
    float *gx = gpu.put(x), *gw = gpu.put(w), *gb = gpu.put(b), *gy = gpu.poisoned(nd);
    gpu.be().group_norm(gx, gw, gb, gy, s.n, s.H, s.N, 64e-5f);
    worst.check("gn", rel_err(gpu.get(gy, nd), ref), 1e-5);
    gpu.be().group_norm(gx, gw, gb, gx, s.n, s.H, s.N, 64e-5f);
    worst.check("gn in-place", rel_err(gpu.get(gx, nd), ref), 1e-5);
  }
}

TEST_CASE("CUDA matmul matches the CPU for fp32, fp16 and bf16 weights", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(3);
  Worst worst("matmul");
  // Tolerances: fp32 W is exact on both sides (only summation order differs); with 16-bit W
  // both sides use the same rounded weights, the GEMV (n <= 8) keeps x in fp32, bf16 up to 128
  // tokens splits x into two bf16 terms (exact to ~2^-17), and otherwise cuBLAS sees x rounded
  // to the weight dtype (fp16 after scaling: 2^-11 relative per element, bf16: 2^-8).
  auto path = [](DType dt, int64_t n) -> std::string {
    if (n <= 8) return "gemv";
    if (dt == DType::BF16 && n <= 128) return "cublas-split";
    return "cublas";
  };
  auto tol = [](DType dt, const std::string& p) {
    if (dt == DType::F32 || p != "cublas") return 1e-5;
    return dt == DType::F16 ? 1e-2 : 3e-2;
  };
  struct Shape { int64_t R, K, n; float x_scale; };
  const std::vector<Shape> shapes = {
      {1, 1, 1, 1},        {64, 64, 1, 1},    {67, 129, 3, 1},    {257, 1000, 8, 1},
      {300, 64, 9, 1},     {513, 257, 257, 1}, {1024, 768, 5, 1}, {100, 4096, 2, 1},
      {33, 24, 16, 1},     {64, 8, 1, 1},     {96, 136, 7, 1},    {1280, 512, 12, 1},
      {77, 5120, 4, 1},    {640, 2560, 6, 1}, {256, 64, 33, 1},
      // Few rows, long K: K split over 2, 4 or 8 warps per row group at one and two tokens.
      {333, 1024, 1, 1},   {200, 2048, 1, 1}, {131, 8192, 1, 1},  {131, 8192, 2, 1},
      // Activations far outside fp16's range (the cuBLAS fp16 path must rescale them) and tiny.
      {128, 256, 16, 3e5f}, {128, 256, 16, 1e-6f}, {128, 256, 4, 3e5f}};
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (const Shape& s : shapes) {
      INFO(dtype_name(dt) << " R=" << s.R << " K=" << s.K << " n=" << s.n << " x*" << s.x_scale);
      const float a = std::sqrt(3.0f / float(s.K));
      HostTensor w = HostTensor::from_f32(rng.uniform(size_t(s.R * s.K), -a, a), {s.R, s.K});
      auto x = rng.uniform(size_t(s.n * s.K), -1, 1);
      for (float& v : x) v *= s.x_scale;
      std::unique_ptr<DeviceBuffer> cw_own, gw_own;
      WeightView cw = cpu->load_weight(w, dt, cw_own);
      WeightView gw = gpu.be().load_weight(w, dt, gw_own);
      REQUIRE(gw.dtype == dt);
      std::vector<float> ref(static_cast<size_t>(s.n * s.R));
      cpu->matmul(cw, x.data(), ref.data(), s.n);
      float* gx = gpu.put(x);
      float* gy = gpu.poisoned(ref.size());
      gpu.be().matmul(gw, gx, gy, s.n);
      const std::string p = path(dt, s.n);
      worst.check(std::string(dtype_name(dt)) + " " + p, rel_err(gpu.get(gy, ref.size()), ref),
                  tol(dt, p));
    }
  }
}

TEST_CASE("CUDA embedding and gather_rows match the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(4);
  Worst worst("embedding/gather");
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (int64_t C : {1, 67, 128}) {
      const int64_t V = 300;
      HostTensor e = HostTensor::from_f32(rng.uniform(size_t(V * C), -1, 1), {V, C});
      std::unique_ptr<DeviceBuffer> ce_own, ge_own;
      WeightView ce = cpu->load_weight(e, dt, ce_own), ge = gpu.be().load_weight(e, dt, ge_own);
      for (int64_t n : {1, 8, 9, 257}) {  // up to 8 ids go by value, more through device memory
        INFO(dtype_name(dt) << " C=" << C << " n=" << n);
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (auto& id : ids) id = rng.integer(0, int(V - 1));
        ids.front() = int32_t(V - 1);
        ids.back() = 0;
        std::vector<float> ref(static_cast<size_t>(n * C));
        cpu->embedding(ce, ids.data(), n, ref.data());
        float* gy = gpu.poisoned(ref.size());
        gpu.be().embedding(ge, ids.data(), n, gy);
        worst.check(dtype_name(dt), rel_err(gpu.get(gy, ref.size()), ref), 0.0);
      }
      std::vector<int32_t> bad = {0, int32_t(V)};
      float* gy = gpu.poisoned(size_t(2 * C));
      CHECK_THROWS_AS(gpu.be().embedding(ge, bad.data(), 2, gy), Error);
    }
  }
  for (int64_t d : {1, 67, 768}) {
    const int64_t rows = 50, m = d == 67 ? 5 : 13;  // 5 rows by value, 13 through device memory
    auto x = rng.uniform(size_t(rows * d), -1, 1);
    std::vector<int32_t> idx(static_cast<size_t>(m));
    for (auto& r : idx) r = rng.integer(0, int(rows - 1));
    idx[3] = idx[4];  // a repeated row
    std::vector<float> ref(static_cast<size_t>(m * d));
    cpu->gather_rows(x.data(), idx.data(), m, d, ref.data());
    float *gx = gpu.put(x), *gy = gpu.poisoned(ref.size());
    gpu.be().gather_rows(gx, idx.data(), m, d, gy);
    worst.check("gather", rel_err(gpu.get(gy, ref.size()), ref), 0.0);
  }
}

TEST_CASE("CUDA mix, lerp, unary, binary and binary_row match the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(5);
  Worst worst("elementwise");
  struct Sh { int64_t n, d; };
  for (Sh s : {Sh{1, 1}, Sh{1, 7}, Sh{3, 64}, Sh{257, 67}, Sh{2, 5120}}) {
    INFO("n=" << s.n << " d=" << s.d);
    const size_t nd = size_t(s.n * s.d);
    auto x = rng.uniform(nd, -4, 4), p = rng.uniform(nd, -4, 4), m = rng.uniform(nd, 0, 1);
    auto mu = rng.uniform(size_t(s.d), 0, 1);
    float *gx = gpu.put(x), *gp = gpu.put(p), *gm = gpu.put(m), *gmu = gpu.put(mu);
    std::vector<float> ref(nd);

    cpu->mix(x.data(), p.data(), mu.data(), ref.data(), s.n, s.d);
    float* gy = gpu.poisoned(nd);
    gpu.be().mix(gx, gp, gmu, gy, s.n, s.d);
    worst.check("mix", rel_err(gpu.get(gy, nd), ref), 1e-6);

    cpu->lerp(x.data(), p.data(), m.data(), ref.data(), int64_t(nd));
    gy = gpu.poisoned(nd);
    gpu.be().lerp(gx, gp, gm, gy, int64_t(nd));
    worst.check("lerp", rel_err(gpu.get(gy, nd), ref), 1e-6);

    for (Unary op : {Unary::Sigmoid, Unary::ReluSquare, Unary::Silu, Unary::Tanh, Unary::Exp,
                     Unary::NegExp, Unary::ExpNegExp}) {
      INFO("unary " << int(op));
      cpu->unary(op, x.data(), ref.data(), int64_t(nd));
      gy = gpu.poisoned(nd);
      gpu.be().unary(op, gx, gy, int64_t(nd));
      worst.check("unary", rel_err(gpu.get(gy, nd), ref), 1e-6);
    }
    for (Binary op : {Binary::Add, Binary::Mul, Binary::Sub}) {
      INFO("binary " << int(op));
      cpu->binary(op, x.data(), p.data(), ref.data(), int64_t(nd));
      gy = gpu.poisoned(nd);
      gpu.be().binary(op, gx, gp, gy, int64_t(nd));
      worst.check("binary", rel_err(gpu.get(gy, nd), ref), 1e-6);
      cpu->binary_row(op, x.data(), mu.data(), ref.data(), s.n, s.d);
      gy = gpu.poisoned(nd);
      gpu.be().binary_row(op, gx, gmu, gy, s.n, s.d);
      worst.check("binary_row", rel_err(gpu.get(gy, nd), ref), 1e-6);
    }
    // In place, as the blocks use them (x += ...; r = sigmoid(r)).
    cpu->binary(Binary::Add, x.data(), p.data(), ref.data(), int64_t(nd));
    gpu.be().binary(Binary::Add, gx, gp, gx, int64_t(nd));
    worst.check("in-place", rel_err(gpu.get(gx, nd), ref), 1e-6);
  }
}

TEST_CASE("CUDA token_shift matches the CPU over segment layouts", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(6);
  Worst worst("token_shift");
  const int n_slots = 8;
  for (const auto& lens : kSegmentLayouts) {
    for (int64_t d : {1, 67, 768}) {
      auto segs = make_segments(lens, n_slots, rng);
      const int64_t n = total(segs), off = 3, stride = off + d + 5;
      INFO("segments " << segs.size() << " tokens " << n << " d=" << d);
      auto x = rng.uniform(size_t(n * d), -1, 1);
      auto state = rng.uniform(size_t(n_slots * stride), -1, 1);
      std::vector<float> cstate = state, ref(size_t(n * d));
      cpu->token_shift(x.data(), d, cpu->stage_segments(segs), cstate.data(), stride, off, ref.data());
      float *gx = gpu.put(x), *gs = gpu.put(state), *gp = gpu.poisoned(ref.size());
      gpu.be().token_shift(gx, d, gpu.be().stage_segments(segs), gs, stride, off, gp);
      worst.check("prev", rel_err(gpu.get(gp, ref.size()), ref), 0.0);
      worst.check("state", rel_err(gpu.get(gs, state.size()), cstate), 0.0);
    }
  }
}

TEST_CASE("CUDA wkv4 matches the CPU over segment layouts and across calls", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(7);
  Worst worst("wkv4");
  const int n_slots = 8;
  for (int64_t d : {1, 67, 128, 300}) {
    const int64_t off = 2, stride = off + 3 * d + 1;
    // Per slot: aa in [-1, 1], bb > 0, pp in [-3, 3]; slot 0 fresh (pp = -1e30).
    std::vector<float> state(static_cast<size_t>(n_slots * stride));
    for (int s = 0; s < n_slots; ++s)
      for (int64_t c = 0; c < d; ++c) {
        float* st = state.data() + s * stride + off;
        st[c] = s ? rng.one(-1, 1) : 0.0f;
        st[d + c] = s ? rng.one(0.5f, 2) : 0.0f;
        st[2 * d + c] = s ? rng.one(-3, 3) : -1e30f;
      }
    std::vector<float> cstate = state;
    float* gs = gpu.put(state);
    auto w = rng.uniform(size_t(d), -3, 1), u = rng.uniform(size_t(d), -1, 1);
    for (float& v : w) v = -std::exp(v);
    float *gw = gpu.put(w), *gu = gpu.put(u);
    // Consecutive calls continue the same state.
    for (const auto& lens : kSegmentLayouts) {
      auto segs = make_segments(lens, n_slots, rng);
      const int64_t n = total(segs);
      INFO("d=" << d << " segments " << segs.size() << " tokens " << n);
      auto k = rng.uniform(size_t(n * d), -3, 3), v = rng.uniform(size_t(n * d), -1, 1);
      std::vector<float> ref(static_cast<size_t>(n * d));
      cpu->wkv4(k.data(), v.data(), w.data(), u.data(), cpu->stage_segments(segs), cstate.data(),
                stride, off, ref.data(), d);
      float *gk = gpu.put(k), *gv = gpu.put(v), *go = gpu.poisoned(ref.size());
      gpu.be().wkv4(gk, gv, gw, gu, gpu.be().stage_segments(segs), gs, stride, off, go, d);
      worst.check("out", rel_err(gpu.get(go, ref.size()), ref), 1e-5);
      worst.check("state", rel_err(gpu.get(gs, state.size()), cstate), 1e-5);
    }
  }
}

TEST_CASE("CUDA wkv5 (RWKV-5/6) matches the CPU over head sizes and segment layouts", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(8);
  Worst worst("wkv5");
  const int n_slots = 8;
  struct Hd { int64_t H, N; };
  for (Hd hd : {Hd{1, 64}, Hd{3, 64}, Hd{2, 32}, Hd{2, 17}, Hd{1, 5}}) {
    for (bool per_token : {false, true}) {
      const int64_t C = hd.H * hd.N, off = 7, stride = off + hd.H * hd.N * hd.N + 3;
      auto state = rng.uniform(size_t(n_slots * stride), -0.5f, 0.5f);
      std::vector<float> cstate = state;
      float* gs = gpu.put(state);
      auto u = rng.uniform(size_t(C), -0.5f, 0.5f);
      float* gu = gpu.put(u);
      for (const auto& lens : kSegmentLayouts) {
        auto segs = make_segments(lens, n_slots, rng);
        const int64_t n = total(segs);
        INFO("H=" << hd.H << " N=" << hd.N << " per_token=" << per_token << " tokens " << n);
        auto r = rng.uniform(size_t(n * C), -1, 1), k = rng.uniform(size_t(n * C), -1, 1);
        auto v = rng.uniform(size_t(n * C), -1, 1);
        auto w = rng.uniform(size_t(per_token ? n * C : C), -2, 0.5f);
        for (float& x : w) x = std::exp(-std::exp(x));  // decay factor in (0, 1)
        std::vector<float> ref(static_cast<size_t>(n * C));
        cpu->wkv5(r.data(), k.data(), v.data(), w.data(), per_token, u.data(),
                  cpu->stage_segments(segs), cstate.data(), stride, off, ref.data(), hd.H, hd.N);
        float *gr = gpu.put(r), *gk = gpu.put(k), *gv = gpu.put(v), *gw = gpu.put(w);
        float* go = gpu.poisoned(ref.size());
        gpu.be().wkv5(gr, gk, gv, gw, per_token, gu, gpu.be().stage_segments(segs), gs, stride,
                      off, go, hd.H, hd.N);
        worst.check("out", rel_err(gpu.get(go, ref.size()), ref), 1e-5);
        worst.check("state", rel_err(gpu.get(gs, state.size()), cstate), 1e-5);
      }
    }
  }
}

TEST_CASE("CUDA wkv7 matches the CPU over head sizes and segment layouts", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(9);
  Worst worst("wkv7");
  const int n_slots = 8;
  struct Hd { int64_t H, N; };
  for (Hd hd : {Hd{1, 64}, Hd{3, 64}, Hd{2, 32}, Hd{2, 17}, Hd{1, 5}}) {
    const int64_t C = hd.H * hd.N, off = 4, stride = off + hd.H * hd.N * hd.N + 1;
    auto state = rng.uniform(size_t(n_slots * stride), -0.5f, 0.5f);
    std::vector<float> cstate = state;
    float* gs = gpu.put(state);
    for (const auto& lens : kSegmentLayouts) {
      auto segs = make_segments(lens, n_slots, rng);
      const int64_t n = total(segs);
      INFO("H=" << hd.H << " N=" << hd.N << " tokens " << n);
      // As RWKV-7 builds them: w in (0.55, 1), a = -kk and b = kk * iclr with kk of unit norm per
      // head and iclr in (0, 1), which keeps the state bounded over long segments.
      auto r = rng.uniform(size_t(n * C), -1, 1), k = rng.uniform(size_t(n * C), -1, 1);
      auto v = rng.uniform(size_t(n * C), -1, 1), w = rng.uniform(size_t(n * C), -3, 3);
      for (float& x : w) x = std::exp(-0.606531f / (1.0f + std::exp(-x)));
      auto kk = rng.uniform(size_t(n * C), -1, 1), iclr = rng.uniform(size_t(n * C), 0, 1);
      std::vector<float> a(kk.size()), b(kk.size());
      for (int64_t g = 0; g < n * hd.H; ++g) {
        double ss = 0;
        for (int64_t j = 0; j < hd.N; ++j) ss += double(kk[size_t(g * hd.N + j)]) * kk[size_t(g * hd.N + j)];
        for (int64_t j = 0; j < hd.N; ++j) {
          const size_t i = size_t(g * hd.N + j);
          const float kn = float(kk[i] / std::sqrt(ss));
          a[i] = -kn;
          b[i] = kn * iclr[i];
        }
      }
      std::vector<float> ref(static_cast<size_t>(n * C));
      cpu->wkv7(r.data(), w.data(), k.data(), v.data(), a.data(), b.data(),
                cpu->stage_segments(segs), cstate.data(), stride, off, ref.data(), hd.H, hd.N);
      float *gr = gpu.put(r), *gw = gpu.put(w), *gk = gpu.put(k), *gv = gpu.put(v);
      float *ga = gpu.put(a), *gb = gpu.put(b), *go = gpu.poisoned(ref.size());
      gpu.be().wkv7(gr, gw, gk, gv, ga, gb, gpu.be().stage_segments(segs), gs, stride, off, go,
                    hd.H, hd.N);
      worst.check("out", rel_err(gpu.get(go, ref.size()), ref), 1e-5);
      worst.check("state", rel_err(gpu.get(gs, state.size()), cstate), 1e-5);
    }
  }
}

TEST_CASE("CUDA head_l2_normalize and head_dot_add match the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(10);
  Worst worst("head ops");
  struct Sh { int64_t n, H, N; };
  for (Sh s : {Sh{1, 1, 64}, Sh{3, 2, 64}, Sh{257, 4, 17}, Sh{2, 40, 64}, Sh{1, 3, 5}, Sh{5, 1, 100}}) {
    INFO("n=" << s.n << " H=" << s.H << " N=" << s.N);
    const int64_t C = s.H * s.N;
    const size_t nc = size_t(s.n * C);
    auto x = rng.uniform(nc, -1, 1);
    std::vector<float> ref(nc);
    cpu->head_l2_normalize(x.data(), ref.data(), s.n, s.H, s.N, 1e-12f);
    float *gx = gpu.put(x), *gy = gpu.poisoned(nc);
    gpu.be().head_l2_normalize(gx, gy, s.n, s.H, s.N, 1e-12f);
    worst.check("l2norm", rel_err(gpu.get(gy, nc), ref), 1e-6);
    gpu.be().head_l2_normalize(gx, gx, s.n, s.H, s.N, 1e-12f);
    worst.check("l2norm in-place", rel_err(gpu.get(gx, nc), ref), 1e-6);

    auto a = rng.uniform(nc, -1, 1), b = rng.uniform(nc, -1, 1), c = rng.uniform(nc, -1, 1);
    auto w = rng.uniform(size_t(C), -1, 1), y = rng.uniform(nc, -1, 1);
    std::vector<float> cy = y;
    cpu->head_dot_add(a.data(), b.data(), w.data(), c.data(), cy.data(), s.n, s.H, s.N);
    float *ga = gpu.put(a), *gb = gpu.put(b), *gc = gpu.put(c), *gw = gpu.put(w), *gy2 = gpu.put(y);
    gpu.be().head_dot_add(ga, gb, gw, gc, gy2, s.n, s.H, s.N);
    worst.check("dot_add", rel_err(gpu.get(gy2, nc), cy), 1e-5);
  }
}
