// A small fork-join pool for the CPU backend: parallel_for(n, fn) runs fn(i) for i < n on the
// calling thread and the pool's workers, and returns when all are done.
//
// A decode step calls it ~10 times per layer, tens of microseconds apart, so waking sleeping
// threads each time (a futex round trip, 5-50 us) would cost as much as the work. Workers
// therefore spin for a while after each job (RWKVPP_CPU_SPIN_US, default 200 us: the gaps inside
// one step), then sleep on a condition variable: a step wakes them about once, and ranks that
// share a few cores (mpirun --oversubscribe, where OpenMP-style endless busy-waiting made steps
// 10-40x slower) lose at most that long per idle gap.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace rwkvpp::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads - 1 workers; the caller is the last one
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }
  // Runs fn(i) for every i in [0, n), each exactly once, spread over the threads. Not
  // reentrant: fn must not call parallel_for. Exceptions from fn are not allowed (terminate).
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void work();
  // Claims and runs items of generation `gen` until none are left.
  void drain(uint64_t gen);

  std::vector<std::thread> workers_;
  // claim_ = generation << 32 | next item: a worker claims an item only for the generation it
  // joined, so one that arrives late can never run an item of a later job with a stale fn_.
  std::atomic<uint64_t> claim_{0};
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int64_t> finished_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  int64_t spin_ns_;  // spin before sleeping (RWKVPP_CPU_SPIN_US)
};

}  // namespace rwkvpp::cpu
