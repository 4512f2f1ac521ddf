// Random-weight models with the official RWKV-4 shapes, for load tests, benchmarks and the
// quickstart (there is no network to fetch real weights). Values follow the ranges of trained
// models closely enough to keep activations finite: matrices with standard deviation 1/sqrt(fan_in), layer-norm
// weights around 1, mixes in [0, 1], decay in [-5, 1], bonus in [-1, 1].
#pragma once

#include <string>
#include <vector>

#include "common/model_config.h"
#include "shards/checkpoint.h"
#include "shards/tensor_source.h"

namespace rwkvpp {

// "tiny" (6 layers, 128 wide), "169m", "430m", "1.5b", "3b", "7b", "14b"; throws Error listing
// the known names otherwise.
ModelConfig synthetic_config(const std::string& shape, DType dtype);
std::vector<std::string> synthetic_shapes();

// Generates tensors on demand (deterministic in `seed`), so a 14B model never has to sit in
// host memory all at once.
class SyntheticSource final : public TensorSource {
 public:
  SyntheticSource(const ModelConfig& cfg, uint64_t seed);
  const ModelConfig& config() const override { return cfg_; }
  std::map<std::string, HostTensor> layer(int i) override;
  HostTensor tensor(const std::string& name) override;

 private:
  ModelConfig cfg_;
  uint64_t seed_;
};

// The whole model as a checkpoint (small shapes only: it is held in memory).
Checkpoint synthetic_checkpoint(const ModelConfig& cfg, uint64_t seed);

}  // namespace rwkvpp
