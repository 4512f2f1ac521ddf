// The partition planner: which contiguous layer range each stage holds. `auto` balances compute
// (every layer costs the same; the head counts as the equivalent number of layers on the last
// stage) subject to each rank's reported free memory; an explicit spec ("0-2,3-3,4-5") is
// validated. Both fail with a clear error before any weight is read. After a lost stage with no
// standby left, plan_repartition() gives its layers to its neighbours where their memory allows.
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

// The planner's estimate of what a stage holding layers [first, last) (and the embedding, the
// head) needs: weights at in.dtype and the state of in.max_slots slots.
uint64_t stage_bytes(const PlanInputs& in, int first, int last, bool embed, bool head);

// A re-partition over the survivors (coordinator/engine_recovery.cpp): stage `lost` of `plan` is
// gone and no standby is left. Its layers go to its neighbours, extending their contiguous
// ranges: the previous stage takes [first, m) of them and the next [m, last) (either may take
// all; the next takes the embedding when the first stage was lost, the previous the head when
// the last was), so that the pipeline has one stage fewer and no other stage changes or reads
// anything. `in.free_memory` and `in.ranks` are per stage of `plan` (what each rank offered at
// its Hello; the lost stage's is not used). Among the cuts m whose extended stages fit their
// ranks' memory (stage_bytes), the one with the smallest largest stage cost wins (the cost
// plan_partition balances: one per layer, the head as its equivalent in layers); on a tie the
// one that extends one stage only, then the one giving the previous stage more.
struct Repartition {
  std::vector<StagePlan> plan;  // one stage fewer; empty when no cut fits
  int cut = -1;                 // m
  // No cut fits: the lost rank and its layers, each neighbour's free memory and the shortfall.
  std::string why;
};
Repartition plan_repartition(const PlanInputs& in, const std::vector<StagePlan>& plan, int lost);

// Bytes for messages: "12.5 KiB", "3.07 MiB", "1.50 GiB".
std::string memory_text(uint64_t bytes);

// "0-1 | 2-3 | ..." for logs.
std::string describe(const std::vector<StagePlan>& plan);

}  // namespace rwkvpp
