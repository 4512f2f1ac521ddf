#include "kernels/cpu/thread_pool.h"

namespace rwkvpp::cpu {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

// Takes items one at a time until none are left; `l` holds mu_ on entry and exit.
void ThreadPool::drain(std::unique_lock<std::mutex>& l) {
  while (next_ < n_) {
    int64_t i = next_++;
    const auto* fn = fn_;
    l.unlock();
    (*fn)(i);
    l.lock();
    if (++finished_ == n_) done_.notify_all();
  }
}

void ThreadPool::work() {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    wake_.wait(l, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    drain(l);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::unique_lock<std::mutex> l(mu_);
  fn_ = &fn;
  n_ = n;
  next_ = 0;
  finished_ = 0;
  ++generation_;
  wake_.notify_all();
  drain(l);
  done_.wait(l, [&] { return finished_ == n_; });
  fn_ = nullptr;
}

}  // namespace rwkvpp::cpu
