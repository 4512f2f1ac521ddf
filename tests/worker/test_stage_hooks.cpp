// Stage::forward's hooks (the hop through shared slots before and after a stage's layers): they
// must run once per step around the layers, and where decode steps are recorded (CUDA graphs)
// be recorded with them and replayed without being called again. A stage whose input arrives
// through the `before` hook and whose output leaves through `after` must compute exactly what
// the same stage computes with its input placed in, and its output read from, the hidden
// buffer directly.
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

void check_hooks(const std::function<std::unique_ptr<Backend>()>& make, bool graphs) {
  const ModelConfig cfg = synthetic_config("tiny", DType::F16);
  CheckpointSource src(synthetic_checkpoint(cfg, 3));
  StageSpec spec;
  spec.first = 1;
  spec.last = cfg.n_layer;
  spec.dtype = DType::F16;
  spec.max_slots = 8;
  auto be_h = make(), be_d = make();
  Stage hooked(*be_h, src, spec), direct(*be_d, src, spec);
  const int64_t n = 3;
  const size_t floats = size_t(hooked.hidden_floats(n)), bytes = floats * 4;
  // The "slots": where the hooks copy from and to, in the hooked stage's backend memory.
  auto* in = static_cast<float*>(be_h->alloc(bytes));
  auto* out = static_cast<float*>(be_h->alloc(bytes));
  const std::vector<Segment> segs = {{0, 0, 1}, {5, 1, 1}, {2, 2, 1}};  // decode: one token each
  std::mt19937_64 g(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  int before_calls = 0, after_calls = 0;
  for (int step = 0; step < 6; ++step) {
    std::vector<float> x(floats), got(floats), want(floats);
    for (float& v : x) v = u(g);
    be_h->upload(in, x.data(), bytes);
    Hidden hh = hooked.hidden(n);
    Stage::Hooks hooks;
    hooks.before = [&] {
      ++before_calls;
      be_h->copy(hh.x, in, bytes);
    };
    hooks.after = [&] {
      ++after_calls;
      be_h->copy(out, hh.x, bytes);
    };
    hooked.forward(segs, hh, &hooks);
    be_h->download(got.data(), out, bytes);
    Hidden hd = direct.hidden(n);
    be_d->upload(hd.x, x.data(), bytes);
    direct.forward(segs, hd);
    be_d->download(want.data(), hd.x, bytes);
    INFO("step " << step);
    CHECK(got == want);
  }
  // Without recordings the hooks run at every step; with them, on the first (run as it comes)
  // and the second (recorded, run once) only: later steps replay them on the device.
  CHECK(before_calls == (graphs ? 2 : 6));
  CHECK(after_calls == before_calls);
  be_h->free(in);
  be_h->free(out);
}

}  // namespace

TEST_CASE("Stage hooks run around the layers at every step (CPU)", "[stage]") {
  check_hooks([] { return make_cpu_backend(1); }, false);
}

TEST_CASE("CUDA graphs record a stage's hooks with its layers and replay them", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  check_hooks([] { return make_cuda_backend(0); }, true);
}
