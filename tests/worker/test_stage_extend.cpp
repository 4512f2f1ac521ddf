// Stage::extend (a re-partition after a lost neighbour, coordinator/partition.h): a stage that
// takes on the layers before and after its own, the embedding and the head, must compute
// exactly what a stage built with all of them computes, from states restored into its new pool;
// where decode steps are recorded (CUDA graphs), nothing recorded before may replay after. It
// refuses to give layers up.
#include <functional>
#include <memory>
#include <vector>

#include "catch.h"
#include "common/error.h"
#include "cuda_skip.h"
#include "kernels/backend.h"
#include "shards/synthetic.h"
#include "shards/tensor_source.h"
#include "worker/stage.h"

using namespace rwkvpp;

namespace {

// Greedy logits of a few decode steps over three slots, from the embedding to the head.
std::vector<float> decode(Stage& s, int steps) {
  const std::vector<Segment> segs = {{0, 0, 1}, {3, 1, 1}, {5, 2, 1}};
  const std::vector<int32_t> rows = {0, 1, 2};
  const int64_t vocab = s.config().vocab_size;
  std::vector<float> all;
  for (int step = 0; step < steps; ++step) {
    const std::vector<int32_t> ids = {int32_t(7 + step), int32_t(100 + 3 * step), int32_t(401 - step)};
    Hidden h = s.hidden(3);
    s.embed(ids.data(), 3, h);
    s.forward(segs, h);
    std::vector<float> out(size_t(3 * vocab));
    s.logits(h, rows.data(), 3, out.data());
    all.insert(all.end(), out.begin(), out.end());
  }
  return all;
}

void check_extend(const std::function<std::unique_ptr<Backend>()>& make) {
  const ModelConfig cfg = synthetic_config("tiny", DType::F16);
  CheckpointSource src(synthetic_checkpoint(cfg, 5));
  StageSpec whole{0, int(cfg.n_layer), true, true, DType::F16, 8};
  StageSpec middle{2, 4, false, false, DType::F16, 8};
  auto be_w = make(), be_p = make();
  Stage ref(*be_w, src, whole), grown(*be_p, src, middle);
  // Steps of the middle stage alone first (on CUDA, recorded and replayed): none may leak into
  // what it computes once it holds every layer.
  const std::vector<Segment> segs = {{0, 0, 1}, {3, 1, 1}, {5, 2, 1}};
  for (int step = 0; step < 3; ++step) {
    Hidden h = grown.hidden(3);
    std::vector<float> x(size_t(grown.hidden_floats(3)), 0.1f * float(step + 1));
    be_p->upload(h.x, x.data(), x.size() * 4);
    grown.forward(segs, h);
  }
  int calls = 0;
  grown.extend(src, whole, [&](int done, int total) {
    ++calls;
    CHECK(total == int(cfg.n_layer) - 2);
    CHECK(done == calls);
  });
  CHECK(calls == int(cfg.n_layer) - 2);
  CHECK(grown.spec().first == 0);
  CHECK(grown.spec().last == int(cfg.n_layer));
  CHECK(grown.weight_bytes() == ref.weight_bytes());
  REQUIRE(grown.state().floats_per_slot() == ref.state().floats_per_slot());
  // The states a recovery would restore: the reference's after some steps, into the new pool.
  (void)decode(ref, 2);
  for (int slot : {0, 3, 5}) grown.state().write(slot, ref.state().read(slot));
  CHECK(decode(grown, 4) == decode(ref, 4));
}

}  // namespace

TEST_CASE("a stage extended to every layer computes what a stage built with them does (CPU)", "[stage]") {
  check_extend([] { return make_cpu_backend(1); });
}

TEST_CASE("a stage extended to every layer computes what a stage built with them does (CUDA, graphs)", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  check_extend([] { return make_cuda_backend(0); });
}

TEST_CASE("a stage refuses to give up layers, the embedding or the head", "[stage]") {
  const ModelConfig cfg = synthetic_config("tiny", DType::F32);
  CheckpointSource src(synthetic_checkpoint(cfg, 5));
  auto be = make_cpu_backend(1);
  Stage s(*be, src, StageSpec{1, 4, false, true, DType::F32, 4});
  CHECK_THROWS_AS(s.extend(src, StageSpec{2, 4, false, true, DType::F32, 4}), Error);
  CHECK_THROWS_AS(s.extend(src, StageSpec{1, 4, false, false, DType::F32, 4}), Error);
  CHECK_THROWS_AS(s.extend(src, StageSpec{0, 4, true, true, DType::F32, 8}), Error);
  CHECK(s.spec().first == 1);
  CHECK(s.spec().last == 4);
}
