// Estimated bytes of one layer on a device: the partition planner's memory model
// (coordinator/partition.h), a stage's loading progress (worker/stage_rank.cpp) and the state
// budgets of rwkvpp batch and serve.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/model_config.h"

namespace rwkvpp {

// One layer's weights at this matrix dtype (the low-rank maps of RWKV-6 and 7 unquantised).
uint64_t layer_weight_bytes(const ModelConfig& cfg, DType dtype);
// One layer's recurrent state for one slot.
uint64_t layer_state_bytes(const ModelConfig& cfg);

}  // namespace rwkvpp
