// Progress bar / periodic log lines of a batch job; see progress.h.
#include "coordinator/batch/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

Progress::Progress(ProgressMode mode, uint64_t total, uint64_t done_before, double log_interval_s,
                   FILE* out)
    : line_(mode, "batch", log_interval_s, out), total_(total), done_before_(done_before) {
  start_ = Clock::now();
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

void Progress::record(uint64_t tokens) {
  ++done_now_;
  tokens_ += tokens;
  tick();
}

void Progress::tick() {
  if (line_.due()) line_.draw(total_ ? double(done()) / double(total_) : 1.0, status_line());
}

std::string Progress::status_line() const {
  double t = std::max(elapsed_s(), 1e-9);
  uint64_t left = total_ > done() ? total_ - done() : 0;
  double rate = double(done_now_) / t;  // records/s in this run
  std::string eta = done_now_ ? format_duration(double(left) / rate) : "?";
  double pct = total_ ? 100.0 * double(done()) / double(total_) : 100.0;
  std::string line =
      fmt::format("{}/{} records ({:.1f}%), {:.1f} tokens/s, {:.2f} records/s, ETA {}", done(),
                  total_, pct, double(tokens_) / t, rate, eta);
  if (feed_) {
    const FeedCounts c = feed_();
    line += fmt::format(", {} tokens fed, {} saved", c.fed, c.saved);
  }
  return line;
}

void Progress::clear() { line_.clear(); }

std::string Progress::summary() const {
  double t = elapsed_s();
  return fmt::format("{} records written in {} ({} tokens, {:.1f} tokens/s); {} of {} done",
                     done_now_, format_duration(t), tokens_, double(tokens_) / std::max(t, 1e-9),
                     done(), total_);
}

}  // namespace rwkvpp
