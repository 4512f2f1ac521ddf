// Parallel host sampling of a step's rows (host_sampler.h).
#include "worker/host_sampler.h"

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>

#include "common/env_options.h"
#include "kernels/cpu/thread_pool.h"

namespace rwkvpp {

HostSampler::HostSampler(int threads) {
  threads_ = std::clamp(int(std::thread::hardware_concurrency()) - 2, 1, 16);
  if (threads > 0)
    threads_ = threads;
  else if (const int v = env_options().stage.sample_threads; v > 0)  // RWKVPP_SAMPLE_THREADS
    threads_ = v;
}

HostSampler::~HostSampler() = default;

void HostSampler::sample(std::vector<Row>& rows, int64_t vocab) {
  // Exceptions must not leave a pool item (ThreadPool's contract): the first caught is kept.
  std::mutex mu;
  std::exception_ptr failed;
  const auto one = [&](int64_t i) {
    Row& r = rows[size_t(i)];
    try {
      r.token = sample_token(r.logits, vocab, *r.params, *r.penalty, r.position, &r.logprob);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!failed) failed = std::current_exception();
    }
  };
  const int64_t n = int64_t(rows.size());
  if (threads_ <= 1 || n < 1 || vocab < kParallelMinVocab) {
    for (int64_t i = 0; i < n; ++i) one(i);
  } else if (n * kRowsPerThreadMin < threads_) {
    // Few rows (c=1 of a server): one row at a time, its exps spread over the pool.
    if (!pool_) pool_ = std::make_unique<cpu::ThreadPool>(threads_);
    const ParallelRanges split = [this](int64_t len, const std::function<void(int64_t, int64_t)>& part) {
      const int64_t pieces = std::min<int64_t>(2 * threads_, (len + 1023) / 1024);
      const int64_t each = (len + pieces - 1) / pieces;
      pool_->parallel_for(pieces, [&](int64_t k) { part(k * each, std::min(len, (k + 1) * each)); });
    };
    for (Row& r : rows) {
      try {
        r.token = sample_token(r.logits, vocab, *r.params, *r.penalty, r.position, &r.logprob, &split);
      } catch (...) {
        if (!failed) failed = std::current_exception();
      }
    }
  } else {
    if (!pool_) pool_ = std::make_unique<cpu::ThreadPool>(threads_);
    pool_->parallel_for(n, one);
  }
  if (failed) std::rethrow_exception(failed);
}

}  // namespace rwkvpp
