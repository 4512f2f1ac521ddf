#include "kernels/cpu/thread_pool.h"

#include <chrono>

#include "common/env_options.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define RWKVPP_PAUSE() _mm_pause()
#else
#define RWKVPP_PAUSE() std::this_thread::yield()
#endif

namespace rwkvpp::cpu {

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

ThreadPool::ThreadPool(int threads) : spin_ns_(env_options().cpu.spin_us * 1000) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain(uint64_t gen) {
  const auto* fn = fn_.load(std::memory_order_acquire);
  const int64_t n = n_.load(std::memory_order_acquire);
  uint64_t c = claim_.load(std::memory_order_acquire);
  while ((c >> 32) == (gen & 0xffffffffu) && int64_t(c & 0xffffffffu) < n) {
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
    (*fn)(int64_t(c & 0xffffffffu));
    finished_.fetch_add(1, std::memory_order_acq_rel);
    c = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::work() {
  uint64_t seen = 0;
  for (;;) {
    // Spin for a new generation, then sleep.
    const int64_t until = now_ns() + spin_ns_;
    uint64_t g;
    int polls = 0;
    while ((g = generation_.load(std::memory_order_acquire)) == seen && !stop_.load()) {
      RWKVPP_PAUSE();
      if (++polls % 64 == 0 && now_ns() > until) {
        std::unique_lock<std::mutex> l(mu_);
        sleepers_.fetch_add(1);
        wake_.wait(l, [&] { return stop_.load() || generation_.load() != seen; });
        sleepers_.fetch_sub(1);
      }
    }
    if (stop_.load()) return;
    seen = g;
    drain(g);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // Publish the job: its fn and size first, then the claim counter of the new generation, then
  // the generation that workers watch.
  const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  fn_.store(&fn, std::memory_order_release);
  n_.store(n, std::memory_order_release);
  finished_.store(0, std::memory_order_release);
  claim_.store((gen & 0xffffffffu) << 32, std::memory_order_release);
  generation_.store(gen);  // seq_cst: ordered before the sleepers_ read below
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> l(mu_);
    wake_.notify_all();
  }
  drain(gen);
  while (finished_.load(std::memory_order_acquire) < n) RWKVPP_PAUSE();
}

}  // namespace rwkvpp::cpu
