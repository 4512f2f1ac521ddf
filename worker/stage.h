// A pipeline stage: layers [first, last) of one model on one backend, plus the embedding
// (first stage) and ln_out + head (last stage), and the recurrent state of its layers for
// every slot. The step loop (worker/step_loop.h) drives it; tests drive it directly.
#pragma once

#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/block.h"
#include "shards/tensor_source.h"
#include "worker/state_pool.h"

namespace rwkvpp {

struct StageSpec {
  int first = 0;       // first layer held
  int last = 0;        // one past the last layer held
  bool embed = false;  // holds emb + ln0 (the stage that holds layer 0)
  bool head = false;   // holds ln_out + head (the stage that holds the last layer)
  DType dtype = DType::F32;  // matrix dtype on the device
  int max_slots = 1;
};

class Stage {
 public:
  // Reads exactly the tensors of its layers (and emb/head where it holds them) from `src`.
  Stage(Backend& be, TensorSource& src, const StageSpec& spec);

  const StageSpec& spec() const { return spec_; }
  const ModelConfig& config() const { return cfg_; }
  StatePool& state() { return *pool_; }
  Backend& backend() { return be_; }
  size_t weight_bytes() const;

  // The hidden buffer for n tokens ([carried, n, C] fp32 in backend memory): x, then v_first
  // for RWKV-7. Valid until the next call with a larger n.
  Hidden hidden(int64_t n);
  int64_t hidden_floats(int64_t n) const { return cfg_.carried() * n * cfg_.n_embd; }

  // First stage: h.x = ln0(emb[ids]).
  void embed(const int32_t* ids, int64_t n, Hidden& h);
  // Runs this stage's layers over the batch in place.
  void forward(std::span<const Segment> segs, Hidden& h);
  // Last stage: logits [m, vocab] of the given token rows, copied to host.
  void logits(const Hidden& h, const int32_t* rows, int64_t m, float* host_out);

 private:
  Backend& be_;
  StageSpec spec_;
  ModelConfig cfg_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<Embedder> embedder_;
  std::unique_ptr<Head> head_;
  std::unique_ptr<StatePool> pool_;
  Workspace ws_;
  std::unique_ptr<DeviceBuffer> hidden_;
};

}  // namespace rwkvpp
