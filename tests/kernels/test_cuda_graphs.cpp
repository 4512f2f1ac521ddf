// CUDA graphs for decode steps (Stage::forward records the layer loop and replays it): the
// logits with graphs must equal, bit for bit, the logits without, over steps that change the
// slots, the batch size (so that recordings are made, replayed and dropped when a buffer
// grows) and that mix in a prompt step (several tokens per segment, never recorded).
#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "catch.h"
#include "cuda_skip.h"
#include "kernels/backend.h"
#include "shards/synthetic.h"
#include "shards/tensor_source.h"
#include "worker/stage.h"

using namespace rwkvpp;

namespace {

// One step on `st`: tokens[i] is segment i's tokens, in slot slots[i]; returns every row's logits.
std::vector<float> step(Stage& st, const std::vector<std::vector<int32_t>>& tokens,
                        const std::vector<int32_t>& slots) {
  std::vector<Segment> segs;
  std::vector<int32_t> ids;
  for (size_t i = 0; i < tokens.size(); ++i) {
    segs.push_back({slots[i], int32_t(ids.size()), int32_t(tokens[i].size())});
    ids.insert(ids.end(), tokens[i].begin(), tokens[i].end());
  }
  const int64_t n = int64_t(ids.size());
  Hidden h = st.hidden(n);
  st.embed(ids.data(), n, h);
  st.forward(segs, h);
  std::vector<int32_t> rows(ids.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = int32_t(i);
  std::vector<float> out(static_cast<size_t>(n * st.config().vocab_size));
  st.logits(h, rows.data(), n, out.data());
  return out;
}

}  // namespace

TEST_CASE("CUDA graphs: decode logits with graphs equal those without, bit for bit", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  const ModelConfig cfg = synthetic_config("tiny", DType::F16);
  CheckpointSource src(synthetic_checkpoint(cfg, 11));
  StageSpec spec;
  spec.first = 0;
  spec.last = cfg.n_layer;
  spec.embed = spec.head = true;
  spec.dtype = DType::F16;
  spec.max_slots = 224;
  auto be_g = make_cuda_backend(0), be_p = make_cuda_backend(0);
  Stage with(*be_g, src, spec), without(*be_p, src, spec);
  without.use_graphs(false);

  std::mt19937_64 g(5);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(cfg.vocab_size - 1));
  // Batch sizes per step: repeats (record, then replay), a larger one that grows the buffers
  // (dropping recordings), cuBLAS's range (> 8 tokens), a prompt step in the middle, and large
  // decode batches (recorded up to Stage::kGraphMaxTokens).
  const std::vector<int> sizes = {3, 3, 3, 3, 1, 1, 1, 12, 12, 12, 3, 3, 20, 3, 3, 3, 12, 200, 200, 200, 12};
  int s = 0;
  for (int n : sizes) {
    std::vector<int32_t> slots(static_cast<size_t>(spec.max_slots));
    for (int i = 0; i < spec.max_slots; ++i) slots[size_t(i)] = i;
    std::shuffle(slots.begin(), slots.end(), g);
    slots.resize(static_cast<size_t>(n));
    std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(n));
    const bool prompt = s == 6;  // several tokens per segment: runs without a graph
    for (auto& t : tokens) {
      t.push_back(tok(g));
      if (prompt) t.push_back(tok(g));
    }
    INFO("step " << s << ", batch " << n);
    const auto a = step(with, tokens, slots);
    const auto b = step(without, tokens, slots);
    REQUIRE(a.size() == b.size());
    size_t diff = 0;
    for (size_t i = 0; i < a.size(); ++i) diff += a[i] != b[i];
    CHECK(diff == 0);
    ++s;
  }
}
