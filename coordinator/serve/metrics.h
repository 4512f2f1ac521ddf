// The server's metrics, in the Prometheus text exposition format (GET /metrics): requests
// running and waiting, time to first token, inter-token and end-to-end latency histograms,
// prompt and generated token counters, HTTP responses by status, cancelled requests by reason,
// and per pipeline stage its compute and wait seconds (from the stages' heartbeats) and how long
// ago it was last heard from; the state cache's hits, misses, saved tokens and bytes. Every method
// is thread-safe: the engine thread records generation, the HTTP threads record responses and
// render.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace rwkvpp {

// A Prometheus histogram with fixed upper bounds (seconds); observations above the last bound
// land in +Inf.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  uint64_t count() const;
  double sum() const;
  // Appends "# HELP", "# TYPE" and the _bucket (cumulative), _sum and _count lines.
  void render(std::string& out, std::string_view name, std::string_view help) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bound, then +Inf (not cumulative)
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Why a request ended before it completed.
enum class CancelReason { Disconnect, Shutdown, Timeout };
const char* cancel_reason_name(CancelReason r);  // "disconnect", "shutdown", "timeout"

// One pipeline stage as /metrics shows it.
struct StageMetrics {
  int stage = 0, rank = 0, first = 0, last = 0;  // layers [first, last)
  double compute_s = 0, wait_s = 0, silence_s = 0;
  uint64_t tokens = 0, steps = 0;
};

class ServeMetrics {
 public:
  ServeMetrics();
  Histogram ttft, inter_token, e2e;  // seconds
  Histogram running_at_admission;    // requests running once a request joins them (itself too)
  std::atomic<int64_t> running{0};   // requests in the engine
  std::atomic<int64_t> waiting{0};   // requests queued for slots
  std::atomic<int64_t> slots{0};     // choices the engine can run at once
  std::atomic<uint64_t> prompt_tokens{0}, generation_tokens{0}, completed{0};
  // The state cache (serve_loop.h): lookups per choice that found a kept state or not, the
  // prompt tokens the hits did not read again, states kept and evicted; its bytes, entries,
  // budget and the bytes of one entry.
  std::atomic<uint64_t> cache_hits{0}, cache_misses{0}, cache_hit_tokens{0}, cache_snapshots{0},
      cache_evictions{0};
  std::atomic<int64_t> cache_bytes{0}, cache_entries{0}, cache_capacity_bytes{0},
      cache_entry_bytes{0};

  void count_response(int status);
  void count_cancel(CancelReason r);
  uint64_t cancelled(CancelReason r) const;
  void set_stages(std::vector<StageMetrics> stages);
  // The whole exposition text.
  std::string render() const;

 private:
  mutable std::mutex mu_;
  std::map<int, uint64_t> responses_;       // by HTTP status
  std::map<std::string, uint64_t> cancel_;  // by reason
  std::vector<StageMetrics> stages_;
};

}  // namespace rwkvpp
