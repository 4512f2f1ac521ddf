// The partition planner: which contiguous layer range each stage holds. `auto` balances compute
// (every layer costs the same; the head counts as the equivalent number of layers on the last
// stage) subject to each rank's reported free memory; an explicit spec ("0-2,3-3,4-5") is
// validated. Both fail with a clear error before any weight is read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "shards/layer_size.h"  // layer_weight_bytes, layer_state_bytes

namespace rwkvpp {

struct StagePlan {
  int first = 0, last = 0;  // layers [first, last)
  bool embed = false, head = false;
  uint64_t bytes = 0;       // weights + state this stage needs
};

struct PlanInputs {
  ModelConfig cfg;
  DType dtype = DType::F32;           // matrix dtype on the devices
  int max_slots = 1;
  std::vector<uint64_t> free_memory;  // per stage, in stage order (its size = stage count)
  std::vector<int> ranks;             // rank of each stage (for messages)
};

std::vector<StagePlan> plan_partition(const PlanInputs& in, const std::string& spec);

// "0-1 | 2-3 | ..." for logs.
std::string describe(const std::vector<StagePlan>& plan);

}  // namespace rwkvpp
