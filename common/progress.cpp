// Progress bars and log lines; see progress.h.
#include "common/progress.h"

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

ProgressLine::ProgressLine(ProgressMode mode, std::string label, double log_interval_s, FILE* out)
    : label_(std::move(label)), out_(out), log_interval_(log_interval_s) {
  if (mode == ProgressMode::Auto)
    mode = isatty(fileno(out)) ? ProgressMode::Bar : ProgressMode::Log;
  bar_ = mode == ProgressMode::Bar;
  log_ = mode == ProgressMode::Log;
  last_draw_ = Clock::now();
}

bool ProgressLine::due() {
  if (!active()) return false;
  auto now = Clock::now();
  auto every = bar_ ? std::chrono::duration<double>(0.25) : log_interval_;
  if (now - last_draw_ < every) return false;
  last_draw_ = now;
  return true;
}

void ProgressLine::draw(double fraction, const std::string& status) {
  if (bar_) {
    constexpr int kWidth = 30;
    int fill = std::clamp(int(double(kWidth) * fraction), 0, kWidth);
    fmt::print(out_, "\r\033[K[{}{}] {}", std::string(size_t(fill), '#'),
               std::string(size_t(kWidth - fill), '.'), status);
    drawn_ = true;
  } else if (log_) {
    fmt::print(out_, "{}: {}\n", label_, status);
  }
  std::fflush(out_);
}

void ProgressLine::clear() {
  if (bar_ && drawn_) {
    fmt::print(out_, "\r\033[K");
    std::fflush(out_);
    drawn_ = false;
  }
}

namespace {

std::string bytes_text(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b * 1e-9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b * 1e-6);
  return fmt::format("{:.0f} kB", b * 1e-3);
}

}  // namespace

WorkProgress::WorkProgress(ProgressMode mode, std::string label, uint64_t total_bytes,
                           uint64_t total_items, std::string item_name, double log_interval_s,
                           FILE* out)
    : line_(mode, label, log_interval_s, out),
      label_(std::move(label)),
      item_(std::move(item_name)),
      total_bytes_(total_bytes),
      total_items_(total_items),
      start_(Clock::now()),
      quiet_(mode == ProgressMode::None),
      out_(out) {}

std::string WorkProgress::status() const {
  const double t = std::max(std::chrono::duration<double>(Clock::now() - start_).count(), 1e-9);
  const double rate = double(bytes_) / t;
  const double left = total_bytes_ > bytes_ ? double(total_bytes_ - bytes_) : 0;
  return fmt::format("{} of {}, {}/{} {}, {}/s, ETA {}", bytes_text(double(bytes_)),
                     bytes_text(double(total_bytes_)), items_, total_items_, item_,
                     bytes_text(rate), bytes_ ? format_duration(left / rate) : "?");
}

void WorkProgress::update(uint64_t bytes_done, uint64_t items_done) {
  bytes_ = bytes_done;
  items_ = items_done;
  if (line_.due()) line_.draw(total_bytes_ ? double(bytes_) / double(total_bytes_) : 1.0, status());
}

void WorkProgress::finish() {
  line_.clear();
  if (quiet_) return;
  const double t = std::chrono::duration<double>(Clock::now() - start_).count();
  if (t < 1) return;  // quick work needs no summary
  fmt::print(out_, "{}: {} in {} {} in {}\n", label_, bytes_text(double(bytes_)), items_, item_,
             format_duration(t));
}

}  // namespace rwkvpp
