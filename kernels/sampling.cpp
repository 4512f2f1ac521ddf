// Host sampling: penalties, temperature, top_k / top_p / min_p and a counter-based draw
// (see sampling.h for the contract). Work is O(vocab) plus a sort of the kept candidates only:
// top_k uses nth_element, and top_p without top_k sorts a growing prefix with partial_sort
// until it holds the requested mass, so a peaked distribution never sorts the whole vocabulary.
#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/error.h"

namespace rwkvpp {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Log-sum-exp of z[0..n) (finite max m given).
double log_sum_exp(const float* z, int64_t n, float m) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(double(z[i]) - double(m));
  return double(m) + std::log(s);
}

void update_penalties(PenaltyState& st, const SamplingParams& p, int32_t chosen) {
  for (auto& [id, c] : st.counts) c *= p.penalty_decay;
  st.counts[chosen] += 1.0f;
}

}  // namespace

double sampling_uniform(uint64_t seed, uint64_t position) {
  uint64_t h = splitmix64(splitmix64(seed) ^ position);
  return double(h >> 11) * 0x1.0p-53;
}

void validate(const SamplingParams& p) {
  if (!(std::isfinite(p.temperature) && p.temperature >= 0))
    fail("sampling: temperature must be >= 0 (got {})", p.temperature);
  if (p.top_k < 0) fail("sampling: top_k must be >= 0 (got {})", p.top_k);
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("sampling: top_p must be in (0, 1] (got {})", p.top_p);
  if (!(p.min_p >= 0 && p.min_p < 1)) fail("sampling: min_p must be in [0, 1) (got {})", p.min_p);
  if (!std::isfinite(p.presence_penalty))
    fail("sampling: presence_penalty must be finite (got {})", p.presence_penalty);
  if (!std::isfinite(p.frequency_penalty))
    fail("sampling: frequency_penalty must be finite (got {})", p.frequency_penalty);
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0))
    fail("sampling: repetition_penalty must be > 0 (got {})", p.repetition_penalty);
  if (!(p.penalty_decay >= 0 && p.penalty_decay <= 1))
    fail("sampling: penalty_decay must be in [0, 1] (got {})", p.penalty_decay);
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p,
                     PenaltyState& st, uint64_t position, float* logprob) {
  RWKVPP_CHECK(vocab > 0 && vocab <= std::numeric_limits<int32_t>::max(), "bad vocab size");
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  thread_local std::vector<float> z, prob;
  thread_local std::vector<int32_t> cand;
  const size_t n = size_t(vocab);

  // 1. Logits after penalties; NaN counts as -inf.
  z.assign(logits, logits + n);
  for (float& v : z)
    if (std::isnan(v)) v = kNegInf;
  const bool rep = p.repetition_penalty != 1.0f;
  const bool pf = p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
  if (rep || pf) {
    for (const auto& [id, c] : st.counts) {
      if (!(c > 0)) continue;
      RWKVPP_CHECK(id >= 0 && id < vocab, "penalty state holds an id outside the vocabulary");
      float& v = z[size_t(id)];
      if (rep) v = v > 0 ? v / p.repetition_penalty : v * p.repetition_penalty;
      if (pf) v -= p.presence_penalty + c * p.frequency_penalty;
    }
  }
  // Argmax, lowest id among equals; also the max for a stable softmax.
  size_t best = 0;
  for (size_t i = 1; i < n; ++i)
    if (z[i] > z[best]) best = i;
  const float m = z[best];
  if (!(m > kNegInf)) fail("sampling: every logit is NaN or -inf");

  // 2. Greedy.
  if (p.temperature == 0.0f) {
    if (logprob) *logprob = float(double(m) - log_sum_exp(z.data(), vocab, m));
    update_penalties(st, p, int32_t(best));
    return int32_t(best);
  }

  // 3. Tempered softmax, unnormalised: prob[i] = exp((z[i] - m) / T), so max(prob) == 1.
  const float inv_t = 1.0f / p.temperature;
  prob.resize(n);
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    const float d = z[i] - m;  // d == 0 kept apart: 0 * inf is NaN for a tiny temperature
    prob[i] = d == 0 ? 1.0f : std::exp(d * inv_t);
    total += prob[i];
  }
  // Higher z first, then lower id: a strict total order, so every filter keeps a defined set.
  auto better = [&](int32_t a, int32_t b) {
    return z[size_t(a)] != z[size_t(b)] ? z[size_t(a)] > z[size_t(b)] : a < b;
  };

  // 4. Filters. Candidates are kept either sorted by `better` or in id order.
  const float thr = p.min_p;  // min_p * max(prob), and max(prob) == 1
  const bool top_k = p.top_k > 0 && int64_t(p.top_k) < vocab;
  double mass = total;  // the mass top_p is relative to
  bool sorted = false;
  cand.clear();
  if (top_k) {
    cand.resize(n);
    for (size_t i = 0; i < n; ++i) cand[i] = int32_t(i);
    auto kth = cand.begin() + p.top_k;
    std::nth_element(cand.begin(), kth - 1, cand.end(), better);
    cand.resize(size_t(p.top_k));
    std::sort(cand.begin(), cand.end(), better);
    mass = 0;
    for (int32_t id : cand) mass += prob[size_t(id)];
    sorted = true;
    if (thr > 0) {  // a sorted prefix survives min_p
      size_t keep = 0;
      while (keep < cand.size() && prob[size_t(cand[keep])] >= thr) ++keep;
      cand.resize(std::max<size_t>(keep, 1));
    }
  } else {
    // min_p first: what it drops lies past every top_p cut, so the result is the same.
    for (size_t i = 0; i < n; ++i)
      if (prob[i] > 0 && prob[i] >= thr) cand.push_back(int32_t(i));
    if (cand.empty()) cand.push_back(int32_t(best));
  }
  if (p.top_p < 1.0f) {
    const double need = double(p.top_p) * mass;
    if (!sorted) {  // sort a growing prefix until it holds `need`
      size_t want = std::min<size_t>(cand.size(), 256);
      for (;;) {
        std::partial_sort(cand.begin(), cand.begin() + ptrdiff_t(want), cand.end(), better);
        double cum = 0;
        for (size_t i = 0; i < want; ++i) cum += prob[size_t(cand[i])];
        if (cum >= need || want == cand.size()) break;
        want = std::min(cand.size(), want * 8);
      }
    }
    double cum = 0;
    size_t keep = 0;
    while (keep < cand.size() && cum < need) cum += prob[size_t(cand[keep++])];
    cand.resize(std::max<size_t>(keep, 1));
  }

  // 5. The draw.
  double kept = 0;
  for (int32_t id : cand) kept += prob[size_t(id)];
  const double target = sampling_uniform(p.seed, position) * kept;
  int32_t chosen = -1;
  double acc = 0;
  for (int32_t id : cand) {
    if (!(prob[size_t(id)] > 0)) continue;
    chosen = id;  // rounding can leave acc <= target at the end: the last positive one wins
    acc += prob[size_t(id)];
    if (acc > target) break;
  }
  if (chosen < 0) chosen = int32_t(best);
  if (logprob) {
    const float d = z[size_t(chosen)] - m;
    *logprob = float((d == 0 ? 0.0 : double(d) * double(inv_t)) - std::log(total));
  }
  update_penalties(st, p, chosen);
  return chosen;
}

}  // namespace rwkvpp
