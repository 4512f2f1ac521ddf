// A small fork-join pool for the CPU backend: parallel_for(n, fn) runs fn(i) for i < n on the
// calling thread and the pool's workers, and returns when all are done. Idle workers sleep on a
// condition variable rather than spinning: ranks often share a few cores (mpirun
// --oversubscribe), where OpenMP's default busy-waiting made steps 10-40x slower.
#pragma once

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
  // Runs fn(i) for every i in [0, n), each exactly once, spread over the threads.
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void work();
  void drain(std::unique_lock<std::mutex>& l);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, next_ = 0, finished_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace rwkvpp::cpu
