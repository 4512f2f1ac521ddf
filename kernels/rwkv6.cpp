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

enum : int { kXln = kAtt0, kPrev, kXxx, kLow, kMix0, kR = kMix0 + kMixes, kK, kV, kGate, kDecay };
static_assert(int(kDecay) < int(kFfnXln), "the time mix's workspace buffers end before the channel mix's");

class BlockV6 final : public Block {
 public:
  BlockV6(Backend& be, const ModelConfig& cfg, int layer, const TensorMap& t, DType dtype)
      : C_(cfg.n_embd), F_(cfg.ffn_dim), H_(cfg.n_head), N_(cfg.head_size),
        eps_(cfg.layer_norm_eps) {
    if (H_ <= 0 || N_ <= 0 || H_ * N_ != C_)
      fail("layer {}: RWKV-6 needs n_head * head_size == n_embd (got {} * {} vs {})", layer, H_,
           N_, C_);
    const LayerLoader ld(be, t, layer, dtype, keep_);
    nm_ = ld.norms(C_, true);
    mu_x_ = ld.one_minus("att.time_maa_x", C_);
    static const char* kMaa[kMixes] = {"att.time_maa_w", "att.time_maa_k", "att.time_maa_v",
                                       "att.time_maa_r", "att.time_maa_g"};
    for (int s = 0; s < kMixes; ++s) maa_[s] = ld.vec(kMaa[s], C_);
    ffn_mu_k_ = ld.one_minus("ffn.time_maa_k", C_);
    ffn_mu_r_ = ld.one_minus("ffn.time_maa_r", C_);
    decay_ = ld.vec("att.time_decay", C_);  // raw; exp(-exp(.)) is applied per token
    first_ = ld.vec("att.time_faaaa", C_);
    {
      // time_maa_w1 [C, 5*D] and time_maa_w2 [5, D, C]: split per mix and transposed.
      const HostTensor& w1t = ld.get("att.time_maa_w1");
      const auto& sh = w1t.shape;
      if (sh.size() != 2 || sh[0] != C_ || sh[1] % kMixes != 0 || sh[1] == 0)
        fail("layer {}: tensor 'att.time_maa_w1' has shape {}, expected [{}, 5*D]", layer,
             w1t.shape_str(), C_);
      D_mix_ = sh[1] / kMixes;
      const auto w1 = w1t.to_f32();
      const auto w2 = ld.get("att.time_maa_w2", std::vector<int64_t>{kMixes, D_mix_, C_}).to_f32();
      for (int s = 0; s < kMixes; ++s) {
        // Columns [s D, (s + 1) D) of w1.
        std::vector<float> w1s(size_t(C_ * D_mix_));
        for (int64_t i = 0; i < C_; ++i)
          for (int64_t j = 0; j < D_mix_; ++j)
            w1s[size_t(i * D_mix_ + j)] = w1[size_t(i * kMixes * D_mix_ + s * D_mix_ + j)];
        maa_w1_[s] = ld.small_t(w1s, C_, D_mix_);
        std::vector<float> w2s(w2.begin() + s * D_mix_ * C_, w2.begin() + (s + 1) * D_mix_ * C_);
        maa_w2_[s] = ld.small_t(w2s, D_mix_, C_);
      }
    }
    D_decay_ = ld.low_rank("att.time_decay_w", C_, decay_w1_, decay_w2_);
    att_k_ = ld.mat("att.key.weight", C_, C_);
    att_v_ = ld.mat("att.value.weight", C_, C_);
    att_r_ = ld.mat("att.receptance.weight", C_, C_);
    att_g_ = ld.mat("att.gate.weight", C_, C_);
    att_o_ = ld.mat("att.output.weight", C_, C_);
    ffn_ = ReluSquareFfn::load(ld, C_, F_, nm_.ln2_w, nm_.ln2_b, ffn_mu_k_, ffn_mu_r_, eps_);
  }

  int64_t state_floats() const override { return 2 * C_ + H_ * N_ * N_; }
  void init_state(float* s) const override {
    for (int64_t i = 0; i < state_floats(); ++i) s[i] = 0.0f;
  }

  void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h, float* state) override {
    const int64_t n = h.n, C = C_, nc = n * C, S = state_floats();
    float* x = h.x;
    float* xln = ws.get(kXln, nc);
    float* prev = ws.get(kPrev, nc);
    float* xxx = ws.get(kXxx, nc);
    float* low = ws.get(kLow, size_t(n * std::max(D_mix_, D_decay_)));
    float* xs[kMixes];  // xw, xk, xv, xr, xg
    for (int s = 0; s < kMixes; ++s) xs[s] = ws.get(kMix0 + s, nc);
    float* r = ws.get(kR, nc);
    float* k = ws.get(kK, nc);
    float* v = ws.get(kV, nc);
    float* g = ws.get(kGate, nc);
    float* w = ws.get(kDecay, nc);

    // Time mix: data-dependent token shift.
    be.layer_norm(x, nm_.ln1_w, nm_.ln1_b, xln, n, C, eps_);
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
    be.group_norm(out, nm_.lnx_w, nm_.lnx_b, out, n, H_, N_, kGroupNormEps);
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
  BlockNorms nm_;
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
