// Prometheus metrics of rwkvpp serve (metrics.h).
#include "coordinator/serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace rwkvpp {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

uint64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

double Histogram::sum() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sum_;
}

void Histogram::render(std::string& out, std::string_view name, std::string_view help) const {
  std::lock_guard<std::mutex> lock(mu_);
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, sum_,
                     name, count_);
}

const char* cancel_reason_name(CancelReason r) {
  switch (r) {
    case CancelReason::Disconnect:
      return "disconnect";
    case CancelReason::Shutdown:
      return "shutdown";
    case CancelReason::Timeout:
      return "timeout";
  }
  return "?";
}

ServeMetrics::ServeMetrics()
    : ttft({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      inter_token({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      e2e({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      running_at_admission({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}) {}

void ServeMetrics::count_response(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++responses_[status];
}

void ServeMetrics::count_cancel(CancelReason r) {
  std::lock_guard<std::mutex> lock(mu_);
  ++cancel_[cancel_reason_name(r)];
}

uint64_t ServeMetrics::cancelled(CancelReason r) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cancel_.find(cancel_reason_name(r));
  return it == cancel_.end() ? 0 : it->second;
}

void ServeMetrics::set_stages(std::vector<StageMetrics> stages) {
  std::lock_guard<std::mutex> lock(mu_);
  stages_ = std::move(stages);
}

namespace {

void gauge(std::string& out, const char* name, const char* type, const char* help, double v) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, v);
}

}  // namespace

std::string ServeMetrics::render() const {
  std::string out;
  gauge(out, "rwkvpp_requests_running", "gauge", "Requests whose choices are in the engine.",
        double(running.load()));
  gauge(out, "rwkvpp_requests_waiting", "gauge",
        "Requests queued until the engine has slots for their choices.", double(waiting.load()));
  gauge(out, "rwkvpp_choice_slots", "gauge", "Choices (sequences) the engine runs at once.",
        double(slots.load()));
  gauge(out, "rwkvpp_prompt_tokens_total", "counter",
        "Prompt tokens of admitted requests (every choice).", double(prompt_tokens.load()));
  gauge(out, "rwkvpp_generation_tokens_total", "counter", "Tokens generated.",
        double(generation_tokens.load()));
  gauge(out, "rwkvpp_requests_completed_total", "counter",
        "Generation requests that ran to their end.", double(completed.load()));
  gauge(out, "rwkvpp_state_cache_hits_total", "counter",
        "Choices that started from a kept state (the state cache).", double(cache_hits.load()));
  gauge(out, "rwkvpp_state_cache_misses_total", "counter",
        "Choices that found no kept state for their prompt.", double(cache_misses.load()));
  gauge(out, "rwkvpp_state_cache_hit_tokens_total", "counter",
        "Prompt tokens not read again because a kept state had read them.",
        double(cache_hit_tokens.load()));
  gauge(out, "rwkvpp_state_cache_snapshots_total", "counter", "States kept for later requests.",
        double(cache_snapshots.load()));
  gauge(out, "rwkvpp_state_cache_evictions_total", "counter",
        "Kept states dropped to make room (least recently used first).",
        double(cache_evictions.load()));
  gauge(out, "rwkvpp_state_cache_bytes", "gauge",
        "Bytes the state cache holds: kept states (on the stages) and its trie (on rank 0).",
        double(cache_bytes.load()));
  gauge(out, "rwkvpp_state_cache_capacity_bytes", "gauge",
        "The state cache's budget (--state-cache-mb).", double(cache_capacity_bytes.load()));
  gauge(out, "rwkvpp_state_cache_entries", "gauge", "States the cache keeps.",
        double(cache_entries.load()));
  gauge(out, "rwkvpp_state_cache_entry_bytes", "gauge",
        "Bytes of one kept state, all stages together.", double(cache_entry_bytes.load()));
  ttft.render(out, "rwkvpp_time_to_first_token_seconds",
              "From a request's arrival to its first generated token (at the coordinator).");
  inter_token.render(out, "rwkvpp_inter_token_latency_seconds",
                     "Between consecutive tokens of one choice.");
  e2e.render(out, "rwkvpp_e2e_request_latency_seconds",
             "From a request's arrival to its last token.");
  running_at_admission.render(out, "rwkvpp_requests_running_at_admission",
                              "Requests running once a request joined them (counting it): how "
                              "much concurrency arriving requests met.");
  std::lock_guard<std::mutex> lock(mu_);
  out +=
      "# HELP rwkvpp_requests_cancelled_total Requests ended early, by reason.\n"
      "# TYPE rwkvpp_requests_cancelled_total counter\n";
  for (const char* r : {"disconnect", "shutdown", "timeout"}) {
    auto it = cancel_.find(r);
    out += fmt::format("rwkvpp_requests_cancelled_total{{reason=\"{}\"}} {}\n", r,
                       it == cancel_.end() ? 0 : it->second);
  }
  out +=
      "# HELP rwkvpp_http_responses_total HTTP responses, by status code.\n"
      "# TYPE rwkvpp_http_responses_total counter\n";
  for (auto& [code, n] : responses_)
    out += fmt::format("rwkvpp_http_responses_total{{code=\"{}\"}} {}\n", code, n);
  struct Series {
    const char* name;
    const char* type;
    const char* help;
    double StageMetrics::*field;
  };
  const Series series[] = {
      {"rwkvpp_stage_compute_seconds_total", "counter", "Seconds the stage spent computing steps.",
       &StageMetrics::compute_s},
      {"rwkvpp_stage_wait_seconds_total", "counter",
       "Seconds the stage waited for its next step (counted when it arrives).",
       &StageMetrics::wait_s},
      {"rwkvpp_stage_silence_seconds", "gauge",
       "Seconds since the coordinator last heard from the stage.", &StageMetrics::silence_s}};
  for (const Series& s : series) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", s.name, s.help, s.name, s.type);
    for (const StageMetrics& st : stages_)
      out += fmt::format("{}{{stage=\"{}\",rank=\"{}\",layers=\"{}-{}\"}} {}\n", s.name, st.stage,
                         st.rank, st.first, st.last - 1, st.*s.field);
  }
  out +=
      "# HELP rwkvpp_stage_tokens_total Tokens the stage computed.\n# TYPE "
      "rwkvpp_stage_tokens_total counter\n";
  for (const StageMetrics& st : stages_)
    out +=
        fmt::format("rwkvpp_stage_tokens_total{{stage=\"{}\",rank=\"{}\",layers=\"{}-{}\"}} {}\n",
                    st.stage, st.rank, st.first, st.last - 1, st.tokens);
  return out;
}

}  // namespace rwkvpp
