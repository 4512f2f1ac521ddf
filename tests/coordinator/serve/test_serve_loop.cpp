// The engine side of rwkvpp serve in one process (coordinator/serve/serve_loop.h), on the tiny
// byte-level model: a cancelled job frees its slot for the next one, which is unaffected; the
// request timeout; SIGTERM's path (running jobs cut after the grace, queued ones refused).
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
  j->choices.push_back({std::vector<int32_t>(prompt.begin(), prompt.end()), seed});
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
