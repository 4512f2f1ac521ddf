// The engine side of rwkvpp serve in one process (coordinator/serve/serve_loop.h), on the tiny
// byte-level model: a cancelled job frees its slot for the next one, which is unaffected; the
// request timeout; SIGTERM's path (running jobs cut after the grace, queued ones refused); the
// state cache: the same text with and without it, hits where the contract says, eviction.
#include "catch.h"
#include "coordinator/batch_fixture.h"
#include "coordinator/cluster.h"
#include "coordinator/serve/serve_loop.h"
#include "helpers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

// Keeps what a job produced (called on the engine thread, read after the loop returned).
struct Recorder : JobSink {
  std::string text;
  int events = 0;
  std::vector<std::string> finishes;
  std::optional<JobEnd> end;
  void on_event(ChoiceEvent e) override {
    ++events;
    text += e.text;
    if (e.finish) finishes.push_back(e.finish);
  }
  void on_end(JobEnd e) override { end = std::move(e); }
};

std::shared_ptr<Job> job(const std::string& prompt, int max_tokens, uint64_t seed,
                         std::shared_ptr<Recorder> r) {
  auto j = std::make_shared<Job>();
  j->choices.push_back({std::vector<int32_t>(prompt.begin(), prompt.end()), seed, {}});
  j->text.max_tokens = max_tokens;
  j->text.sampling.temperature = 1.0f;
  j->sink = std::move(r);
  return j;
}

ClusterOptions one_slot() {
  ClusterOptions o;
  o.model = byte_model();
  o.device = "cpu";
  o.threads = 1;
  o.limits.max_batch = 1;
  o.limits.max_slots = 1;
  return o;
}

// Runs `setup` (which queues jobs) and then the loop until `stop` says so.
void serve(ServeQueue& q, ServeMetrics& m, ServeLoopOptions lo,
           const std::function<bool(Engine&)>& stop) {
  auto tok = make_bytes_tokenizer();
  run_cluster(one_slot(), [&](Engine& e) {
    ServeLoop loop(e, *tok, q, m, lo);
    loop.run([&] { return stop(e); });
    return 0;
  });
}

}  // namespace

TEST_CASE("serve loop: a cancelled job frees the only slot; the next job is unaffected",
          "[serve]") {
  auto alone = std::make_shared<Recorder>();
  {
    ServeQueue q(8);
    ServeMetrics m;
    bool queued = false;
    serve(q, m, {}, [&](Engine&) {
      if (!queued) queued = q.submit(job("Tell me", 24, 9, alone)) == Admission::Queued;
      return alone->end.has_value();
    });
  }
  REQUIRE(alone->end);
  REQUIRE_FALSE(alone->end->error);
  CHECK(alone->end->completion_tokens == 24);

  auto a = std::make_shared<Recorder>(), b = std::make_shared<Recorder>();
  ServeQueue q(8);
  ServeMetrics m;
  auto ja = job("Once upon a time", 1000000, 5, a);  // would hold the slot for a long time
  bool queued = false, cancelled = false;
  serve(q, m, {}, [&](Engine&) {
    if (!queued) {
      queued = q.submit(ja) == Admission::Queued &&
               q.submit(job("Tell me", 24, 9, b)) == Admission::Queued;
      return false;
    }
    if (!cancelled && a->events >= 5) {  // the client of A goes away
      q.cancel(ja->id, CancelReason::Disconnect);
      cancelled = true;
    }
    return b->end.has_value();
  });
  REQUIRE(a->end);
  REQUIRE(a->end->error);
  CHECK(a->end->error->code() == "cancelled");
  CHECK(a->end->completion_tokens < 12);  // a step or two after the cancel, not a million
  REQUIRE(b->end);
  CHECK_FALSE(b->end->error);
  CHECK(b->text == alone->text);  // same seed, same text, alone or after a cancelled neighbour
  CHECK(b->finishes == std::vector<std::string>{"length"});
  CHECK(m.cancelled(CancelReason::Disconnect) == 1);
  CHECK(m.running.load() == 0);
}

TEST_CASE("serve loop: a job past --request-timeout ends with a 504 timeout", "[serve]") {
  auto r = std::make_shared<Recorder>();
  ServeQueue q(8);
  ServeMetrics m;
  auto j = job("abc", 1000000, 1, r);
  j->timeout_s = 0.3;
  bool queued = false;
  serve(q, m, {}, [&](Engine&) {
    if (!queued) queued = q.submit(j) == Admission::Queued;
    return r->end.has_value();
  });
  REQUIRE(r->end);
  REQUIRE(r->end->error);
  CHECK(r->end->error->status() == 504);
  CHECK(r->end->error->code() == "timeout");
  CHECK(r->end->completion_tokens > 0);
  CHECK(m.cancelled(CancelReason::Timeout) == 1);
}

