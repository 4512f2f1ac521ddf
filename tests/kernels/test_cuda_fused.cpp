// The fused ops of the CUDA backend (norm_shift_mix, matmul_ex, wkv4_gated; kernels/backend.h)
// against the CPU backend, whose implementations are the plain op sequences they replace.
// Decode layouts (one token per segment) take the fused kernels; other layouts must fall back
// to the plain ops and agree too. Without a GPU every test here skips (tests/cuda_skip.h).
#include "catch.h"
#include "common/tensor.h"
#include "cuda_skip.h"
#include "kernels/backend.h"
#include "kernels/cuda_test_util.h"

using namespace rwkvpp;
using namespace rwkvpp::cuda_test;

TEST_CASE("CUDA norm_shift_mix matches layer_norm + token_shift + mix on the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(11);
  Worst worst("norm_shift_mix");
  // Decode batches of 1, 7, 11, 130 and 300 tokens: several column slices per token, 3 and 1
  // (the whole row from registers), and widths past what the registers hold (8448 > 32 x 256).
  std::vector<std::vector<int>> layouts = {{1}, {1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 1, 2}};
  layouts.push_back(std::vector<int>(130, 1));
  layouts.push_back(std::vector<int>(300, 1));
  for (const auto& lens : layouts)
    for (int64_t d : {1, 67, 768, 2048, 5120, 8448})
      for (int nmix : {1, 2, 3, 4, 5, 6}) {
        const int n_slots = std::max<int>(12, int(lens.size()));
        auto segs = make_segments(lens, n_slots, rng);
        const int64_t n = total(segs), off = 5, stride = off + d + 3;
        INFO("segments " << segs.size() << " tokens " << n << " d=" << d << " mixes " << nmix);
        auto x = rng.uniform(size_t(n * d), -2, 3);  // a non-zero mean
        auto w = rng.uniform(size_t(d), 0.5f, 1.5f), b = rng.uniform(size_t(d), -0.2f, 0.2f);
        auto state = rng.uniform(size_t(n_slots * stride), -1, 1);
        std::vector<std::vector<float>> mu, ref;
        for (int j = 0; j < nmix; ++j) {
          mu.push_back(rng.uniform(size_t(d), 0, 1));
          ref.emplace_back(size_t(n * d));
        }
        std::vector<float> cstate = state, xln(size_t(n * d)), prev(size_t(n * d));
        const float* cmu[6];
        float* cout[6];
        for (int j = 0; j < nmix; ++j) cmu[j] = mu[size_t(j)].data(), cout[j] = ref[size_t(j)].data();
        cpu->norm_shift_mix(x.data(), w.data(), b.data(), 1e-5f, n, d, cpu->stage_segments(segs), cstate.data(),
                            stride, off, cmu, cout, nmix, xln.data(), prev.data());
        const float* gmu[6];
        float* gout[6];
        for (int j = 0; j < nmix; ++j) gmu[j] = gpu.put(mu[size_t(j)]), gout[j] = gpu.poisoned(size_t(n * d));
        float *gx = gpu.put(x), *gs = gpu.put(state);
        gpu.be().norm_shift_mix(gx, gpu.put(w), gpu.put(b), 1e-5f, n, d, gpu.be().stage_segments(segs), gs, stride,
                                off, gmu, gout, nmix, gpu.poisoned(size_t(n * d)), gpu.poisoned(size_t(n * d)));
        for (int j = 0; j < nmix; ++j)
          worst.check("out", rel_err(gpu.get(gout[j], size_t(n * d)), ref[size_t(j)]), 1e-5);
        worst.check("state", rel_err(gpu.get(gs, state.size()), cstate), 1e-5);
        worst.check("x untouched", rel_err(gpu.get(gx, x.size()), x), 0.0);
      }
}

