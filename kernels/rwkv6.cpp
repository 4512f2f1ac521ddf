// RWKV-6 ("Finch") block forward on any backend (ChatRWKV rwkv/model.py att_*_v6_0, rwkv.cpp):
//   x += att(ln1(x));  x += ffn(ln2(x))
// Time mix, with d = prev - x (token shift) and lerp(x, prev, m) = x + d * m:
//   xxx = lerp(x, prev, maa_x)
//   m_s = tanh(xxx @ maa_w1[:, s*D:(s+1)*D]) @ maa_w2[s]     for s = w, k, v, r, g (in that order)
//   xs  = lerp(x, prev, maa_s + m_s)
//   r, k, v = R xr, K xk, V xv;  g = silu(G xg)
//   w = exp(-exp(time_decay + tanh(xw @ decay_w1) @ decay_w2))   (per token and channel)
//   per head, matrix state S[h, i, j]: out[h, j] = sum_i r[h,i] (u[h,i] k[h,i] v[h,j] + S[h,i,j]);
//   S = S * w[h,i] + k v^T, u = time_faaaa;  out = group_norm(out) * g;  x += O out
// Channel mix: xk = lerp(x, prev, maa_k), xr = lerp(x, prev, maa_r);
//   x += sigmoid(Wr xr) * (Wv relu(Wk xk)^2)
// The low-rank matrices (x @ W in the checkpoint) are transposed at load into the
// [rows = out, cols = in] convention of Backend::matmul; a static lerp runs as Backend::mix
// with mu = 1 - maa.
//
// State per slot, fp32, 2*C + H*N*N floats:
//   [att token-shift x (C) | ffn token-shift x (C) | S (H, N, N), key index i before value j]
// A fresh sequence starts from all zeros.
#include <cmath>

#include "common/error.h"
#include "kernels/block.h"
#include "kernels/versions.h"

namespace rwkvpp {
namespace {

// Group norm eps of ln_x (ChatRWKV and rwkv.cpp: 64e-5 = 1e-5 * head_size_divisor^2).
constexpr float kGroupNormEps = 64e-5f;
constexpr int kMixes = 5;  // w, k, v, r, g

class BlockV6 final : public Block {
 public:
  BlockV6(Backend& be, const ModelConfig& cfg, int layer, const TensorMap& t, DType dtype)
      : C_(cfg.n_embd), F_(cfg.ffn_dim), H_(cfg.n_head), N_(cfg.head_size),
        eps_(cfg.layer_norm_eps) {
    if (H_ <= 0 || N_ <= 0 || H_ * N_ != C_)
      fail("layer {}: RWKV-6 needs n_head * head_size == n_embd (got {} * {} vs {})", layer, H_,
           N_, C_);
    auto vec_f32 = [&](const std::vector<float>& v) { return upload_f32(be, v, keep_); };
    auto vec = [&](const std::string& name) {
      return vec_f32(require(t, layer, name, C_).to_f32());
    };
    auto one_minus = [&](const std::string& name) {
      return upload_one_minus(be, t, layer, name, C_, keep_);
    };
    auto shape_is = [&](const std::string& name, std::vector<int64_t> want) -> const HostTensor& {
      auto it = t.find(name);
      if (it == t.end()) fail("layer {}: tensor '{}' is missing", layer, name);
      if (it->second.shape != want)
        fail("layer {}: tensor '{}' has shape {}, expected {}", layer, name,
             it->second.shape_str(), shape_to_string(want));
      return it->second;
    };
    auto load = [&](const HostTensor& h) { return load_small_matrix(be, h, dtype, keep_); };
    auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
      return load_layer_matrix(be, t, layer, name, rows, cols, dtype, keep_);
    };
    // Columns [c0, c0 + m) of a row-major [rows, cols] fp32 matrix, transposed: [m, rows].
    auto columns_t = [&](const std::vector<float>& src, int64_t rows, int64_t cols, int64_t c0,
                         int64_t m) {
      std::vector<float> out(size_t(m * rows));
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < m; ++j) out[size_t(j * rows + i)] = src[size_t(i * cols + c0 + j)];
      return load(HostTensor::from_f32(out, {m, rows}));
    };

