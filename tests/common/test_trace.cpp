// The trace ring (common/trace.h): off records nothing; on, the JSON it makes parses, keeps
// only the last --trace-steps steps, and puts timestamps on rank 0's clock.
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "catch.h"
#include "common/trace.h"

using namespace rwkvpp;

namespace {

bool near(double a, double b) { return std::abs(a - b) < 1e-6; }

nlohmann::json events(int pid) {
  return nlohmann::json::parse("[" + trace::events_json(pid, "rank \"x\"") + "]");
}

}  // namespace

TEST_CASE("trace: off records nothing, on keeps the last steps of its ring", "[trace]") {
  trace::reset();
  trace::span(trace::Track::Host, "step", 1, 10, 20);
  CHECK(trace::recorded() == 0);
  CHECK(trace::events_json(0, "r").empty());

  trace::start(4, 1000);
  for (uint64_t s = 1; s <= 100; ++s) {
    trace::span(trace::Track::Host, "step", s, 1000 + s * 100, 1000 + s * 100 + 50);
    trace::counter("batch (sequences)", s, 1000 + s * 100, double(s));
    trace::async_span(trace::Track::Hops, "hop", s, 1000 + s * 100, 1000 + s * 100 + 500);
  }
  const auto j = events(3);
  std::set<int64_t> steps;
  int begins = 0, ends = 0, meta = 0;
  for (const auto& e : j) {
    CHECK(e["pid"] == 3);
    const std::string ph = e["ph"];
    if (ph == "M") {
      ++meta;
      if (e["name"] == "process_name") CHECK(e["args"]["name"] == "rank \"x\"");
      continue;
    }
    if (ph == "X") {
      steps.insert(e["args"]["step"].get<int64_t>());
      // ns 1000 is timestamp 0; microseconds with the nanoseconds kept
      CHECK(near(double(e["ts"]), double(e["args"]["step"].get<int64_t>()) * 0.1));
      CHECK(near(double(e["dur"]), 0.05));
    }
    begins += ph == "b";
    ends += ph == "e";
  }
  CHECK(steps == std::set<int64_t>{97, 98, 99, 100});
  CHECK(begins == 4);
  CHECK(ends == 4);
  CHECK(meta == 6);  // process name and sort index, four thread names
  trace::reset();
}

TEST_CASE("trace: a rank's clock offset moves its timestamps onto rank 0's", "[trace]") {
  trace::start(8);
  trace::set_clock(5000, 100000);  // this rank's clock runs 5 us ahead; rank 0's 100 us is 0
  trace::span(trace::Track::Device, "layers", 1, 105000 + 2000, 105000 + 3000);
  const auto j = events(1);
  bool found = false;
  for (const auto& e : j)
    if (e["ph"] == "X") {
      found = true;
      CHECK(e["tid"] == int(trace::Track::Device));
      CHECK(near(double(e["ts"]), 2.0));
      CHECK(near(double(e["dur"]), 1.0));
    }
  CHECK(found);
  trace::reset();
}