namespace {

struct ProductShape {
  int64_t R, K, n;
};

// One matmul_ex (relu_square_x: matmul_ex_relu_square_x) on the GPU against the CPU backend:
// W [R, K] in dtype dt, x in [-range, range], y starting random when the epilogue accumulates,
// a random gate in [0, 1] when `gated`. The GEMV (n <= 8) keeps x in fp32 (as tight as plain
// matmul); cuBLAS rounds x to 16 bits (cublas_tol).
void check_product(Gpu& gpu, Backend& cpu, Rng& rng, Worst& worst, const ProductShape& s, DType dt,
                   Backend::Epilogue ep, bool gated, bool relu_square_x, float range, double cublas_tol) {
  const float a = std::sqrt(3.0f / float(s.K));
  HostTensor w = HostTensor::from_f32(rng.uniform(size_t(s.R * s.K), -a, a), {s.R, s.K});
  auto x = rng.uniform(size_t(s.n * s.K), -range, range);
  auto y0 = rng.uniform(size_t(s.n * s.R), -1, 1);
  auto gate = rng.uniform(size_t(s.n * s.R), 0, 1);
  std::unique_ptr<DeviceBuffer> cw_own, gw_own;
  WeightView cw = cpu.load_weight(w, dt, cw_own);
  WeightView gw = gpu.be().load_weight(w, dt, gw_own);
  std::vector<float> ref = ep.accumulate ? y0 : std::vector<float>(y0.size()), scratch(y0.size());
  Backend::Epilogue cep = ep, gep = ep;
  if (gated) cep.gate = gate.data(), gep.gate = gpu.put(gate);
  float* gy = ep.accumulate ? gpu.put(y0) : gpu.poisoned(y0.size());
  if (relu_square_x) {
    std::vector<float> cx = x;  // overwritten
    cpu.matmul_ex_relu_square_x(cw, cx.data(), ref.data(), s.n, cep, scratch.data());
    gpu.be().matmul_ex_relu_square_x(gw, gpu.put(x), gy, s.n, gep, gpu.poisoned(y0.size()));
  } else {
    cpu.matmul_ex(cw, x.data(), ref.data(), s.n, cep, scratch.data());
    gpu.be().matmul_ex(gw, gpu.put(x), gy, s.n, gep, gpu.poisoned(y0.size()));
  }
  const double tol = (s.n <= 8 || dt == DType::F32) ? 1e-5 : cublas_tol;
  worst.check(std::string(dtype_name(dt)) + (s.n <= 8 ? " gemv" : " cublas"),
              rel_err(gpu.get(gy, y0.size()), ref), tol);
}

}  // namespace

TEST_CASE("CUDA matmul_ex (activation, gate, accumulate) matches the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(12);
  Worst worst("matmul_ex");
  const std::vector<ProductShape> shapes = {{1, 1, 1}, {67, 129, 1}, {257, 1000, 3}, {1024, 768, 8}, {300, 64, 9}, {96, 136, 7}, {513, 257, 40}};
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (const ProductShape& s : shapes)
      for (int variant = 0; variant < 5; ++variant) {
        Backend::Epilogue ep;
        if (variant == 1) ep.has_act = true, ep.act = Unary::Sigmoid;
        if (variant == 2) ep.has_act = true, ep.act = Unary::ReluSquare;
        if (variant >= 3) ep.accumulate = true;  // variant 4: + gate
        INFO(dtype_name(dt) << " R=" << s.R << " K=" << s.K << " n=" << s.n << " variant " << variant);
        check_product(gpu, *cpu, rng, worst, s, dt, ep, variant == 4, false, 1.0f, 3e-2);
      }
}

