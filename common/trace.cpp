#include "common/trace.h"

#include <fmt/format.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace rwkvpp::trace {

namespace {

struct Record {
  Point p;
  uint64_t step, ns;
};

const char* prefix() {
  static const char* p = [] {
    const char* e = std::getenv("RWKVPP_TRACE");
    return e && *e ? e : nullptr;
  }();
  return p;
}

std::vector<Record>& records() {
  static std::vector<Record> r;
  return r;
}

constexpr size_t kMaxRecords = size_t(1) << 20;  // ~24 MB: some 200k steps

const char* name(Point p) {
  switch (p) {
    case Point::StepPosted: return "step_posted";
    case Point::StepArrived: return "step_arrived";
    case Point::InputQueued: return "input_queued";
    case Point::LayersQueued: return "layers_queued";
    case Point::StepQueued: return "step_queued";
    case Point::ResultReady: return "result_ready";
    case Point::ResultIn: return "result_in";
  }
  return "?";
}

}  // namespace

bool on() { return prefix() != nullptr; }

uint64_t now_ns() {
  if (!on()) return 0;
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

void mark(Point p, uint64_t step, uint64_t ns) {
  if (!on()) return;
  auto& r = records();
  if (r.capacity() == 0) r.reserve(kMaxRecords);
  if (r.size() < kMaxRecords) r.push_back({p, step, ns ? ns : now_ns()});
}

void dump(int rank) {
  if (!on()) return;
  const std::string path = fmt::format("{}.{}.csv", prefix(), rank);
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    fmt::print(stderr, "rank {}: cannot write the trace {} (RWKVPP_TRACE)\n", rank, path);
    return;
  }
  fmt::print(f, "point,step,ns\n");
  for (const Record& x : records()) fmt::print(f, "{},{},{}\n", name(x.p), x.step, x.ns);
  std::fclose(f);
  records().clear();
}

}  // namespace rwkvpp::trace
