// Pieces of the recovery tests (tests/worker/test_recovery*.cpp): a seeded, sampled `rwkvpp
// batch` job on the small fixture, worker daemons that write their pid, and killers that act
// once the job's output has enough records. Every wait is bounded.
#pragma once

#include <string>
#include <vector>

#include "helpers.h"

namespace rwkvpp::test {

inline constexpr int kRecords = 160;

// True, with a warning that the test is skipped, when this build has no UCX transport.
bool skip_without_ucx();

// The records, one per line, sorted (batch writes them in the order they finish).
std::vector<std::string> sorted_lines(const std::string& path);

// kRecords prompts of 100-220 tokens at temperature 0.9, a seed each, a shared prefix file
// and a cluster key, in a temporary directory.
struct Job {
  TempDir dir;
  std::string prompts = dir / "prompts.jsonl", prefix = dir / "prefix.txt", key = dir / "cluster.key";

  Job();
  // `rwkvpp batch` of the job into `out` (presence and frequency penalties, 1 thread).
  std::vector<std::string> batch_args(const std::string& out) const;
  // batch_args() as the coordinator of `workers` daemons and `standby` standbys on `addr`,
  // snapshots every 16 tokens.
  std::vector<std::string> coordinator_args(const std::string& out, const std::string& addr, int workers,
                                            int standby) const;
  // Where the worker daemon of rank `r` writes its pid.
  std::string pidfile(int r) const { return dir / ("w" + std::to_string(r) + ".pid"); }
};

// A worker daemon that writes its pid first (exec keeps it), so that a killer can name it;
// started `delay_s` after the others (the join order gives the ranks); `extra`: more of its
// options (e.g. "--memory 0.5").
std::vector<std::string> worker(const std::string& addr, const std::string& key, const std::string& pidfile,
                                double delay_s, const std::string& extra = "");

// Shell text: waits (bounded, 60 s) until `out` has at least `lines` records; leaves $c = the
// count and fails (exit 1) when the job ended first or did not get there.
std::string wait_for_records(const std::string& out, int lines);

// Waits until `out` has at least `lines` records, then sends `sig` (SIGKILL) to the process
// of `pidfile`; exits 0 when it did while the job was still running, 1 otherwise.
std::vector<std::string> killer(const std::string& out, int lines, const std::string& pidfile,
                                const std::string& sig = "-9");

}  // namespace rwkvpp::test