    ln1_w_ = vec("ln1.weight");
    ln1_b_ = vec("ln1.bias");
    ln2_w_ = vec("ln2.weight");
    ln2_b_ = vec("ln2.bias");
    lnx_w_ = vec("att.ln_x.weight");
    lnx_b_ = vec("att.ln_x.bias");
    mu_x_ = one_minus("att.time_maa_x");
    static const char* kMaa[kMixes] = {"att.time_maa_w", "att.time_maa_k", "att.time_maa_v",
                                       "att.time_maa_r", "att.time_maa_g"};
    for (int s = 0; s < kMixes; ++s) maa_[s] = vec(kMaa[s]);
    ffn_mu_k_ = one_minus("ffn.time_maa_k");
    ffn_mu_r_ = one_minus("ffn.time_maa_r");
    decay_ = vec("att.time_decay");  // raw; exp(-exp(.)) is applied per token
    first_ = vec_f32(require(t, layer, "att.time_faaaa", C_).to_f32());

    {
      // time_maa_w1 [C, 5*D] and time_maa_w2 [5, D, C]: split per mix and transposed.
      auto it = t.find("att.time_maa_w1");
      if (it == t.end()) fail("layer {}: tensor 'att.time_maa_w1' is missing", layer);
      const auto& sh = it->second.shape;
      if (sh.size() != 2 || sh[0] != C_ || sh[1] % kMixes != 0 || sh[1] == 0)
        fail("layer {}: tensor 'att.time_maa_w1' has shape {}, expected [{}, 5*D]", layer,
             it->second.shape_str(), C_);
      D_mix_ = sh[1] / kMixes;
      auto w1 = it->second.to_f32();
      auto w2 = shape_is("att.time_maa_w2", {kMixes, D_mix_, C_}).to_f32();
      for (int s = 0; s < kMixes; ++s) {
        maa_w1_[s] = columns_t(w1, C_, kMixes * D_mix_, s * D_mix_, D_mix_);
        std::vector<float> w2s(w2.begin() + s * D_mix_ * C_, w2.begin() + (s + 1) * D_mix_ * C_);
        maa_w2_[s] = columns_t(w2s, D_mix_, C_, 0, C_);
      }
    }
    {
      auto it = t.find("att.time_decay_w1");
      if (it == t.end()) fail("layer {}: tensor 'att.time_decay_w1' is missing", layer);
      const auto& sh = it->second.shape;
      if (sh.size() != 2 || sh[0] != C_ || sh[1] == 0)
        fail("layer {}: tensor 'att.time_decay_w1' has shape {}, expected [{}, D]", layer,
             it->second.shape_str(), C_);
      D_decay_ = sh[1];
      decay_w1_ = columns_t(it->second.to_f32(), C_, D_decay_, 0, D_decay_);
      decay_w2_ = columns_t(shape_is("att.time_decay_w2", {D_decay_, C_}).to_f32(), D_decay_, C_,
                            0, C_);
    }
    att_k_ = mat("att.key.weight", C_, C_);
    att_v_ = mat("att.value.weight", C_, C_);
    att_r_ = mat("att.receptance.weight", C_, C_);
    att_g_ = mat("att.gate.weight", C_, C_);
    att_o_ = mat("att.output.weight", C_, C_);
    ffn_ = ReluSquareFfn::load(be, t, layer, C_, F_, ln2_w_, ln2_b_, ffn_mu_k_, ffn_mu_r_, eps_, dtype, keep_);
  }

  int64_t state_floats() const override { return 2 * C_ + H_ * N_ * N_; }
  void init_state(float* s) const override {
    for (int64_t i = 0; i < state_floats(); ++i) s[i] = 0.0f;
  }

