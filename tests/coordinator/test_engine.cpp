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

TEST_CASE("a cancelled request ends at once and frees its slot for the next one", "[coordinator][engine]") {
  const auto& m = model();
  ClusterOptions o = opts();
  o.limits.max_batch = 1;
  o.limits.max_slots = 1;  // one slot: B can start only once A has left it
  auto make = [&](std::vector<int32_t>& out, int max_tokens, uint64_t seed) {
    Request r;
    r.prompt.assign(m.tokens.begin(), m.tokens.begin() + 12);
    r.sampling.temperature = 1.0f;
    r.sampling.seed = seed;
    r.max_tokens = max_tokens;
    r.on_token = [&out](int32_t id, float) {
      out.push_back(id);
      return true;
    };
    return r;
  };
  std::vector<int32_t> b_alone;
  run_cluster(o, [&](Engine& e) {
    e.submit(make(b_alone, 16, 9));
    e.run();
    return 0;
  });
  REQUIRE(b_alone.size() == 16);

  std::vector<int32_t> a, b;
  std::vector<Finish> finishes;
  run_cluster(o, [&](Engine& e) {
    Request ra = make(a, 100000, 5);  // would run for a long time
    int a_id = -1;
    ra.on_token = [&](int32_t id, float) {
      a.push_back(id);
      if (a.size() == 3) CHECK(e.cancel(a_id));  // from inside a callback
      return true;
    };
    ra.on_finish = [&](Finish f) { finishes.push_back(f); };
    a_id = e.submit(std::move(ra));
    Request rb = make(b, 16, 9);
    rb.on_finish = [&](Finish f) { finishes.push_back(f); };
    const int b_id = e.submit(std::move(rb));
    // A server's loop: poll until everything has finished.
    for (int turns = 0; !e.idle() && turns < 1000000; ++turns) e.poll(std::chrono::milliseconds(1));
    CHECK(e.idle());
    CHECK_FALSE(e.cancel(a_id));  // finished requests and unknown ids are not live
    CHECK_FALSE(e.cancel(b_id));
    CHECK_FALSE(e.cancel(12345));
    return 0;
  });
  CHECK(a.size() == 3);  // nothing after the cancel reaches the caller
  REQUIRE(finishes.size() == 2);
  CHECK(finishes[0] == Finish::Cancelled);
  CHECK(finishes[1] == Finish::Length);
  CHECK(b == b_alone);  // the other request is unaffected
}

TEST_CASE("cancelling a request that waits for a slot, or whose kept state it continues", "[coordinator][engine]") {
  const auto& m = model();
  ClusterOptions o = opts();
  o.limits.max_batch = 1;
  o.limits.max_slots = 1;
  run_cluster(o, [&](Engine& e) {
    std::vector<std::string> log;
    auto request = [&](const std::string& name, int max_tokens) {
      Request r;
      r.prompt.assign(m.tokens.begin(), m.tokens.begin() + 5);
      r.max_tokens = max_tokens;
      r.on_token = [&log, name](int32_t, float) {
        log.push_back(name + " token");
        return true;
      };
      r.on_finish = [&log, name](Finish f) { log.push_back(name + " " + finish_name(f)); };
      return r;
    };
    // "first" holds the only slot; "waiting" is cancelled before it ever gets one.
    e.submit(request("first", 2));
    const int waiting = e.submit(request("waiting", 50));
    CHECK(e.cancel(waiting));
    while (!e.idle()) e.poll(std::chrono::milliseconds(1));
    CHECK(log == std::vector<std::string>{"waiting cancelled", "first token", "first token", "first length"});

    // A kept state cancelled before it was complete cannot be continued: its follower is
    // cancelled too, without a token.
    log.clear();
    Request kept = request("kept", 3);
    kept.keep_state = true;
    const int k = e.submit(std::move(kept));
    CHECK(e.cancel(k));
    e.poll(std::chrono::milliseconds(1));  // ends it (a prefix is continued once it has ended)
    Request next = request("next", 3);
    next.prefix = k;
    e.submit(std::move(next));
    e.run();
    CHECK(log == std::vector<std::string>{"kept cancelled", "next cancelled"});
    e.release_prefix(k);
    return 0;
  });
}

TEST_CASE("snapshots within a prompt: requests continuing them get the logits of the whole sequence",
          "[coordinator][engine]") {
  const auto& m = model();
  const std::vector<double> want_all(m.ref.begin(), m.ref.end());
  run_cluster(opts(), [&](Engine& e) {  // chunks of 7 tokens: both points fall inside a chunk
    std::map<size_t, int> snaps;
    std::vector<size_t> asked;
    std::vector<float> got;
    Request a;
    a.prompt = m.tokens;
    a.logits_all = true;
    a.on_logits = [&](int64_t, const float* l) { got.insert(got.end(), l, l + 300); };
    a.snapshot_at = {5, 11, 20};
    a.snapshot_wanted = [&](size_t p) {
      asked.push_back(p);
      return p != 11;  // declined: no prefix is made
    };
    a.on_snapshot = [&](size_t p, int id) { snaps[p] = id; };
    e.submit(std::move(a));
    e.run();
    CHECK(asked == std::vector<size_t>{5, 11, 20});
    REQUIRE(snaps.size() == 2);
    REQUIRE(snaps.count(5) == 1);
    REQUIRE(snaps.count(20) == 1);
    // The chunks cut at the snapshot points change nothing.
    REQUIRE(got.size() == m.ref.size());
    CHECK(max_abs_diff(got, want_all) < 5e-5);
    for (size_t p : {size_t(5), size_t(20)}) {
      got.clear();
      Request b;
      b.prefix = snaps[p];
      b.prompt.assign(m.tokens.begin() + long(p), m.tokens.end());
      b.logits_all = true;
      b.on_logits = [&](int64_t, const float* l) { got.insert(got.end(), l, l + 300); };
      e.submit(std::move(b));
      e.run();
      std::vector<double> want(m.ref.begin() + long(p * 300), m.ref.end());
      REQUIRE(got.size() == want.size());
      CHECK(max_abs_diff(got, want) < 5e-5);
      e.release_prefix(snaps[p]);
    }
    Request bad;
    bad.prompt = {1, 2, 3};
    bad.snapshot_at = {3};  // the last token must be read by the request itself
    CHECK_THROWS_AS(e.submit(std::move(bad)), Error);
    return 0;
  });
}