TEST_CASE("CUDA wkv4_gated matches wkv4 then the gate on the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(13);
  Worst worst("wkv4_gated");
  const int n_slots = 8;
  for (int64_t d : {1, 67, 300})
    for (const auto& lens : kSegmentLayouts) {
      const int64_t off = 2, stride = off + 3 * d + 1;
      auto segs = make_segments(lens, n_slots, rng);
      const int64_t n = total(segs);
      INFO("d=" << d << " segments " << segs.size() << " tokens " << n);
      std::vector<float> state(static_cast<size_t>(n_slots * stride));
      for (int s = 0; s < n_slots; ++s)
        for (int64_t c = 0; c < d; ++c) {
          float* st = state.data() + s * stride + off;
          st[c] = rng.one(-1, 1), st[d + c] = rng.one(0.5f, 2), st[2 * d + c] = rng.one(-3, 3);
        }
      auto w = rng.uniform(size_t(d), -3, 1), u = rng.uniform(size_t(d), -1, 1);
      for (float& v : w) v = -std::exp(v);
      auto k = rng.uniform(size_t(n * d), -3, 3), v = rng.uniform(size_t(n * d), -1, 1);
      auto gate = rng.uniform(size_t(n * d), 0, 1);
      std::vector<float> cstate = state, ref(size_t(n * d));
      cpu->wkv4_gated(k.data(), v.data(), w.data(), u.data(), cpu->stage_segments(segs), cstate.data(), stride, off,
                      ref.data(), d, gate.data());
      float *gs = gpu.put(state), *go = gpu.poisoned(ref.size());
      gpu.be().wkv4_gated(gpu.put(k), gpu.put(v), gpu.put(w), gpu.put(u), gpu.be().stage_segments(segs), gs, stride,
                          off, go, d, gpu.put(gate));
      worst.check("out", rel_err(gpu.get(go, ref.size()), ref), 1e-5);
      worst.check("state", rel_err(gpu.get(gs, state.size()), cstate), 1e-5);
    }
}

TEST_CASE("CUDA matmul_group (one launch for several products) matches the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(14);
  Worst worst("matmul_group");
  // Row counts differ within a group (FFN key 4C and receptance C); K is shared unless `ks`
  // gives each job its own (RWKV-7's low-rank second factors). Up to 8 jobs (RWKV-7's seven
  // products of the time mix's input).
  struct Group { std::vector<int64_t> rows; int64_t K; std::vector<int64_t> ks = {}; };
  const std::vector<Group> groups = {{{64, 64, 64}, 64}, {{1024, 256}, 256}, {{67, 300, 5}, 144}, {{33}, 1000}, {{512, 512, 512}, 136},
                                     {{300, 1200, 77}, 2048},  // K split over warps (gemv.cuh, WPR)
                                     {{512, 96, 512, 512, 96, 160, 64}, 512},
                                     {{100, 7, 64, 64, 3, 5, 9, 300}, 256},
                                     {{512, 512, 512, 512}, 0, {96, 96, 160, 64}},
                                     {{300, 40, 1024}, 0, {2048, 64, 512}}};
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (const Group& g : groups)
      for (int64_t n : {1, 2, 5, 8, 9}) {
        INFO(dtype_name(dt) << " K=" << g.K << " (0: per job) jobs " << g.rows.size() << " n=" << n);
        const int count = int(g.rows.size());
        const size_t m = g.rows.size();
        std::vector<std::unique_ptr<DeviceBuffer>> own(2 * m);
        std::vector<WeightView> cw(m), gw(m);
        std::vector<std::vector<float>> x(m), ref(m);
        std::vector<Backend::MatmulJob> cj(m), gj(m);
        std::vector<float*> gy(m);
        for (int i = 0; i < count; ++i) {
          const int64_t R = g.rows[size_t(i)], K = g.ks.empty() ? g.K : g.ks[size_t(i)];
          const float a = std::sqrt(3.0f / float(K));
          HostTensor w = HostTensor::from_f32(rng.uniform(size_t(R * K), -a, a), {R, K});
          cw[size_t(i)] = cpu->load_weight(w, dt, own[size_t(2 * i)]);
          gw[size_t(i)] = gpu.be().load_weight(w, dt, own[size_t(2 * i + 1)]);
          x[size_t(i)] = rng.uniform(size_t(n * K), -1, 1);
          ref[size_t(i)].assign(size_t(n * R), 0.0f);
          Backend::Epilogue ep;
          if (i % 4 == 1) ep.has_act = true, ep.act = Unary::Sigmoid;
          if (i % 4 == 2) ep.has_act = true, ep.act = Unary::ReluSquare;
          if (i % 4 == 3) ep.has_act = true, ep.act = Unary::Tanh;
          cj[size_t(i)] = {&cw[size_t(i)], x[size_t(i)].data(), ref[size_t(i)].data(), ep};
          gy[size_t(i)] = gpu.poisoned(size_t(n * R));
          gj[size_t(i)] = {&gw[size_t(i)], gpu.put(x[size_t(i)]), gy[size_t(i)], ep};
        }
        cpu->matmul_group(cj.data(), count, n);
        gpu.be().matmul_group(gj.data(), count, n);
        const double tol = (n <= 8 || dt == DType::F32) ? 1e-5 : 3e-2;
        for (int i = 0; i < count; ++i)
          worst.check(std::string(dtype_name(dt)) + (n <= 8 ? " group" : " fallback"),
                      rel_err(gpu.get(gy[size_t(i)], ref[size_t(i)].size()), ref[size_t(i)]), tol);
      }
}

