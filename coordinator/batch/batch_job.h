// `rwkvpp batch`: a resumable dataset-generation job. Every prompt of a JSON Lines input gets n
// samples, appended to a JSON Lines output that is also the job's journal (batch/journal.h):
// after SIGKILL at any moment, running the same command again completes the job with exactly
// one record per (id, index), and with seeds the records equal those of an uninterrupted run.
// SIGTERM/SIGINT stop it cleanly (signals.h): no new work, the steps in flight are awaited, their
// unfinished samples are abandoned (redone on resume), everything complete is synced, exit 75.
//
// Throughput: the n samples of a prompt read the prompt once (its state is forked: every
// prompt's tokens but the last are read into a kept state, and each sample continues it from
// the last token); a --prefix-file common to every prompt is read once for the whole job; and
// prompts that share a long enough prefix read it once (automatic prefix sharing).
// Records follow the order in which samples finish, not the input order.
//
// Seeds: sample `index` of a line uses the line's "seed" + index when the line has one, else
// record_seed(job seed, id, index). Sampling depends only on (seed, position), never on the
// batch a sequence rode in, so a resumed job reproduces an uninterrupted one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/batch/batch_input.h"
#include "coordinator/cluster.h"

namespace rwkvpp {

struct BatchOptions {
  ClusterOptions cluster;
  std::string input, output;
  std::string rejects;      // default: OUTPUT.rejects.jsonl
  std::string prefix_file;  // text prepended to every prompt (tokenized on its own)
  std::string tokenizer;    // --tokenizer; default: the model's embedded one
  BatchDefaults defaults;   // n, max_tokens, sampling (its seed is the job seed), stop strings
  std::vector<int32_t> stop_ids;
  bool logprobs = false;
  bool token_ids = false;   // records carry "token_ids"
  bool ordered = false;     // once complete, rewrite the output in input order
  // Automatic prefix sharing (prefix_share.h): prompts sharing at least `auto_prefix_min`
  // leading tokens read them once, into one of `auto_prefix_states` state slots set aside on
  // every stage. Off with --no-auto-prefix; results are the same either way.
  bool auto_prefix = true;
  int auto_prefix_min = 64;
  int auto_prefix_states = 32;
  double fsync_interval_s = 1.0;
  double log_interval_s = 10.0;
  std::string progress = "auto";  // auto, bar, log, none
};

// The exit code of a job stopped by SIGTERM/SIGINT before it was complete (sysexits' EX_TEMPFAIL:
// run the same command again to resume). A complete job exits 0.
constexpr int kBatchStopped = 75;

// Runs the job on every rank (rank 0 coordinates, under run_cluster); returns the exit code.
int run_batch(const BatchOptions& o);

// The seed of sample `index` of a line without its own seed: a hash of (job seed, the id's
// JSON text, index) -- stable across runs, ranks, batching and rwkvpp versions.
uint64_t record_seed(uint64_t job_seed, const std::string& id_key, int index);

}  // namespace rwkvpp
