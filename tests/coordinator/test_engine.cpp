// The coordinator's engine in one process (local transport): batching, chunking, shared
// prefixes and seeded sampling, checked against the outside reference.
#include <nlohmann/json.hpp>

#include "catch.h"
#include "coordinator/cluster.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "shards/model_format.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

struct Model {
  TempDir dir;
  std::string path;
  std::vector<int32_t> tokens;
  std::vector<double> ref;
  Model() {
    path = dir / "m";
    Checkpoint ck = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
    write_model(ck, infer_config(ck), path, WriteOptions{});
    tokens = nlohmann::json::parse(read_file(fixture("hf-rwkv4/hf-rwkv4-small.json"))).at("tokens").get<std::vector<int32_t>>();
    ref = read_f64(fixture("hf-rwkv4/hf-rwkv4-small.logits.f64"));
  }
};

Model& model() {
  static Model m;
  return m;
}

ClusterOptions opts() {
  ClusterOptions o;
  o.model = model().path;
  o.device = "cpu";
  o.threads = 1;
  o.limits.chunk = 7;
  return o;
}

}  // namespace

TEST_CASE("a request continuing a shared prefix gets the logits of the whole sequence", "[coordinator][engine]") {
  const auto& m = model();
  std::vector<float> got;
  run_cluster(opts(), [&](Engine& e) {
    int p = e.add_prefix({m.tokens.begin(), m.tokens.begin() + 20});
    for (int copy = 0; copy < 2; ++copy) {  // twice: the prefix state must not be consumed
      got.clear();
      Request r;
      r.prefix = p;
      r.prompt.assign(m.tokens.begin() + 20, m.tokens.end());
      r.logits_all = true;
      r.on_logits = [&](int64_t, const float* l) { got.insert(got.end(), l, l + 300); };
      e.submit(std::move(r));
      e.run();
      REQUIRE(got.size() == 28 * 300);
      std::vector<double> want(m.ref.begin() + 20 * 300, m.ref.end());
      CHECK(max_abs_diff(got, want) < 5e-5);
    }
    e.release_prefix(p);
    return 0;
  });
}

TEST_CASE("seeded sampling gives the same tokens alone and inside a batch of 8", "[coordinator][engine]") {
  const auto& m = model();
  auto generate = [&](int batch) {
    std::vector<std::vector<int32_t>> out(static_cast<size_t>(batch));
    run_cluster(opts(), [&](Engine& e) {
      for (int i = 0; i < batch; ++i) {
        Request r;
        // Sequence 0 is the one compared; the others have other prompts and seeds.
        r.prompt.assign(m.tokens.begin() + i, m.tokens.begin() + 10 + 3 * i);
        r.sampling.temperature = 1.0f;
        r.sampling.top_p = 0.9f;
        r.sampling.seed = 42 + uint64_t(i);
        r.max_tokens = 24;
        r.on_token = [&out, i](int32_t id, float) {
          out[size_t(i)].push_back(id);
          return true;
        };
        e.submit(std::move(r));
      }
      e.run();
      return 0;
    });
    return out[0];
  };
  auto alone = generate(1);
  auto batched = generate(8);
  REQUIRE(alone.size() == 24);
  CHECK(alone == batched);
}
