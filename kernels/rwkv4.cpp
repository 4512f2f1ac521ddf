// RWKV-4 block forward on any backend (DESIGN.md, Numerics):
//   x += att(ln1(x));  x += ffn(ln2(x))
// State per slot, fp32, 5*C floats: [att token-shift x | aa | bb | pp | ffn token-shift x].
#include <cmath>

#include "common/error.h"
#include "kernels/block.h"
#include "kernels/versions.h"

namespace rwkvpp {
namespace {

enum : int { kXln = kAtt0, kPrev, kMixK, kMixV, kMixR, kK, kV, kR };
static_assert(int(kR) < int(kFfnXln), "the time mix's workspace buffers end before the channel mix's");

class BlockV4 final : public Block {
 public:
  BlockV4(Backend& be, const ModelConfig& cfg, int layer, const TensorMap& t, DType dtype)
      : C_(cfg.n_embd), F_(cfg.ffn_dim), eps_(cfg.layer_norm_eps) {
    const LayerLoader ld(be, t, layer, dtype, keep_);
    nm_ = ld.norms(C_, false);
    att_mix_k_ = ld.vec("att.time_mix_k", C_);
    att_mix_v_ = ld.vec("att.time_mix_v", C_);
    att_mix_r_ = ld.vec("att.time_mix_r", C_);
    ffn_mix_k_ = ld.vec("ffn.time_mix_k", C_);
    ffn_mix_r_ = ld.vec("ffn.time_mix_r", C_);
    {
      // The file keeps time_decay raw; the recurrence wants w = -exp(time_decay).
      auto d = ld.get("att.time_decay", C_).to_f32();
      for (float& x : d) x = -std::exp(x);
      decay_ = ld.values(d);
    }
    first_ = ld.vec("att.time_first", C_);
    att_k_ = ld.mat("att.key.weight", C_, C_);
    att_v_ = ld.mat("att.value.weight", C_, C_);
    att_r_ = ld.mat("att.receptance.weight", C_, C_);
    att_o_ = ld.mat("att.output.weight", C_, C_);
    ffn_ = ReluSquareFfn::load(ld, C_, F_, nm_.ln2_w, nm_.ln2_b, ffn_mix_k_, ffn_mix_r_, eps_);
  }

  int64_t state_floats() const override { return 5 * C_; }
  void init_state(float* s) const override {
    for (int64_t i = 0; i < 5 * C_; ++i) s[i] = 0.0f;
    for (int64_t i = 0; i < C_; ++i) s[3 * C_ + i] = -1e30f;  // pp: log of an empty sum
  }

  void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h, float* state) override {
    const int64_t n = h.n, C = C_, nc = n * C, S = state_floats();
    float* x = h.x;
    float* xln = ws.get(kXln, nc);
    float* prev = ws.get(kPrev, nc);
    float* a = ws.get(kMixK, nc);  // then r * wkv
    float* b = ws.get(kMixV, nc);  // then the output product before it is added
    float* c = ws.get(kMixR, nc);
    float* k = ws.get(kK, nc);
    float* v = ws.get(kV, nc);
    float* r = ws.get(kR, nc);

    // Time mix.
    const float* mu[3] = {att_mix_k_, att_mix_v_, att_mix_r_};
    float* mixed[3] = {a, b, c};
    be.norm_shift_mix(x, nm_.ln1_w, nm_.ln1_b, eps_, n, C, segs, state, S, 0, mu, mixed, 3, xln, prev);
    Backend::Epilogue sig;
    sig.has_act = true;
    sig.act = Unary::Sigmoid;
    const Backend::MatmulJob kvr[3] = {{&att_k_, a, k, {}}, {&att_v_, b, v, {}}, {&att_r_, c, r, sig}};
    be.matmul_group(kvr, 3, n);                        // k, v, r = sigmoid(W_r c)
    be.wkv4_gated(k, v, decay_, first_, segs, state, S, C, a, C, r);  // a = r * wkv
    Backend::Epilogue add;
    add.accumulate = true;
    be.matmul_ex(att_o_, a, x, n, add, b);             // x += W_o a

    ffn_.forward(be, ws, segs, h, state, S, 4 * C);
  }

 private:
  ReluSquareFfn ffn_;
  int64_t C_, F_;
  float eps_;
  BlockNorms nm_;
  const float *att_mix_k_, *att_mix_v_, *att_mix_r_, *ffn_mix_k_, *ffn_mix_r_;
  const float *decay_, *first_;
  WeightView att_k_, att_v_, att_r_, att_o_;
};

}  // namespace

std::unique_ptr<Block> make_block_v4(Backend& be, const ModelConfig& cfg, int layer,
                                     const TensorMap& t, DType dtype) {
  return std::make_unique<BlockV4>(be, cfg, layer, t, dtype);
}

}  // namespace rwkvpp
