// Progress of a batch job on stderr: on a terminal a bar redrawn in place (done/total records,
// generated tokens/s, ETA); otherwise (a log file, Slurm's output) one line every few seconds;
// and a summary at the end. Not thread-safe: called from the coordinator's loop only.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

#include "common/progress.h"

namespace rwkvpp {

// Prompt and generated tokens fed to the model so far, and prompt tokens automatic prefix
// sharing spared it.
struct FeedCounts {
  uint64_t fed = 0, saved = 0;
};

class Progress {
 public:
  // `total`: records the job has in all; `done_before`: those already in the output.
  Progress(ProgressMode mode, uint64_t total, uint64_t done_before, double log_interval_s,
           FILE* out = stderr);

  // A record was written with `tokens` generated tokens.
  void record(uint64_t tokens);
  // Called often (every generated piece); redraws or logs when it is time.
  void tick();
  // Where the progress line gets the token counts (optional; null: not shown).
  void set_feed(std::function<FeedCounts()> f) { feed_ = std::move(f); }
  // Clears the bar (before printing other lines, and at the end).
  void clear();
  // One line: what this run did, and where the job stands.
  std::string summary() const;

  uint64_t done() const { return done_before_ + done_now_; }
  uint64_t total() const { return total_; }
  double elapsed_s() const;

 private:
  std::string status_line() const;

  ProgressLine line_;  // common/progress.h: the bar or the log lines
  uint64_t total_, done_before_, done_now_ = 0, tokens_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::function<FeedCounts()> feed_;
};

}  // namespace rwkvpp
