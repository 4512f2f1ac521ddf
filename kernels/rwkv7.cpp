// RWKV-7 ("Goose") block forward on any backend (ChatRWKV rwkv/model.py RWKV_x070, RWKV-LM
// RWKV-v7 demo, rwkv.cpp):
//   x += att(ln1(x));  x += ffn(ln2(x))
// Time mix, with lerp(x, prev, m) = x + (prev - x) * m and low-rank maps x @ A1 @ A2:
//   xr, xw, xk, xv, xa, xg = lerp(x, prev, x_r), ... , lerp(x, prev, x_g)
//   r = R xr;  k = K xk;  v = V xv
//   w = exp(-exp(-0.5) * sigmoid(w0 + tanh(xw @ w1) @ w2))        decay factor in (0, 1)
//   a = sigmoid(a0 + xa @ a1 @ a2);  g = sigmoid(xg @ g1) @ g2
//   kk = normalize(k * k_k) per head;  k = k * (1 + (a - 1) * k_a)
//   layer 0: v_first = v;  other layers: v = lerp(v, v_first, sigmoid(v0 + xv @ v1 @ v2))
//   per head, matrix state S[h, j, i] (value row j, key column i):
//     S = S * diag(w) + (S (-kk)) (kk * a)^T + v k^T;  out = S r
//   out = group_norm(out) + (sum_i r k r_k per head) * v;  x += O (out * g)
// Channel mix: xk = lerp(x, prev, x_k); x += Wv relu(Wk xk)^2.
// v_first travels in Hidden::v_first, so it crosses stage boundaries with x. The low-rank
// matrices (x @ W in the checkpoint) are transposed at load into the [rows = out, cols = in]
// convention of Backend::matmul; a static lerp runs as Backend::mix with mu = 1 - x_*.
//
// State per slot, fp32, 2*C + H*N*N floats:
//   [att token-shift x (C) | ffn token-shift x (C) | S (H, N, N), value index j before key i]
// A fresh sequence starts from all zeros.
#include <cmath>

#include "common/error.h"
#include "kernels/block.h"
#include "kernels/versions.h"

namespace rwkvpp {
namespace {

// Group norm eps of ln_x (RWKV-LM, ChatRWKV and rwkv.cpp: 64e-5 = 1e-5 * head_size_divisor^2).
constexpr float kGroupNormEps = 64e-5f;
// torch.nn.functional.normalize's default eps, used for kk.
constexpr float kL2Eps = 1e-12f;

// Workspace buffers: the six mixes, then the products and temporaries (18 in all).
enum : int { kXln = kAtt0, kPrev, kMix0, kLow = kMix0 + 6, kR, kDecay, kK, kV, kA, kGate, kKk, kTmp, kOut };
static_assert(int(kOut) < int(kFfnXln), "the time mix's workspace buffers end before the channel mix's");

class BlockV7 final : public Block {
 public:
  BlockV7(Backend& be, const ModelConfig& cfg, int layer, const TensorMap& t, DType dtype)
      : C_(cfg.n_embd), F_(cfg.ffn_dim), H_(cfg.n_head), N_(cfg.head_size),
        eps_(cfg.layer_norm_eps), first_layer_(layer == 0) {
    if (H_ <= 0 || N_ <= 0 || H_ * N_ != C_)
      fail("layer {}: RWKV-7 needs n_head * head_size == n_embd (got {} * {} vs {})", layer, H_,
           N_, C_);
    const LayerLoader ld(be, t, layer, dtype, keep_);
    auto low_rank = [&](const std::string& p, WeightView& m1, WeightView& m2) {
      max_low_ = std::max(max_low_, ld.low_rank(p, C_, m1, m2));
    };
    nm_ = ld.norms(C_, true);
    static const char* kMix[6] = {"att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g"};
    for (int s = 0; s < 6; ++s) mu_[s] = ld.one_minus(kMix[s], C_);
    ffn_mu_k_ = ld.one_minus("ffn.x_k", C_);
    w0_ = ld.vec("att.w0", C_);
    a0_ = ld.vec("att.a0", C_);
    k_k_ = ld.vec("att.k_k", C_);
    k_a_ = ld.vec("att.k_a", C_);
    r_k_ = ld.vec("att.r_k", C_);
    neg_decay_scale_ = ld.values(std::vector<float>(size_t(C_), -float(std::exp(-0.5))));
    neg_one_ = ld.values(std::vector<float>(size_t(C_), -1.0f));
    low_rank("att.w", w1_, w2_);
    low_rank("att.a", a1_, a2_);
    low_rank("att.g", g1_, g2_);
    if (!first_layer_) {  // layer 0 defines v_first and has no value residual
      v0_ = ld.vec("att.v0", C_);
      low_rank("att.v", v1_, v2_);
    }
    att_r_ = ld.mat("att.receptance.weight", C_, C_);
    att_k_ = ld.mat("att.key.weight", C_, C_);
    att_v_ = ld.mat("att.value.weight", C_, C_);
    att_o_ = ld.mat("att.output.weight", C_, C_);
    ffn_k_ = ld.mat("ffn.key.weight", F_, C_);
    ffn_v_ = ld.mat("ffn.value.weight", C_, F_);
  }

  int64_t state_floats() const override { return 2 * C_ + H_ * N_ * N_; }
  void init_state(float* s) const override {
    for (int64_t i = 0; i < state_floats(); ++i) s[i] = 0.0f;
  }

