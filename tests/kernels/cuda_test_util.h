// Helpers of the [cuda] op tests (test_cuda_ops.cpp, test_cuda_fused.cpp): random inputs, a
// GPU backend with host<->device helpers, segment layouts, and the normalised error with a
// per-case worst-error report.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "kernels/backend.h"

namespace rwkvpp::cuda_test {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(g_);
    return v;
  }
  float one(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g_); }
  int integer(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g_); }
  std::mt19937_64& engine() { return g_; }

 private:
  std::mt19937_64 g_;
};

// ||a - b|| / ||b||; infinite when a holds a NaN or Inf that b does not (an unwritten output).
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) && std::isfinite(b[i])) return std::numeric_limits<double>::infinity();
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

// The worst error per label over a test case, printed when the case ends.
class Worst {
 public:
  explicit Worst(std::string op) : op_(std::move(op)) {}
  ~Worst() {
    for (auto& [label, e] : worst_)
      std::printf("[cuda] %-22s %-10s worst normalised error %.3g\n", op_.c_str(), label.c_str(), e);
  }
  void check(const std::string& label, double err, double tol) {
    double& w = worst_[label];
    w = std::max(w, err);
    INFO(op_ << " " << label << ": normalised error " << err << " (tolerance " << tol << ")");
    CHECK(err <= tol);
  }

 private:
  std::string op_;
  std::map<std::string, double> worst_;
};

// The GPU backend plus helpers to move host vectors in and out of its memory.
class Gpu {
 public:
  // The fast products (GEMV, cuBLAS) unless `invariant` (imma.cuh; test_cuda_invariance.cpp).
  explicit Gpu(bool invariant = false) : be_(make_cuda_backend(0)) { be_->set_batch_invariant(invariant); }
  Backend& be() { return *be_; }
  float* put(const std::vector<float>& h) {
    bufs_.push_back(std::make_unique<DeviceBuffer>(be_.get(), h.size() * 4 + 4));
    be_->upload(bufs_.back()->get(), h.data(), h.size() * 4);
    return bufs_.back()->f32();
  }
  float* poisoned(size_t n) { return put(std::vector<float>(n, kNaN)); }
  float* zeros(size_t n) { return put(std::vector<float>(n, 0.0f)); }
  void set(float* p, const std::vector<float>& h) { be_->upload(p, h.data(), h.size() * 4); }
  std::vector<float> get(const float* p, size_t n) {
    std::vector<float> h(n);
    be_->download(h.data(), p, n * 4);
    return h;
  }

 private:
  std::unique_ptr<Backend> be_;
  std::vector<std::unique_ptr<DeviceBuffer>> bufs_;
};

// Segments with the given lengths, consecutive in the batch, in distinct random slots of n_slots.
inline std::vector<Segment> make_segments(const std::vector<int>& lens, int n_slots, Rng& rng) {
  std::vector<int> slots(static_cast<size_t>(n_slots));
  for (int i = 0; i < n_slots; ++i) slots[size_t(i)] = i;
  std::shuffle(slots.begin(), slots.end(), rng.engine());
  std::vector<Segment> segs;
  int start = 0;
  for (size_t i = 0; i < lens.size(); ++i) {
    segs.push_back({slots[i], start, lens[i]});
    start += lens[i];
  }
  return segs;
}

inline int64_t total(const std::vector<Segment>& segs) {
  int64_t n = 0;
  for (auto& s : segs) n += s.len;
  return n;
}

inline const std::vector<std::vector<int>> kSegmentLayouts = {
    {1}, {7}, {1, 1, 1}, {3, 1, 200, 2, 17}, {64, 1}, {1, 33, 5, 1, 1, 9}};

}  // namespace rwkvpp::cuda_test
