// Random-weight models with the released shapes of RWKV-4, 5, 6 and 7, for load tests,
// benchmarks and the quickstart (there is no network to fetch real weights). Every tensor the
// version's layers load is generated, in the official names and shapes; the values follow the
// ranges of trained models closely enough to keep activations finite and the kernels on their
// usual paths (synthetic.cpp says which range each tensor gets and why). Matrices have standard
// deviation 1/sqrt(fan_in), layer-norm weights are around 1, mixes in [0, 1].
#pragma once

#include <string>
#include <vector>

#include "common/model_config.h"
#include "shards/checkpoint.h"
#include "shards/tensor_source.h"

namespace rwkvpp {

// The widths of the low-rank (LoRA-like) maps of RWKV-6 and 7. The layers read them from the
// tensors' shapes; a synthetic model needs them to make those tensors.
struct LowRanks {
  int64_t w = 0, a = 0, v = 0, g = 0;  // RWKV-7: decay, in-context rate, value residual, gate
  int64_t mix = 0, decay = 0;          // RWKV-6: time_maa_w1 per mix (of 5), time_decay_w1
  bool operator==(const LowRanks&) const = default;
};
// The ranks of the released checkpoints of that version and width (sources in
// synthetic_shapes.cpp); for other widths, the rule of the official training code. Zero for
// RWKV-4 and 5, which have none.
LowRanks released_low_ranks(const ModelConfig& cfg);

// Shape names: RWKV-4 "tiny", "169m", "430m", "1.5b", "3b", "7b", "14b" (also as "v4-1.5b"
// etc.); "v5-tiny", "v5-0.4b", "v5-1.5b", "v5-3b", "v5-7b"; "v6-tiny", "v6-1.6b", "v6-3b",
// "v6-7b", "v6-14b"; "v7-tiny", "v7-0.1b", "v7-0.4b", "v7-1.5b", "v7-2.9b", "v7-7.2b",
// "v7-13.3b". Throws Error listing the known names otherwise.
ModelConfig synthetic_config(const std::string& shape, DType dtype);
// The canonical names, in the order above (aliases such as "v4-1.5b" left out).
std::vector<std::string> synthetic_shapes();
// The canonical name of `shape` under `version` ("4", "5", "6", "7" or empty): "1.5b" with
// version "7" is "v7-1.5b"; "v4-1.5b" is "1.5b". Throws Error naming both when the shape has a
// version prefix that contradicts `version`, or is unknown.
std::string synthetic_shape_name(const std::string& shape, const std::string& version);

// Generates tensors on demand (deterministic in `seed`, whatever the thread count), one layer
// at a time, so a 14B model never has to sit in host memory all at once.
class SyntheticSource final : public TensorSource {
 public:
  // Low-rank widths from released_low_ranks(cfg).
  SyntheticSource(const ModelConfig& cfg, uint64_t seed);
  const ModelConfig& config() const override { return cfg_; }
  std::map<std::string, HostTensor> layer(int i) override;
  HostTensor tensor(const std::string& name) override;
  // Parameters (elements) of every tensor the source generates, without generating any.
  uint64_t param_count() const;

 private:
  ModelConfig cfg_;
  LowRanks ranks_;
  uint64_t seed_;
};

// The whole model as a checkpoint (small shapes only: it is held in memory).
Checkpoint synthetic_checkpoint(const ModelConfig& cfg, uint64_t seed);

}  // namespace rwkvpp
