// The last stage's host sampling of a step's rows (kernels/sampling.h), spread over threads.
//
// Why: a row that is not plain greedy (temperature > 0, or penalties) is sampled on the host
// from its downloaded logits, one exp per vocabulary id: 0.2-0.3 ms per row at a vocab of
// 50-65k on a free core. On one thread, with the download, that is ~0.4 ms per generated token
// whatever the batch, which held `rwkvpp serve` (whose clients sample at temperature 1, OpenAI's
// default) near 2,400 tokens/s on an H100 that decodes 63k tokens/s greedily (docs/perf.md,
// serving). The rows of a step are
// independent (each has its own slot's penalty state), so they are sampled in parallel; a step
// of few rows (a server at low concurrency) splits each row's passes over the vocabulary
// instead. Each row's result is exactly what sample_token gives it alone.
//
// Threads: RWKVPP_SAMPLE_THREADS (default: the host's cores but two, which rank 0's HTTP threads
// and other ranks' hosts need, from 1 to 16; 1: no pool). The pool is made on the first step
// that uses it (a vocab of at least kParallelMinVocab), so stages that never sample, and small
// vocabularies, start no threads: a row of a 512-id vocab takes
// ~3 us, and on a loaded 2-core machine a pool made 256 of them 6x slower (a worker preempted
// while it holds a row delays the whole step). Not thread-safe: one StepLoop calls it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/sampling.h"

namespace rwkvpp {

namespace cpu {
class ThreadPool;
}

class HostSampler {
 public:
  struct Row {
    const float* logits = nullptr;  // [vocab]
    const SamplingParams* params = nullptr;
    PenaltyState* penalty = nullptr;  // distinct for every row of a call
    uint64_t position = 0;
    int32_t token = -1;  // out
    float logprob = 0;   // out
  };
  // Smaller vocabularies are sampled on the calling thread (a row costs less than a wake).
  static constexpr int64_t kParallelMinVocab = 8192;
  // Steps of fewer rows than threads / this are sampled a row at a time, each row's passes
  // over the vocabulary spread over the pool (sample_token's ParallelRanges); more rows, a row
  // per thread. A row's sum and draw stay serial (~20 % of it), so splitting a row pays
  // while the rows alone would leave most threads idle.
  static constexpr int64_t kRowsPerThreadMin = 3;

  // threads 0: RWKVPP_SAMPLE_THREADS or the default above.
  explicit HostSampler(int threads = 0);
  ~HostSampler();
  // Samples every row (sample_token with its logprob). When rows fail (every logit NaN or
  // -inf), rethrows one of their errors once every row is done.
  void sample(std::vector<Row>& rows, int64_t vocab);
  int threads() const { return threads_; }

 private:
  int threads_ = 1;
  std::unique_ptr<cpu::ThreadPool> pool_;
};

}  // namespace rwkvpp
