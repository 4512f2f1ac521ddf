// Progress of long work on stderr: on a terminal a bar redrawn in place (4 times a second);
// otherwise (a pipe, a log file, Slurm's output) one line every few seconds. `rwkvpp batch`
// (coordinator/batch/progress.h), convert and synth (WorkProgress: bytes and tensors, ETA)
// and the stages' loading share it. Not thread-safe: one caller at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace rwkvpp {

enum class ProgressMode { Auto, Bar, Log, None };
ProgressMode parse_progress_mode(const std::string& s);  // "auto", "bar", "log", "none"

// "1h02m", "3m05s", "12s"; "?" for a negative or infinite time.
std::string format_duration(double seconds);

// Draws one status line: as a bar (Auto on a terminal) or as log lines prefixed with `label`.
class ProgressLine {
 public:
  ProgressLine(ProgressMode mode, std::string label, double log_interval_s, FILE* out = stderr);
  bool active() const { return bar_ || log_; }
  // Whether it is time to draw again (a quarter second for a bar, the log interval for lines).
  bool due();
  // Draws `status` after a bar filled to `fraction` (0..1), or logs "label: status".
  void draw(double fraction, const std::string& status);
  void clear();  // clears the bar (before other lines, and at the end)

 private:
  bool bar_ = false, log_ = false, drawn_ = false;
  std::string label_;
  FILE* out_;
  std::chrono::steady_clock::time_point last_draw_;
  std::chrono::duration<double> log_interval_;
};

// Work of a known size in bytes and items: "label: 1.2/3.4 GB, 120/290 tensors, 210 MB/s, ETA 11s".
class WorkProgress {
 public:
  WorkProgress(ProgressMode mode, std::string label, uint64_t total_bytes, uint64_t total_items,
               std::string item_name, double log_interval_s = 5, FILE* out = stderr);
  void update(uint64_t bytes_done, uint64_t items_done);
  // Clears the bar and prints one line of what was done (unless mode is None or it took < 1 s).
  void finish();
  std::string status() const;

 private:
  ProgressLine line_;
  std::string label_, item_;
  uint64_t total_bytes_, total_items_, bytes_ = 0, items_ = 0;
  std::chrono::steady_clock::time_point start_;
  bool quiet_;
  FILE* out_;
};

}  // namespace rwkvpp