TEST_CASE("serve loop: on stop, queued jobs are refused and running ones cut after the grace",
          "[serve]") {
  auto running = std::make_shared<Recorder>(), queued = std::make_shared<Recorder>();
  ServeQueue q(8);
  ServeMetrics m;
  ServeLoopOptions lo;
  lo.shutdown_grace_s = 0.2;
  bool submitted = false;
  auto t0 = std::chrono::steady_clock::now();
  serve(q, m, lo, [&](Engine&) {
    if (!submitted) {
      // The second job waits: the first holds the only slot.
      submitted = q.submit(job("abc", 1000000, 1, running)) == Admission::Queued &&
                  q.submit(job("def", 10, 2, queued)) == Admission::Queued;
      t0 = std::chrono::steady_clock::now();
      return false;
    }
    return running->events > 0;  // SIGTERM once the first job is under way
  });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(running->end);
  REQUIRE(running->end->error);
  CHECK(running->end->error->code() == "server_shutdown");
  CHECK(running->end->error->status() == 503);
  REQUIRE(queued->end);
  REQUIRE(queued->end->error);
  CHECK(queued->end->error->code() == "server_shutdown");
  CHECK(queued->events == 0);
  CHECK(took < 5);
  CHECK(q.submit(job("late", 1, 3, std::make_shared<Recorder>())) == Admission::NotServing);
  CHECK(m.cancelled(CancelReason::Shutdown) == 1);
}

namespace {

struct Sent {
  std::string prompt;
  std::vector<size_t> boundaries;  // as ServeApi gives a chat's message ends
};

// Serves `sent` one after another (each queued once the one before has ended) on one slot, with
// the state cache of `lo` (slots set aside as cmd_serve does); returns every job's text.
std::vector<std::string> serve_in_turn(const std::vector<Sent>& sent, ServeLoopOptions lo,
                                       ServeMetrics& m) {
  ClusterOptions o = one_slot();
  o.extra_slots = int(lo.state_cache_entries);
  o.limits.chunk = 50;  // prompts of several chunks
  ServeQueue q(8);
  std::vector<std::shared_ptr<Recorder>> rec;
  auto tok = make_bytes_tokenizer();
  run_cluster(o, [&](Engine& e) {
    ServeLoop loop(e, *tok, q, m, lo);
    loop.run([&] {
      if (!rec.empty() && !rec.back()->end) return false;
      if (rec.size() == sent.size()) return true;
      rec.push_back(std::make_shared<Recorder>());
      auto j = job(sent[rec.size() - 1].prompt, 16, 100 + rec.size(), rec.back());
      j->choices[0].boundaries = sent[rec.size() - 1].boundaries;
      REQUIRE(q.submit(j) == Admission::Queued);
      return false;
    });
    return 0;
  });
  std::vector<std::string> out;
  for (auto& r : rec) {
    REQUIRE(r->end);
    CHECK_FALSE(r->end->error);
    out.push_back(r->text);
  }
  return out;
}

ServeLoopOptions with_cache(size_t entries) {
  ServeLoopOptions lo;
  lo.state_cache_bytes = 64 << 20;
  lo.state_cache_entries = entries;
  return lo;
}

}  // namespace

TEST_CASE("serve loop: the state cache gives the same text as no cache, hitting where it should",
          "[serve][state_cache]") {
  std::string x;  // a shared start of 300 bytes (tokens), read in 6 chunks
  while (x.size() < 300) x += "The old lighthouse keeper counted the ships. ";
  x.resize(300);
  const std::vector<Sent> sent = {{x + "a?", {}}, {x + "b?", {}}, {x + "c?", {}}, {x + "a?", {}}};
  ServeMetrics off_m;
  const std::vector<std::string> off = serve_in_turn(sent, {}, off_m);
  CHECK(off_m.cache_hits.load() == 0);
  CHECK(off_m.cache_misses.load() == 0);  // no cache, no lookups

  ServeMetrics m;
  CHECK(serve_in_turn(sent, with_cache(16), m) == off);
  // 1 misses; 2 misses and keeps the state where it branches off 1 (after x); 3 starts from
  // that; 4 from the state 1 kept (its whole prompt but the last token).
  CHECK(m.cache_misses.load() == 2);
  CHECK(m.cache_hits.load() == 2);
  CHECK(m.cache_hit_tokens.load() == 300 + 301);
  CHECK(m.cache_snapshots.load() == 4);
  CHECK(m.cache_evictions.load() == 0);
  CHECK(m.cache_entries.load() == 0);  // all released when the loop ended

  // Two entries only: every new state evicts the least recently used one that no running
  // request started from.
  ServeMetrics small;
  CHECK(serve_in_turn(sent, with_cache(2), small) == off);
  // 2 keeps x (1 entry left), then its own prompt (evicting 1's); 3 starts from x and keeps its
  // own (evicting 2's); 4 finds 1's gone, starts from x too and keeps its own (evicting 3's).
  CHECK(small.cache_hits.load() == 2);
  CHECK(small.cache_hit_tokens.load() == 300 + 300);
  CHECK(small.cache_evictions.load() == 3);

  // A chat's first message ends at a boundary: the second request with that system prompt hits.
  const std::vector<Sent> chat = {{x + "a?", {300}}, {x + "b?", {300}}};
  ServeMetrics cm;
  const std::vector<std::string> chat_off = serve_in_turn(chat, {}, off_m);
  CHECK(serve_in_turn(chat, with_cache(16), cm) == chat_off);
  CHECK(cm.cache_hits.load() == 1);
  CHECK(cm.cache_hit_tokens.load() == 300);
}
