// Progress bar / periodic log lines of a batch job; see progress.h.
#include "coordinator/batch/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

ProgressMode parse_progress_mode(const std::string& s) {
  if (s == "auto") return ProgressMode::Auto;
  if (s == "bar") return ProgressMode::Bar;
  if (s == "log") return ProgressMode::Log;
  if (s == "none") return ProgressMode::None;
  fail("--progress must be auto, bar, log or none (got '{}')", s);
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  auto t = static_cast<long long>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, int(t % 3600 / 60));
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, int(t % 60));
  return fmt::format("{}s", t);
}

Progress::Progress(ProgressMode mode, uint64_t total, uint64_t done_before, double log_interval_s,
                   FILE* out)
    : out_(out), total_(total), done_before_(done_before), log_interval_(log_interval_s) {
  if (mode == ProgressMode::Auto)
    mode = isatty(fileno(out)) ? ProgressMode::Bar : ProgressMode::Log;
  bar_ = mode == ProgressMode::Bar;
  log_ = mode == ProgressMode::Log;
  start_ = last_draw_ = Clock::now();
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
  if (!bar_ && !log_) return;
  auto now = Clock::now();
  auto every = bar_ ? std::chrono::duration<double>(0.25) : log_interval_;
  if (now - last_draw_ < every) return;
  last_draw_ = now;
  draw();
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

void Progress::draw() {
  if (bar_) {
    constexpr int kWidth = 30;
    int fill = total_ ? int(double(kWidth) * double(done()) / double(total_)) : kWidth;
    fill = std::clamp(fill, 0, kWidth);
    fmt::print(out_, "\r\033[K[{}{}] {}", std::string(size_t(fill), '#'),
               std::string(size_t(kWidth - fill), '.'), status_line());
    drawn_ = true;
  } else {
    fmt::print(out_, "batch: {}\n", status_line());
  }
  std::fflush(out_);
}

void Progress::clear() {
  if (bar_ && drawn_) {
    fmt::print(out_, "\r\033[K");
    std::fflush(out_);
    drawn_ = false;
  }
}

std::string Progress::summary() const {
  double t = elapsed_s();
  return fmt::format("{} records written in {} ({} tokens, {:.1f} tokens/s); {} of {} done",
                     done_now_, format_duration(t), tokens_, double(tokens_) / std::max(t, 1e-9),
                     done(), total_);
}

}  // namespace rwkvpp
