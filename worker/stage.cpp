#include "worker/stage.h"

#include <cstdint>

#include "common/error.h"

namespace rwkvpp {

Stage::Stage(Backend& be, TensorSource& src, const StageSpec& spec, const std::function<void(int, int)>& on_layer)
    : be_(be), spec_(spec), cfg_(src.config()), ws_(be) {
  if (spec.first < 0 || spec.last > cfg_.n_layer || spec.first > spec.last)
    fail("stage layers [{}, {}) are outside the model's {} layers", spec.first, spec.last, cfg_.n_layer);
  // The head and the embedding first: they are the largest tensors, and each is read whole
  // into host memory before it is stored, so loading them while little else is resident keeps
  // the peak near the stage's weight bytes (a layer's tensors, read later, are small).
  if (spec.head) head_ = read_head(src, spec.dtype);
  if (spec.embed) embedder_ = read_embedder(src, spec.dtype);
  for (int i = spec.first; i < spec.last; ++i) {
    blocks_.push_back(make_block(be, cfg_, i, src.layer(i), spec.dtype));
    if (on_layer) on_layer(i - spec.first + 1, spec.last - spec.first);
  }
  pool_ = make_pool(spec.max_slots);
}

std::unique_ptr<Head> Stage::read_head(TensorSource& src, DType dtype) const {
  return std::make_unique<Head>(be_, cfg_, src.tensor("ln_out.weight"), src.tensor("ln_out.bias"),
                                src.tensor("head.weight"), dtype);
}

std::unique_ptr<Embedder> Stage::read_embedder(TensorSource& src, DType dtype) const {
  return std::make_unique<Embedder>(be_, cfg_, src.tensor("emb.weight"), src.tensor("blocks.0.ln0.weight"),
                                    src.tensor("blocks.0.ln0.bias"), dtype);
}

std::unique_ptr<StatePool> Stage::make_pool(int slots) const {
  std::vector<const Block*> raw;
  for (auto& b : blocks_) raw.push_back(b.get());
  return std::make_unique<StatePool>(be_, raw, slots);
}

void Stage::extend(TensorSource& src, const StageSpec& wider, const std::function<void(int, int)>& on_layer) {
  if (wider.first > spec_.first || wider.last < spec_.last || wider.last > cfg_.n_layer || wider.first < 0 ||
      (spec_.embed && !wider.embed) || (spec_.head && !wider.head) || wider.dtype != spec_.dtype ||
      wider.max_slots != spec_.max_slots)
    fail("a stage holding layers [{}, {}) cannot become one holding [{}, {}) with other slots, dtype, "
         "embedding or head: it can only take on more",
         spec_.first, spec_.last, wider.first, wider.last);
  // Read everything first, so that a failed read leaves the stage as it was.
  std::unique_ptr<Head> head;
  std::unique_ptr<Embedder> embedder;
  if (wider.head && !head_) head = read_head(src, wider.dtype);
  if (wider.embed && !embedder_) embedder = read_embedder(src, wider.dtype);
  std::vector<std::unique_ptr<Block>> before, after;
  const int total = (spec_.first - wider.first) + (wider.last - spec_.last);
  int done = 0;
  auto read = [&](int i, std::vector<std::unique_ptr<Block>>& into) {
    into.push_back(make_block(be_, cfg_, i, src.layer(i), wider.dtype));
    if (on_layer) on_layer(++done, total);
  };
  for (int i = wider.first; i < spec_.first; ++i) read(i, before);
  for (int i = spec_.last; i < wider.last; ++i) read(i, after);
  if (head) head_ = std::move(head);
  if (embedder) embedder_ = std::move(embedder);
  for (auto& b : blocks_) before.push_back(std::move(b));
  for (auto& b : after) before.push_back(std::move(b));
  blocks_ = std::move(before);
  be_.fence_wait(be_.fence());  // nothing queued before (an abandoned step) may still use the old pool
  pool_.reset();                // every slot is restored after: the old states are not needed
  pool_ = make_pool(wider.max_slots);
  spec_ = wider;
  graph_seen_.clear();
  ++layout_;
}

size_t Stage::weight_bytes() const {
  size_t n = 0;
  for (auto& b : blocks_) n += b->weight_bytes();
  if (embedder_) n += embedder_->weight_bytes();
  if (head_) n += head_->weight_bytes();
  return n;
}

Hidden Stage::hidden(int64_t n, int which) {
  RWKVPP_CHECK(which == 0 || which == 1, "hidden buffer index");
  auto& buf = hidden_[which];
  size_t want = size_t(hidden_floats(n)) * 4;
  if (!buf || buf->bytes() < want)
    buf = std::make_unique<DeviceBuffer>(&be_, std::max<size_t>(want + want / 2, 64));
  Hidden h;
  h.n = n;
  h.x = buf->f32();
  h.v_first = cfg_.carried() > 1 ? h.x + n * cfg_.n_embd : nullptr;
  return h;
}

void Stage::embed(const int32_t* ids, int64_t n, Hidden& h) {
  RWKVPP_CHECK(embedder_, "this stage holds no embedding");
  embedder_->forward(be_, ids, n, h.x);
}

void Stage::forward(std::span<const Segment> segs, Hidden& h, const Hooks* hooks) {
  const bool before = hooks && hooks->before, after = hooks && hooks->after;
  auto run = [&](const SegTable& st) {
    if (before) hooks->before();
    run_layers(st, h);
    if (after) hooks->after();
  };
  SegTable st = be_.stage_segments(segs);
  RWKVPP_CHECK(st.n_tokens == h.n, "segments do not cover the batch");
  for (const Segment& s : segs)
    if (s.slot < 0 || s.slot >= spec_.max_slots)
      fail("state slot {} is out of range (this stage has {} slots)", s.slot, spec_.max_slots);
  if (graphs_ && !blocks_.empty() && h.n <= kGraphMaxTokens && st.max_len == 1) {
    // What the recorded kernels bake in: this stage (its weights, state and workspace, whose
    // reallocation frees memory and so drops every recording) and its layers (extend()), the
    // batch size (== segments), the hidden buffer, and the segment table's device copy, refilled
    // above before a replay.
    uint64_t key = 1469598103934665603ull;
    for (uint64_t v : {uint64_t(reinterpret_cast<uintptr_t>(this)), layout_, uint64_t(h.n),
                       uint64_t(reinterpret_cast<uintptr_t>(h.x)),
                       uint64_t(reinterpret_cast<uintptr_t>(h.v_first)),
                       uint64_t(reinterpret_cast<uintptr_t>(st.device)),
                       uint64_t(before) | uint64_t(after) << 1})
      key = (key ^ v) * 1099511628211ull;
    if (be_.graph_launch(key)) return;
    if (graph_seen_.size() > 4096) graph_seen_.clear();
    if (!graph_seen_.insert(key).second && be_.graph_begin(key)) {
      try {
        run(st);
      } catch (...) {
        be_.graph_cancel();
        throw;
      }
      be_.graph_end(key);
      return;
    }
  }
  run(st);
}

void Stage::run_layers(const SegTable& st, Hidden& h) {
  for (size_t i = 0; i < blocks_.size(); ++i) blocks_[i]->forward(be_, ws_, st, h, pool_->layer_state(i));
}

void Stage::logits(const Hidden& h, const int32_t* rows, int64_t m, float* host_out) {
  RWKVPP_CHECK(head_, "this stage holds no head");
  float* out = ws_.get(kLogits, size_t(m * cfg_.vocab_size));
  head_->forward(be_, ws_, h.x, rows, m, out);
  be_.download(host_out, out, size_t(m * cfg_.vocab_size) * 4);
}

void Stage::greedy_async(const Hidden& h, const int32_t* rows, int64_t m, void* host_out) {
  RWKVPP_CHECK(head_, "this stage holds no head");
  float* out = ws_.get(kLogits, size_t(m * cfg_.vocab_size));
  head_->forward(be_, ws_, h.x, rows, m, out);
  be_.argmax_rows_async(out, m, cfg_.vocab_size, host_out);
}

}  // namespace rwkvpp
