// RWKV-4 block forward on any backend (DESIGN.md, Numerics):
//   x += att(ln1(x));  x += ffn(ln2(x))
// State per slot, fp32, 5*C floats: [att token-shift x | aa | bb | pp | ffn token-shift x].
#include <cmath>

#include "common/error.h"
#include "kernels/block.h"
#include "kernels/versions.h"

namespace rwkvpp {
namespace {

class BlockV4 final : public Block {
 public:
  BlockV4(Backend& be, const ModelConfig& cfg, int layer, const TensorMap& t, DType dtype)
      : C_(cfg.n_embd), F_(cfg.ffn_dim), eps_(cfg.layer_norm_eps) {
    auto vec = [&](const std::string& name) {
      return upload_f32(be, require(t, layer, name, C_).to_f32(), keep_);
    };
    auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
      return load_layer_matrix(be, t, layer, name, rows, cols, dtype, keep_);
    };
    ln1_w_ = vec("ln1.weight");
    ln1_b_ = vec("ln1.bias");
    ln2_w_ = vec("ln2.weight");
    ln2_b_ = vec("ln2.bias");
    att_mix_k_ = vec("att.time_mix_k");
    att_mix_v_ = vec("att.time_mix_v");
    att_mix_r_ = vec("att.time_mix_r");
    ffn_mix_k_ = vec("ffn.time_mix_k");
    ffn_mix_r_ = vec("ffn.time_mix_r");
    {
      // The file keeps time_decay raw; the recurrence wants w = -exp(time_decay).
      auto d = require(t, layer, "att.time_decay", C_).to_f32();
      for (float& x : d) x = -std::exp(x);
      decay_ = upload_f32(be, d, keep_);
    }
    first_ = vec("att.time_first");
    att_k_ = mat("att.key.weight", C_, C_);
    att_v_ = mat("att.value.weight", C_, C_);
    att_r_ = mat("att.receptance.weight", C_, C_);
    att_o_ = mat("att.output.weight", C_, C_);
    ffn_ = ReluSquareFfn::load(be, t, layer, C_, F_, ln2_w_, ln2_b_, ffn_mix_k_, ffn_mix_r_, eps_, dtype, keep_);
  }

  int64_t state_floats() const override { return 5 * C_; }
  void init_state(float* s) const override {
    for (int64_t i = 0; i < 5 * C_; ++i) s[i] = 0.0f;
    for (int64_t i = 0; i < C_; ++i) s[3 * C_ + i] = -1e30f;  // pp: log of an empty sum
  }

  void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h, float* state) override {
    const int64_t n = h.n, C = C_, nc = n * C, S = state_floats();
    float* x = h.x;
    float* xln = ws.get(0, nc);
    float* prev = ws.get(1, nc);
    float* a = ws.get(2, nc);
    float* b = ws.get(3, nc);
    float* c = ws.get(4, nc);
    float* k = ws.get(5, size_t(n * std::max(C, F_)));
    float* v = ws.get(6, nc);
    float* r = ws.get(7, nc);

    // Time mix.
    const float* mu[3] = {att_mix_k_, att_mix_v_, att_mix_r_};
    float* mixed[3] = {a, b, c};
    be.norm_shift_mix(x, ln1_w_, ln1_b_, eps_, n, C, segs, state, S, 0, mu, mixed, 3, xln, prev);
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
  const float *ln1_w_, *ln1_b_, *ln2_w_, *ln2_b_;
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