TEST_CASE("CUDA matmul_ex_relu_square_x (the square folded into the product's input) matches the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  Gpu gpu;
  auto cpu = make_cpu_backend(1);
  Rng rng(15);
  Worst worst("matmul_ex_relu_square_x");
  // n <= 8: the GEMV after the square; fp16 above 8 and int8 above 16 tokens fold it.
  const std::vector<ProductShape> shapes = {{67, 128, 1}, {96, 136, 8}, {300, 64, 9}, {513, 256, 40}};
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (const ProductShape& s : shapes)
      for (float range : {1.0f, 400.0f})  // 400^2 is beyond fp16's 65504: the scale must cover it
        for (int variant = 0; variant < 2; ++variant) {
          INFO(dtype_name(dt) << " R=" << s.R << " K=" << s.K << " n=" << s.n << " range " << range
                              << " variant " << variant);
          Backend::Epilogue ep;
          ep.accumulate = variant == 1;  // with the gate: the FFN's use, x += gate * (relu(k)^2 W^T)
          // cuBLAS rounds the (squared, scaled) input to 16 bits: ~3e-4 of error expected.
          check_product(gpu, *cpu, rng, worst, s, dt, ep, variant == 1, true, range, 3e-3);
        }
}

namespace {

// One rwkv7_mix over `segs` on the CPU (the plain ops) and the GPU, from the same inputs and
// state; the state arrays carry over to the next call.
struct Rwkv7MixCase {
  int64_t H, N;
  bool first_layer;
};

void check_rwkv7_mix(Gpu& gpu, Backend& cpu, Rng& rng, Worst& worst, const Rwkv7MixCase& c,
                     const std::vector<Segment>& segs, int64_t stride, int64_t off,
                     std::vector<float>& cstate, float* gstate) {
  const int64_t C = c.H * c.N, n = total(segs);
  const size_t nc = size_t(n * C);
  // Raw inputs as RWKV-7's products give them; vectors as in a checkpoint.
  std::map<std::string, std::vector<float>> in = {
      {"r", rng.uniform(nc, -1, 1)},      {"w_raw", rng.uniform(nc, -3, 3)},
      {"k_raw", rng.uniform(nc, -1, 1)},  {"a_raw", rng.uniform(nc, -3, 3)},
      {"v", rng.uniform(nc, -1, 1)},      {"v_raw", rng.uniform(nc, -3, 3)},
      {"g", rng.uniform(nc, -1, 1)},      {"v_first", rng.uniform(nc, -1, 1)}};
  std::map<std::string, std::vector<float>> vec = {
      {"w0", rng.uniform(size_t(C), -1, 1)},       {"a0", rng.uniform(size_t(C), -1, 1)},
      {"k_k", rng.uniform(size_t(C), 0.5f, 1.5f)}, {"k_a", rng.uniform(size_t(C), 0, 1)},
      {"v0", rng.uniform(size_t(C), -1, 1)},       {"r_k", rng.uniform(size_t(C), -1, 1)},
      {"lnx_w", rng.uniform(size_t(C), 0.5f, 1.5f)}, {"lnx_b", rng.uniform(size_t(C), -0.2f, 0.2f)},
      {"neg_decay", std::vector<float>(size_t(C), -float(std::exp(-0.5)))},
      {"neg_one", std::vector<float>(size_t(C), -1.0f)}};
  auto fill = [&](Backend::Rwkv7Mix& m, auto&& buf, auto&& cvec) {
    m.r = buf("r"), m.w_raw = buf("w_raw"), m.k_raw = buf("k_raw"), m.a_raw = buf("a_raw");
    m.v = buf("v"), m.v_raw = buf("v_raw"), m.g = buf("g"), m.v_first = buf("v_first");
    m.first_layer = c.first_layer;
    m.w0 = cvec("w0"), m.a0 = cvec("a0"), m.k_k = cvec("k_k"), m.k_a = cvec("k_a");
    m.v0 = c.first_layer ? nullptr : cvec("v0"), m.r_k = cvec("r_k");
    m.lnx_w = cvec("lnx_w"), m.lnx_b = cvec("lnx_b");
    m.neg_decay = cvec("neg_decay"), m.neg_one = cvec("neg_one");
  };
  auto host = in;  // the CPU overwrites its inputs
  std::vector<float> ref(nc), kk(nc);
  Backend::Rwkv7Mix cm;
  fill(cm, [&](const char* k) { return host[k].data(); }, [&](const char* k) { return vec[k].data(); });
  cm.kk = kk.data(), cm.out = ref.data();
  cpu.rwkv7_mix(cm, cpu.stage_segments(segs), cstate.data(), stride, off, n, c.H, c.N);

  std::map<std::string, float*> dev;
  for (auto& [k, v] : in) dev[k] = gpu.put(v);
  Backend::Rwkv7Mix gm;
  fill(gm, [&](const char* k) { return dev[k]; }, [&](const char* k) { return gpu.put(vec[k]); });
  gm.kk = gpu.poisoned(nc), gm.out = gpu.poisoned(nc);
  gpu.be().rwkv7_mix(gm, gpu.be().stage_segments(segs), gstate, stride, off, n, c.H, c.N);
  worst.check("out", rel_err(gpu.get(gm.out, nc), ref), 1e-4);
  worst.check("state", rel_err(gpu.get(gstate, cstate.size()), cstate), 1e-5);
  worst.check("v_first", rel_err(gpu.get(dev["v_first"], nc), host["v_first"]), 1e-6);
}

}  // namespace

