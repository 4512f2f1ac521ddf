// The trace ring and its trace-event JSON (common/trace.h).
#include "common/trace.h"

#include <fmt/format.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>

#include "common/error.h"

namespace rwkvpp::trace {

namespace {

enum class Kind : uint8_t { Span, Async, Counter };

struct Event {
  const char* name;
  uint64_t step;
  uint64_t ns;      // begin
  uint64_t dur_ns;  // spans
  double value;     // counters
  Track track;
  Kind kind;
};

// Room per step in the ring: a stage records about ten events per step, rank 0 twice that.
constexpr uint64_t kEventsPerStep = 48;

struct Ring {
  std::mutex mu;
  std::vector<Event> ev;  // grows to cap, then wraps at head
  size_t cap = 0, head = 0;
  uint64_t max_steps = 0, last_step = 0;
  int64_t offset_ns = 0;
  uint64_t base_ns = 0;
};

std::atomic<bool> g_on{false};

Ring& ring() {
  static Ring r;
  return r;
}

void push(const Event& e) {
  Ring& r = ring();
  std::lock_guard<std::mutex> lock(r.mu);
  if (e.step > r.last_step) r.last_step = e.step;
  if (r.ev.size() < r.cap) {
    // Grown in steps, never past the ring's size (push_back's doubling could overshoot it).
    if (r.ev.size() == r.ev.capacity()) r.ev.reserve(std::min(r.cap, 2 * r.ev.capacity() + 1024));
    r.ev.push_back(e);
  } else {
    r.ev[r.head] = e;
    r.head = (r.head + 1) % r.cap;
  }
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (uint8_t(c) < 0x20) continue;
    o += c;
  }
  return o;
}

const char* track_name(Track t) {
  switch (t) {
    case Track::Host:
      return "host (protocol thread)";
    case Track::Device:
      return "device";
    case Track::Hops:
      return "hops (sends in flight)";
    case Track::Admission:
      return "coordinator (admission)";
  }
  return "?";
}

}  // namespace

bool on() { return g_on.load(std::memory_order_relaxed); }

void start(uint64_t max_steps, uint64_t base_ns) {
  Ring& r = ring();
  {
    std::lock_guard<std::mutex> lock(r.mu);
    r.max_steps = std::max<uint64_t>(1, max_steps);
    r.cap = size_t(r.max_steps * kEventsPerStep);
    r.ev.clear();
    r.ev.reserve(std::min<size_t>(r.cap, size_t(1) << 16));
    r.head = 0;
    r.last_step = 0;
    r.offset_ns = 0;
    r.base_ns = base_ns ? base_ns : now_ns();
  }
  g_on.store(true, std::memory_order_relaxed);
}

void reset() {
  g_on.store(false, std::memory_order_relaxed);
  Ring& r = ring();
  std::lock_guard<std::mutex> lock(r.mu);
  r.ev.clear();
  r.ev.shrink_to_fit();
  r.cap = r.head = 0;
}

void set_clock(int64_t offset_ns, uint64_t base_ns) {
  Ring& r = ring();
  std::lock_guard<std::mutex> lock(r.mu);
  r.offset_ns = offset_ns;
  r.base_ns = base_ns;
}

uint64_t base_ns() {
  Ring& r = ring();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.base_ns;
}

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

void span(Track track, const char* name, uint64_t step, uint64_t begin_ns, uint64_t end_ns) {
  if (!on()) return;
  push({name, step, begin_ns, end_ns > begin_ns ? end_ns - begin_ns : 0, 0.0, track, Kind::Span});
}

void async_span(Track track, const char* name, uint64_t step, uint64_t begin_ns, uint64_t end_ns) {
  if (!on()) return;
  push({name, step, begin_ns, end_ns > begin_ns ? end_ns - begin_ns : 0, 0.0, track, Kind::Async});
}

void counter(const char* name, uint64_t step, uint64_t ns, double value) {
  if (!on()) return;
  push({name, step, ns, 0, value, Track::Host, Kind::Counter});
}

size_t recorded() {
  Ring& r = ring();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.ev.size();
}

std::string events_json(int pid, const std::string& process_label) {
  if (!on()) return {};
  Ring& r = ring();
  std::lock_guard<std::mutex> lock(r.mu);
  std::string o = fmt::format(
      R"({{"ph":"M","pid":{},"tid":0,"name":"process_name","args":{{"name":"{}"}}}},)"
      R"({{"ph":"M","pid":{},"tid":0,"name":"process_sort_index","args":{{"sort_index":{}}}}})",
      pid, json_escape(process_label), pid, pid);
  for (Track t : {Track::Host, Track::Device, Track::Hops, Track::Admission})
    o += fmt::format(
        R"(,{{"ph":"M","pid":{},"tid":{},"name":"thread_name","args":{{"name":"{}"}}}})", pid,
        int(t), track_name(t));
  // Timestamps in microseconds on rank 0's clock, from its base; events in recording order
  // (oldest first), only those of the last max_steps steps.
  auto us = [&](uint64_t ns) { return double(int64_t(ns - r.base_ns) - r.offset_ns) * 1e-3; };
  const uint64_t first = r.last_step >= r.max_steps ? r.last_step - r.max_steps + 1 : 0;
  uint64_t async_id = 0;
  for (size_t k = 0; k < r.ev.size(); ++k) {
    const Event& e = r.ev[(r.head + k) % r.ev.size()];
    if (e.step < first) continue;
    switch (e.kind) {
      case Kind::Span:
        o += fmt::format(
            R"(,{{"ph":"X","pid":{},"tid":{},"name":"{}","ts":{:.3f},"dur":{:.3f},"args":{{"step":{}}}}})",
            pid, int(e.track), e.name, us(e.ns), double(e.dur_ns) * 1e-3, e.step);
        break;
      case Kind::Async: {
        const uint64_t id = (uint64_t(pid) << 40) | ++async_id;
        o += fmt::format(
            R"(,{{"ph":"b","cat":"hop","id":{},"pid":{},"tid":{},"name":"{}","ts":{:.3f},"args":{{"step":{}}}}})",
            id, pid, int(e.track), e.name, us(e.ns), e.step);
        o += fmt::format(
            R"(,{{"ph":"e","cat":"hop","id":{},"pid":{},"tid":{},"name":"{}","ts":{:.3f}}})", id,
            pid, int(e.track), e.name, us(e.ns + e.dur_ns));
        break;
      }
      case Kind::Counter:
        o += fmt::format(
            R"(,{{"ph":"C","pid":{},"tid":0,"name":"{}","ts":{:.3f},"args":{{"value":{}}}}})", pid,
            e.name, us(e.ns), e.value);
        break;
    }
  }
  return o;
}

void write_file(const std::string& path, const std::vector<std::string>& fragments,
                const std::string& about) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) fail("--trace: cannot write {}", path);
  fmt::print(f, "{{\"traceEvents\":[\n");
  bool first = true;
  for (const std::string& s : fragments) {
    if (s.empty()) continue;
    fmt::print(f, "{}{}\n", first ? "" : ",", s);
    first = false;
  }
  fmt::print(f, "],\"displayTimeUnit\":\"ms\",\"otherData\":{{\"about\":\"{}\"}}}}\n",
             json_escape(about));
  const bool ok = std::ferror(f) == 0;
  if (std::fclose(f) != 0 || !ok) fail("--trace: cannot write {}", path);
}

}  // namespace rwkvpp::trace
