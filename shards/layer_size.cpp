// Size estimates of a layer (shards/layer_size.h).
#include "shards/layer_size.h"

#include "shards/synthetic.h"

namespace rwkvpp {

uint64_t layer_weight_bytes(const ModelConfig& c, DType dtype) {
  // Matrices: att key/value/receptance/output (+ gate for 5 and 6), ffn key/value (+ receptance
  // up to 6); RWKV-6 and 7 add their low-rank maps, stored unquantised (LayerLoader::small), at
  // the widths of the released checkpoints (a converted model's own may differ a little).
  const int64_t C = c.n_embd, F = c.ffn_dim;
  const bool v7 = c.version == RwkvVersion::V7;
  const uint64_t att = uint64_t(c.version == RwkvVersion::V4 || v7 ? 4 : 5) * matrix_bytes(dtype, C, C);
  const uint64_t ffn = matrix_bytes(dtype, F, C) + matrix_bytes(dtype, C, F) + (v7 ? 0 : matrix_bytes(dtype, C, C));
  const LowRanks r = released_low_ranks(c);
  const int64_t low = r.w + r.a + r.v + r.g + 5 * r.mix + r.decay;
  const uint64_t low_bytes = low ? 2 * matrix_bytes(unquantised_dtype(dtype), C, low) : 0;
  return att + ffn + low_bytes + uint64_t(32 * c.n_embd) * 4;
}

uint64_t layer_state_bytes(const ModelConfig& c) {
  if (c.version == RwkvVersion::V4) return uint64_t(5 * c.n_embd) * 4;
  return uint64_t(2 * c.n_embd + c.n_head * c.head_size * c.head_size) * 4;
}

}  // namespace rwkvpp