  void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h, float* state) override {
    if (!h.v_first) fail("RWKV-7 layer needs the v_first buffer in Hidden (none was passed)");
    const int64_t n = h.n, C = C_, nc = n * C, S = state_floats();
    float* x = h.x;
    float* xln = ws.get(kXln, nc);
    float* prev = ws.get(kPrev, nc);
    float* xs[6];  // xr, xw, xk, xv, xa, xg
    for (int s = 0; s < 6; ++s) xs[s] = ws.get(kMix0 + s, nc);
    float* low = ws.get(kLow, size_t(n * max_low_));
    float* r = ws.get(kR, nc);
    float* w = ws.get(kDecay, nc);
    float* k = ws.get(kK, size_t(n * std::max(C, F_)));  // the channel mix's key too ([n, F])
    float* v = ws.get(kV, nc);
    float* a = ws.get(kA, nc);
    float* g = ws.get(kGate, nc);
    float* kk = ws.get(kKk, nc);
    float* tmp = ws.get(kTmp, nc);
    float* out = ws.get(kOut, nc);
    float *xr = xs[0], *xw = xs[1], *xk = xs[2], *xv = xs[3], *xa = xs[4], *xg = xs[5];

    // Time mix.
    be.layer_norm(x, nm_.ln1_w, nm_.ln1_b, xln, n, C, eps_);
    be.token_shift(xln, C, segs, state, S, 0, prev);
    for (int s = 0; s < 6; ++s) be.mix(xln, prev, mu_[s], xs[s], n, C);

    be.matmul(att_r_, xr, r, n);
    // w = exp(-e^-0.5 * sigmoid(w0 + tanh(xw @ w1) @ w2))
    be.matmul(w1_, xw, low, n);
    be.unary(Unary::Tanh, low, low, n * w1_.rows);
    be.matmul(w2_, low, w, n);
    be.binary_row(Binary::Add, w, w0_, w, n, C);
    be.unary(Unary::Sigmoid, w, w, nc);
    be.binary_row(Binary::Mul, w, neg_decay_scale_, w, n, C);
    be.unary(Unary::Exp, w, w, nc);
    be.matmul(att_k_, xk, tmp, n);  // raw k
    be.matmul(att_v_, xv, v, n);
    // a = sigmoid(a0 + xa @ a1 @ a2)
    be.matmul(a1_, xa, low, n);
    be.matmul(a2_, low, a, n);
    be.binary_row(Binary::Add, a, a0_, a, n, C);
    be.unary(Unary::Sigmoid, a, a, nc);
    // g = sigmoid(xg @ g1) @ g2
    be.matmul(g1_, xg, low, n);
    be.unary(Unary::Sigmoid, low, low, n * g1_.rows);
    be.matmul(g2_, low, g, n);

    // kk = normalize(k * k_k); k = k * (1 + (a - 1) * k_a) = mix(k * a, k, k_a)
    be.binary_row(Binary::Mul, tmp, k_k_, kk, n, C);
    be.head_l2_normalize(kk, kk, n, H_, N_, kL2Eps);
    be.binary(Binary::Mul, tmp, a, k, nc);
    be.mix(k, tmp, k_a_, k, n, C);

    // Value residual: layer 0 defines v_first, later layers pull v towards it.
    if (first_layer_) {
      be.copy(h.v_first, v, size_t(nc) * sizeof(float));
    } else {
      be.matmul(v1_, xv, low, n);
      be.matmul(v2_, low, tmp, n);
      be.binary_row(Binary::Add, tmp, v0_, tmp, n, C);
      be.unary(Unary::Sigmoid, tmp, tmp, nc);
      be.lerp(v, h.v_first, tmp, v, nc);
    }

    // Delta-rule recurrence with a = -kk, b = kk * a.
    be.binary(Binary::Mul, kk, a, a, nc);
    be.binary_row(Binary::Mul, kk, neg_one_, kk, n, C);
    be.wkv7(r, w, k, v, kk, a, segs, state, S, 2 * C, out, H_, N_);
    be.group_norm(out, nm_.lnx_w, nm_.lnx_b, out, n, H_, N_, kGroupNormEps);
    be.head_dot_add(r, k, r_k_, v, out, n, H_, N_);
    be.binary(Binary::Mul, out, g, out, nc);
    be.matmul(att_o_, out, tmp, n);
    be.binary(Binary::Add, x, tmp, x, nc);

    // Channel mix.
    be.layer_norm(x, nm_.ln2_w, nm_.ln2_b, xln, n, C, eps_);
    be.token_shift(xln, C, segs, state, S, C, prev);
    be.mix(xln, prev, ffn_mu_k_, xk, n, C);
    be.matmul(ffn_k_, xk, k, n);
    be.unary(Unary::ReluSquare, k, k, n * F_);
    be.matmul(ffn_v_, k, v, n);
    be.binary(Binary::Add, x, v, x, nc);
  }

 private:
  int64_t C_, F_, H_, N_;
  float eps_;
  bool first_layer_;
  int64_t max_low_ = 0;  // widest low-rank dimension
  BlockNorms nm_;
  const float* mu_[6];                      // [C] 1 - x_{r,w,k,v,a,g}
  const float* ffn_mu_k_;                   // [C] 1 - ffn.x_k
  const float *w0_, *a0_, *v0_ = nullptr;   // [C]
  const float *k_k_, *k_a_, *r_k_;          // [C]
  const float *neg_decay_scale_, *neg_one_; // [C] constants -exp(-0.5), -1
  WeightView w1_, w2_, a1_, a2_, g1_, g2_, v1_, v2_;  // [D, C] and [C, D]
  WeightView att_r_, att_k_, att_v_, att_o_, ffn_k_, ffn_v_;
};

}  // namespace

std::unique_ptr<Block> make_block_v7(Backend& be, const ModelConfig& cfg, int layer,
                                     const TensorMap& t, DType dtype) {
  return std::make_unique<BlockV7>(be, cfg, layer, t, dtype);
}

}  // namespace rwkvpp
