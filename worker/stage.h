// A pipeline stage: layers [first, last) of one model on one backend, plus the embedding
// (first stage) and ln_out + head (last stage), and the recurrent state of its layers for
// every slot. The step loop (worker/step_loop.h) drives it; tests drive it directly.
#pragma once

#include <functional>
#include <memory>
#include <unordered_set>
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
  // `on_layer` (may be empty) is called after each layer is loaded: layers loaded so far, of
  // last - first (progress).
  Stage(Backend& be, TensorSource& src, const StageSpec& spec, const std::function<void(int done, int total)>& on_layer = {});

  // A re-partition after a neighbouring stage was lost: this stage takes on more layers.
  // `wider` must contain the layers held now (the embedding and head it holds stay) and keep
  // dtype and slots; reads only what is not held yet (layers before and after, the embedding or
  // the head), then makes a fresh state pool for all its layers: every slot is fresh and is
  // restored next (StepLoop::restore). Nothing changes when a read fails. Recordings of decode
  // steps made before are never replayed after.
  void extend(TensorSource& src, const StageSpec& wider, const std::function<void(int done, int total)>& on_layer = {});

  const StageSpec& spec() const { return spec_; }
  const ModelConfig& config() const { return cfg_; }
  StatePool& state() { return *pool_; }
  Backend& backend() { return be_; }
  size_t weight_bytes() const;

  // Hidden buffer `which` (0 or 1: a step can fill one while the other is computed) for n
  // tokens ([carried, n, C] fp32 in backend memory): x, then v_first for RWKV-7. Valid until
  // the next call for the same buffer with a larger n.
  Hidden hidden(int64_t n, int which = 0);
  int64_t hidden_floats(int64_t n) const { return cfg_.carried() * n * cfg_.n_embd; }

  // First stage: h.x = ln0(emb[ids]).
  void embed(const int32_t* ids, int64_t n, Hidden& h);
  // Runs this stage's layers over the batch in place. Decode steps (one token per segment, at
  // most kGraphMaxTokens) replay a recording of the layer loop where the backend records
  // (Backend::graph_begin): the first step of a shape runs normally (growing every buffer), the
  // second records, later ones replay.
  // Hooks run just before and after the layers, inside the recording where there is one (a
  // hop through shared slots whose device op is the same at every step: SharedRing). The graph
  // key tells steps with and without each hook apart; they must not change otherwise.
  struct Hooks {
    std::function<void()> before, after;
  };
  void forward(std::span<const Segment> segs, Hidden& h, const Hooks* hooks = nullptr);
  // Turns recording and replaying of decode steps on (the default) or off.
  void use_graphs(bool on) { graphs_ = on; }
  static constexpr int64_t kGraphMaxTokens = 256;
  // Last stage: logits [m, vocab] of the given token rows, copied to host.
  void logits(const Hidden& h, const int32_t* rows, int64_t m, float* host_out);
  // Last stage, greedy sampling on the device, queued (Backend::argmax_rows_async): for the
  // logits of the given rows, host_out receives [m] ids (the argmax, lowest id among equals;
  // -1 when every logit is NaN or -inf), then [m] logprobs (log-softmax at temperature 1), once
  // a fence recorded after the call has completed.
  void greedy_async(const Hidden& h, const int32_t* rows, int64_t m, void* host_out);

 private:
  // The head's and the embedding's tensors of `src`, read and stored as `dtype`.
  std::unique_ptr<Head> read_head(TensorSource& src, DType dtype) const;
  std::unique_ptr<Embedder> read_embedder(TensorSource& src, DType dtype) const;
  // A fresh state pool for blocks_ and `slots` slots.
  std::unique_ptr<StatePool> make_pool(int slots) const;

  Backend& be_;
  StageSpec spec_;
  ModelConfig cfg_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<Embedder> embedder_;
  std::unique_ptr<Head> head_;
  std::unique_ptr<StatePool> pool_;
  Workspace ws_;
  std::unique_ptr<DeviceBuffer> hidden_[2];
  bool graphs_ = true;
  std::unordered_set<uint64_t> graph_seen_;  // keys of decode shapes run once already
  uint64_t layout_ = 0;  // +1 at every extend(): part of the recordings' key

  void run_layers(const SegTable& st, Hidden& h);
};

}  // namespace rwkvpp
