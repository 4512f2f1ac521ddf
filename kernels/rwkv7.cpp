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

// Workspace buffers: the six mixes (free after the first products: xr's then holds the time
// mix's output, xw's its scratch), then the products (18 in all).
enum : int {
  kXln = kAtt0, kPrev, kMix0, kLowW = kMix0 + 6, kLowA, kLowG, kLowV, kR, kWRaw, kKRaw, kV,
  kARaw, kVRaw, kGate
};
static_assert(int(kGate) < int(kFfnXln), "the time mix's workspace buffers end before the channel mix's");

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
      ld.low_rank(p, C_, m1, m2);
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
    float* low_w = ws.get(kLowW, size_t(n * w1_.rows));
    float* low_a = ws.get(kLowA, size_t(n * a1_.rows));
    float* low_g = ws.get(kLowG, size_t(n * g1_.rows));
    float* low_v = first_layer_ ? nullptr : ws.get(kLowV, size_t(n * v1_.rows));
    float* r = ws.get(kR, nc);
    Backend::Rwkv7Mix m;
    m.r = r;
    m.w_raw = ws.get(kWRaw, nc);
    m.k_raw = ws.get(kKRaw, size_t(n * std::max(C, F_)));  // the channel mix's key too ([n, F])
    m.v = ws.get(kV, nc);
    m.a_raw = ws.get(kARaw, nc);
    m.v_raw = ws.get(kVRaw, nc);
    float* g = ws.get(kGate, nc);
    m.g = g;
    m.out = xs[0];  // xr and xw are free once the first products have run
    m.kk = xs[1];
    m.v_first = h.v_first;
    m.first_layer = first_layer_;
    m.w0 = w0_, m.a0 = a0_, m.k_k = k_k_, m.k_a = k_a_, m.v0 = v0_, m.r_k = r_k_;
    m.lnx_w = nm_.lnx_w, m.lnx_b = nm_.lnx_b;
    m.neg_decay = neg_decay_scale_, m.neg_one = neg_one_;
    m.l2_eps = kL2Eps, m.gn_eps = kGroupNormEps;

    // Time mix: one pass for ln1, the token shift and the six mixes; the seven products of the
    // mixes as one group (w's and g's first factors with their activations), then the four
    // second factors as another; the rest of the time mix up to its output product as one op.
    be.norm_shift_mix(x, nm_.ln1_w, nm_.ln1_b, eps_, n, C, segs, state, S, 0, mu_, xs, 6, xln, prev);
    Backend::Epilogue tanh_ep, sig_ep;
    tanh_ep.has_act = sig_ep.has_act = true;
    tanh_ep.act = Unary::Tanh;
    sig_ep.act = Unary::Sigmoid;
    float *xr = xs[0], *xw = xs[1], *xk = xs[2], *xv = xs[3], *xa = xs[4], *xg = xs[5];
    const Backend::MatmulJob first[7] = {
        {&att_r_, xr, r, {}}, {&w1_, xw, low_w, tanh_ep},
        {&att_k_, xk, m.k_raw, {}},                 {&att_v_, xv, m.v, {}},
        {&a1_, xa, low_a, {}},                      {&g1_, xg, low_g, sig_ep},
        {&v1_, xv, low_v, {}}};
    be.matmul_group(first, first_layer_ ? 6 : 7, n);
    const Backend::MatmulJob second[4] = {
        {&w2_, low_w, m.w_raw, {}}, {&a2_, low_a, m.a_raw, {}}, {&g2_, low_g, g, {}},
        {&v2_, low_v, m.v_raw, {}}};
    be.matmul_group(second, first_layer_ ? 3 : 4, n);
    be.rwkv7_mix(m, segs, state, S, 2 * C, n, H_, N_);
    Backend::Epilogue add;
    add.accumulate = true;
    be.matmul_ex(att_o_, m.out, x, n, add, m.kk);  // x += O out

    // Channel mix: x += Wv relu(Wk xk)^2, the square folded into the value product's input
    // where the backend does that.
    float* fk = m.k_raw;
    be.norm_shift_mix(x, nm_.ln2_w, nm_.ln2_b, eps_, n, C, segs, state, S, C, &ffn_mu_k_, &xk, 1,
                      xln, prev);
    Backend::Epilogue relu2;
    relu2.has_act = true;
    relu2.act = Unary::ReluSquare;
    const bool fold = be.folds_relu_square_x(ffn_v_, n);
    be.matmul_ex(ffn_k_, xk, fk, n, fold ? Backend::Epilogue{} : relu2, nullptr);
    if (fold) be.matmul_ex_relu_square_x(ffn_v_, fk, x, n, add, m.v);
    else be.matmul_ex(ffn_v_, fk, x, n, add, m.v);
  }

 private:
  int64_t C_, F_, H_, N_;
  float eps_;
  bool first_layer_;
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