TEST_CASE("CUDA rwkv7_mix (RWKV-7's time mix as one kernel) matches the plain ops on the CPU", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  auto cpu = make_cpu_backend(1);
  Rng rng(16);
  Worst worst("rwkv7_mix");
  const int n_slots = 8;
  // Head sizes 64 and 32 take the kernel (segments of up to 16 tokens, and every segment in the
  // invariant mode); 16 and long segments in the fast mode the plain ops (they must agree too).
  std::vector<std::vector<int>> layouts = kSegmentLayouts;
  layouts.push_back(std::vector<int>(8, 1));
  for (bool invariant : {false, true})
  for (Rwkv7MixCase c : {Rwkv7MixCase{1, 64, false}, Rwkv7MixCase{3, 64, true}, Rwkv7MixCase{32, 64, false},
                         Rwkv7MixCase{2, 32, false}, Rwkv7MixCase{2, 32, true}, Rwkv7MixCase{2, 16, false}}) {
    const int64_t off = 3, stride = off + c.H * c.N * c.N + 2;
    auto state = rng.uniform(size_t(n_slots * stride), -0.5f, 0.5f);
    std::vector<float> cstate = state;
    Gpu gpu(invariant);
    float* gs = gpu.put(state);
    for (const auto& lens : layouts) {  // the state carries over from one layout to the next
      auto segs = make_segments(lens, n_slots, rng);
      INFO("invariant " << invariant << " H=" << c.H << " N=" << c.N << " first layer " << c.first_layer << " tokens " << total(segs));
      check_rwkv7_mix(gpu, *cpu, rng, worst, c, segs, stride, off, cstate, gs);
    }
  }
}
