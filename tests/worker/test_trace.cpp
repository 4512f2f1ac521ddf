// --trace under mpirun: a 3-rank generate writes one Chrome/Perfetto trace-event file with a
// process per rank, a span of every step on every stage, spans nested and ordered on every
// track; --trace-steps bounds what it keeps. (The trace ring itself: tests/common/test_trace.cpp.)
#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "catch.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "shards/model_format.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::string trace_model() {
  static TempDir dir;
  static std::string model = [] {
    std::string m = dir / "model";
    Checkpoint ck = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
    WriteOptions o;
    o.shards = 2;
    write_model(ck, infer_config(ck), m, o);
    return m;
  }();
  return model;
}

struct Span {
  double ts, end;
  std::string name;
  int64_t step;
};

// What a trace-event file holds, after checking the rules every event must follow.
struct Parsed {
  std::map<int, std::string> process;                  // pid -> process_name
  std::map<std::pair<int, int>, std::vector<Span>> x;  // (pid, tid) -> complete spans in file order
  int async_open = 0;
};

Parsed parse_trace(const std::string& path) {
  Parsed p;
  const auto j = nlohmann::json::parse(read_file(path));
  REQUIRE(j.is_object());
  REQUIRE(j.contains("traceEvents"));
  REQUIRE(j["traceEvents"].is_array());
  std::map<std::pair<int, int>, std::vector<std::string>> open;  // B/E stacks
  std::map<std::string, int> async;                              // cat/id -> open count
  for (const auto& e : j["traceEvents"]) {
    INFO(e.dump());
    REQUIRE(e.contains("ph"));
    REQUIRE(e.contains("pid"));
    REQUIRE(e.contains("tid"));
    REQUIRE(e.contains("name"));
    const std::string ph = e["ph"];
    const int pid = e["pid"], tid = e["tid"];
    if (ph == "M") {
      if (e["name"] == "process_name") p.process[pid] = e["args"]["name"];
      continue;
    }
    REQUIRE(e.contains("ts"));
    const double ts = e["ts"];
    CHECK(ts >= 0);     // on rank 0's clock, from the run's start
    CHECK(ts < 600e6);  // not some other clock's origin
    if (ph == "X") {
      REQUIRE(e.contains("dur"));
      CHECK(double(e["dur"]) >= 0);
      p.x[{pid, tid}].push_back(
          {ts, ts + double(e["dur"]), e["name"], e["args"].value("step", int64_t(-1))});
    } else if (ph == "B") {
      open[{pid, tid}].push_back(e["name"]);
    } else if (ph == "E") {
      REQUIRE(!open[{pid, tid}].empty());
      open[{pid, tid}].pop_back();
    } else if (ph == "b" || ph == "e") {
      async[std::string(e["cat"]) + "/" + e["id"].dump()] += ph == "b" ? 1 : -1;
    } else {
      CHECK((ph == "C" || ph == "i"));
    }
  }
  for (auto& [k, st] : open) CHECK(st.empty());
  for (auto& [k, n] : async) p.async_open += n != 0;
  return p;
}

// Spans on one track: in order of their starts, and each either inside the one it starts in
// or after it (never straddling its end).
void check_nested(const std::vector<Span>& spans) {
  const double eps = 0.002;  // timestamps are written to the nanosecond
  std::vector<const Span*> stack;
  double prev = -1;
  for (const Span& s : spans) {
    INFO(s.name << " of step " << s.step << " at " << s.ts);
    CHECK(s.ts + eps >= prev);
    prev = s.ts;
    while (!stack.empty() && stack.back()->end <= s.ts + eps) stack.pop_back();
    if (!stack.empty()) CHECK(s.end <= stack.back()->end + eps);
    stack.push_back(&s);
  }
}

std::set<int64_t> steps_named(const std::vector<Span>& spans, const std::string& name) {
  std::set<int64_t> out;
  for (const Span& s : spans)
    if (s.name == name) out.insert(s.step);
  return out;
}

constexpr int kHost = 1, kAdmission = 4;

}  // namespace

TEST_CASE("--trace: one trace-event file of a 3-rank generate, every step on every stage",
          "[mpi][pipeline]") {
  TempDir d;
  const std::string path = d / "run.json";
  auto r = run(fmt::format("mpirun --allow-run-as-root --oversubscribe -np 3 {} generate -m {} "
                           "--prompt-tokens 11,12,13,14,15,16,17 -n 12 "
                           "--chunk 4 --layers 0-1,2-2,3-3 --trace {}",
                           rwkvpp_binary(), trace_model(), path),
               300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const Parsed p = parse_trace(path);
  REQUIRE(p.process.size() == 3);
  for (int rank = 0; rank < 3; ++rank) {
    INFO("rank " << rank);
    REQUIRE(p.process.count(rank) == 1);
    CHECK(contains(p.process.at(rank), fmt::format("stage {}", rank)));
  }
  CHECK(p.async_open == 0);
  // The coordinator's steps: 7 prompt tokens in chunks of 4, then one step per generated token
  // but the last.
  REQUIRE(p.x.count({0, kAdmission}) == 1);
  const std::set<int64_t> posted = steps_named(p.x.at({0, kAdmission}), "admit + post step");
  CHECK(posted.size() == 2 + 11);
  CHECK(steps_named(p.x.at({0, kAdmission}), "handle result") == posted);
  for (int rank = 0; rank < 3; ++rank) {
    INFO("rank " << rank);
    REQUIRE(p.x.count({rank, kHost}) == 1);
    const auto& host = p.x.at({rank, kHost});
    CHECK(steps_named(host, "step") == posted);
    CHECK(steps_named(host, "layers") == posted);
    CHECK(steps_named(host, rank == 2 ? "head + sampling" : "send") == posted);
  }
  for (const auto& [track, spans] : p.x) {
    INFO("pid " << track.first << " tid " << track.second);
    check_nested(spans);
  }
}

TEST_CASE("--trace-steps keeps the last steps only", "[mpi][pipeline]") {
  TempDir d;
  const std::string path = d / "run.json";
  auto r = run(fmt::format("mpirun --allow-run-as-root --oversubscribe -np 2 {} generate -m {} "
                           "--prompt-tokens 21,22,23 -n 9 "
                           "--trace {} --trace-steps 3",
                           rwkvpp_binary(), trace_model(), path),
               300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const Parsed p = parse_trace(path);
  REQUIRE(p.process.size() == 2);
  const std::set<int64_t> posted = steps_named(p.x.at({0, kAdmission}), "admit + post step");
  // Steps 1 (the prompt) to 9 (the 9th token's input is the 8th): the last three are kept.
  CHECK(posted == std::set<int64_t>{7, 8, 9});
  for (int rank = 0; rank < 2; ++rank) CHECK(steps_named(p.x.at({rank, kHost}), "step") == posted);
}
