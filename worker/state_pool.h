// The recurrent state of one stage: for each of its layers, an array [max_slots, S_l] of fp32
// in backend memory (S_l = that layer's Block::state_floats(), which depends on the RWKV
// version); and on the host, each slot's sampling parameters and penalty counts. The pool is the
// one place that mutates a slot's state outside a forward pass and its sampling: slot operations
// (reset, clone) arrive in the step stream and are applied here in stream order, to both.
#pragma once

#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/block.h"
#include "kernels/sampling.h"

namespace rwkvpp {

class StatePool {
 public:
  // One entry per layer of the stage, in order.
  StatePool(Backend& be, const std::vector<const Block*>& blocks, int max_slots);

  int max_slots() const { return max_slots_; }
  float* layer_state(size_t i) { return bufs_[i]->f32(); }
  int64_t floats_per_slot() const;  // all layers together
  size_t bytes() const;

  void reset(int slot);                 // a fresh sequence: fresh state, no penalty counts
  // `to` continues exactly where `from` is: its state, sampling parameters and penalty counts.
  void clone(int from, int to);
  // The slot's sampling parameters (a SetSampling op sets them; reset() keeps them, a new
  // sequence's SetSampling follows its Reset) and its penalty counts (kernels/sampling.h; only
  // the last stage's sampling reads and updates them). Host memory; the reference stays valid.
  SamplingParams& sampling(int slot);
  PenaltyState& penalty(int slot);
  // Copies slot's state of every layer, concatenated in layer order, to/from host memory.
  std::vector<float> read(int slot);
  void write(int slot, const std::vector<float>& v);

 private:
  void check(int slot) const;
  Backend& be_;
  int max_slots_;
  std::vector<int64_t> sizes_;              // floats per slot, per layer
  std::vector<std::unique_ptr<DeviceBuffer>> init_;  // fresh state per layer (backend memory)
  std::vector<std::unique_ptr<DeviceBuffer>> bufs_;
  std::vector<SamplingParams> sampling_;  // [max_slots]
  std::vector<PenaltyState> penalty_;     // [max_slots]
};

}  // namespace rwkvpp