  void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h, float* state) override {
    const int64_t n = h.n, C = C_, nc = n * C, S = state_floats();
    float* x = h.x;
    float* xln = ws.get(0, nc);
    float* prev = ws.get(1, nc);
    float* xxx = ws.get(2, nc);
    float* low = ws.get(3, size_t(n * std::max(D_mix_, D_decay_)));
    float* xs[kMixes];  // xw, xk, xv, xr, xg
    for (int s = 0; s < kMixes; ++s) xs[s] = ws.get(4 + s, nc);
    float* r = ws.get(9, nc);
    float* k = ws.get(10, size_t(n * std::max(C, F_)));
    float* v = ws.get(11, nc);
    float* g = ws.get(12, nc);
    float* w = ws.get(13, nc);

    // Time mix: data-dependent token shift.
    be.layer_norm(x, ln1_w_, ln1_b_, xln, n, C, eps_);
    be.token_shift(xln, C, segs, state, S, 0, prev);
    be.mix(xln, prev, mu_x_, xxx, n, C);
    for (int s = 0; s < kMixes; ++s) {
      be.matmul(maa_w1_[s], xxx, low, n);
      be.unary(Unary::Tanh, low, low, n * D_mix_);
      be.matmul(maa_w2_[s], low, xs[s], n);
      be.binary_row(Binary::Add, xs[s], maa_[s], xs[s], n, C);
      be.lerp(xln, prev, xs[s], xs[s], nc);
    }
    // Per-token decay.
    be.matmul(decay_w1_, xs[0], low, n);
    be.unary(Unary::Tanh, low, low, n * D_decay_);
    be.matmul(decay_w2_, low, w, n);
    be.binary_row(Binary::Add, w, decay_, w, n, C);
    be.unary(Unary::ExpNegExp, w, w, nc);

    be.matmul(att_k_, xs[1], k, n);
    be.matmul(att_v_, xs[2], v, n);
    be.matmul(att_r_, xs[3], r, n);
    be.matmul(att_g_, xs[4], g, n);
    be.unary(Unary::Silu, g, g, nc);
    float* out = xs[0];
    be.wkv5(r, k, v, w, true, first_, segs, state, S, 2 * C, out, H_, N_);
    be.group_norm(out, lnx_w_, lnx_b_, out, n, H_, N_, kGroupNormEps);
    be.binary(Binary::Mul, out, g, out, nc);
    be.matmul(att_o_, out, v, n);
    be.binary(Binary::Add, x, v, x, nc);

    ffn_.forward(be, ws, segs, h, state, S, C);
  }

 private:
  ReluSquareFfn ffn_;
  int64_t C_, F_, H_, N_;
  int64_t D_mix_ = 0, D_decay_ = 0;  // low-rank widths (32 and 64 in released models)
  float eps_;
  const float *ln1_w_, *ln1_b_, *ln2_w_, *ln2_b_, *lnx_w_, *lnx_b_;
  const float* mu_x_;           // [C] 1 - time_maa_x
  const float* maa_[kMixes];    // [C] time_maa_{w,k,v,r,g}
  const float *ffn_mu_k_, *ffn_mu_r_;  // [C] 1 - ffn.time_maa_{k,r}
  const float *decay_, *first_;        // [C] raw time_decay, time_faaaa
  WeightView maa_w1_[kMixes];   // [D_mix, C] each
  WeightView maa_w2_[kMixes];   // [C, D_mix] each
  WeightView decay_w1_;         // [D_decay, C]
  WeightView decay_w2_;         // [C, D_decay]
  WeightView att_k_, att_v_, att_r_, att_g_, att_o_;
};

}  // namespace

std::unique_ptr<Block> make_block_v6(Backend& be, const ModelConfig& cfg, int layer,
                                     const TensorMap& t, DType dtype) {
  return std::make_unique<BlockV6>(be, cfg, layer, t, dtype);
}

}  // namespace rwkvpp
