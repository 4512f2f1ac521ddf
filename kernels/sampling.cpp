// Host sampling: penalties, temperature, top_k / top_p / min_p and a counter-based draw
// (see sampling.h for the contract). Expected work is O(vocab) with no full sort: top_k uses
// nth_element, and top_p a quickselect that partitions by probability mass.
#include "kernels/sampling.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <cmath>
#include <limits>
#include <mutex>
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

// A candidate token: its logit after penalties, its unnormalised tempered probability, its id.
struct Cand {
  float z;
  float p;
  int32_t id;
};

// Higher logit first, then lower id: a strict total order, so every filter keeps a defined set.
bool better(const Cand& a, const Cand& b) { return a.z != b.z ? a.z > b.z : a.id < b.id; }

// Moves to the front the smallest set of best candidates (by `better`) whose mass reaches
// `need`, and returns its size (top_p's nucleus). A quickselect that partitions by mass, so the
// expected work is O(n) with no full sort; the set comes out unordered.
size_t top_mass_prefix(std::vector<Cand>& c, double need) {
  size_t lo = 0, hi = c.size();  // the answer is in (lo, hi]; [0, lo) is taken, with mass acc
  double acc = 0;
  while (hi - lo > 32) {
    // Median of three as the pivot, moved to lo.
    size_t mid = lo + (hi - lo) / 2;
    Cand a = c[lo], b = c[mid], d = c[hi - 1];
    size_t piv = better(a, b) ? (better(b, d) ? mid : better(a, d) ? hi - 1 : lo)
                              : (better(a, d) ? lo : better(b, d) ? hi - 1 : mid);
    std::swap(c[lo], c[piv]);
    const Cand pivot = c[lo];
    auto split = std::partition(c.begin() + ptrdiff_t(lo) + 1, c.begin() + ptrdiff_t(hi),
                                [&](const Cand& x) { return better(x, pivot); });
    size_t k = size_t(split - c.begin());  // [lo+1, k) beat the pivot
    double upper = 0;
    for (size_t i = lo + 1; i < k; ++i) upper += c[i].p;
    // Lay out [better ones][pivot][the rest].
    std::rotate(c.begin() + ptrdiff_t(lo), c.begin() + ptrdiff_t(lo) + 1, c.begin() + ptrdiff_t(k));
    if (acc + upper >= need) {
      hi = k - 1;  // the better ones alone reach it
      if (hi == lo) return lo;  // cannot happen for need > acc; kept for safety
    } else if (acc + upper + pivot.p >= need) {
      return k;  // ...with the pivot, exactly
    } else {
      acc += upper + pivot.p;
      lo = k;
    }
  }
  std::sort(c.begin() + ptrdiff_t(lo), c.begin() + ptrdiff_t(hi), better);
  for (size_t i = lo; i < hi; ++i) {
    acc += c[i].p;
    if (acc >= need) return i + 1;
  }
  return std::max<size_t>(hi, 1);
}

// Histogram pre-selection: an order-preserving 12-bit bucket of a logit (sign, exponent and
// three mantissa bits), so that every id in a higher bucket has a higher logit. The filters
// then only look at the ids in the buckets that can hold their answer.
constexpr int kBucketBits = 12;
uint32_t bucket(float z) {
  uint32_t b;
  std::memcpy(&b, &z, 4);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return b >> (32 - kBucketBits);
}

// The highest bucket such that buckets at or above it hold at least k ids.
uint32_t top_k_floor(const std::vector<float>& z, size_t k) {
  std::array<uint32_t, 1u << kBucketBits> hist{};
  for (float v : z) ++hist[bucket(v)];
  size_t cum = 0;
  for (uint32_t b = hist.size(); b-- > 0;) {
    cum += hist[b];
    if (cum >= k) return b;
  }
  return 0;
}

// A bucket low enough that the ids at or above it hold the top_p nucleus of mass `need`: the
// highest one whose upper mass passes need with a margin for rounding, then one more non-empty
// bucket below it for safety.
uint32_t top_p_floor(const std::vector<float>& z, const std::vector<float>& q, double need) {
  thread_local std::vector<double> hist;
  hist.assign(1u << kBucketBits, 0.0);
  for (size_t i = 0; i < z.size(); ++i) hist[bucket(z[i])] += q[i];
  const double target = need * (1 + 1e-6);
  double cum = 0;
  uint32_t b = uint32_t(hist.size());
  while (b-- > 0) {
    cum += hist[b];
    if (cum >= target) break;
  }
  if (b == UINT32_MAX) return 0;
  while (b > 0 && hist[--b] == 0) {
  }
  return b;
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

namespace {

// Steps 1-4 of sampling.h: penalised logits in z, and for temperature > 0 the candidates that
// survive the filters (in no particular, but deterministic, order). Scratch is per thread.
struct Prepared {
  std::vector<float>& z;     // [vocab] logits after penalties, NaN -> -inf
  std::vector<float>& q;     // [vocab] unnormalised tempered probabilities (temperature > 0)
  std::vector<Cand>& cand;   // kept candidates in increasing id order, when a filter is on
  bool filtered = false;     // false: every id is a candidate (draw over q in id order)
  size_t best = 0;           // argmax of z, lowest id among equals
  float m = 0;               // z[best]
  float inv_t = 0;           // 1 / temperature
  double total = 0;          // sum of the unnormalised tempered probabilities
};

// Runs part over [0, n): through `par` when given, else on this thread.
void for_ranges(const ParallelRanges* par, int64_t n,
                const std::function<void(int64_t, int64_t)>& part) {
  if (par)
    (*par)(n, part);
  else
    part(0, n);
}

Prepared prepare(const float* logits, int64_t vocab, const SamplingParams& p,
                 const PenaltyState& st, const ParallelRanges* par) {
  RWKVPP_CHECK(vocab > 0 && vocab <= std::numeric_limits<int32_t>::max(), "bad vocab size");
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  thread_local std::vector<float> z, q;
  thread_local std::vector<Cand> cand;
  Prepared r{z, q, cand};
  const size_t n = size_t(vocab);

  // 1. Logits after penalties; NaN counts as -inf.
  z.resize(n);
  float* zp = z.data();
  for_ranges(par, vocab, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) zp[i] = std::isnan(logits[i]) ? kNegInf : logits[i];
  });
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
  // Argmax, lowest id among equals; also the max for a stable softmax. Pieces merge by the same
  // rule, so any split gives the same id.
  size_t best = 0;
  float top = z[0];
  std::mutex merge;
  for_ranges(par, vocab, [&](int64_t b, int64_t e) {
    if (b >= e) return;
    size_t pb = size_t(b);
    float pt = zp[b];
    for (int64_t i = b + 1; i < e; ++i) {
      if (zp[i] > pt) {
        pt = zp[i];
        pb = size_t(i);
      }
    }
    std::lock_guard<std::mutex> lock(merge);
    if (pt > top || (pt == top && pb < best)) {
      top = pt;
      best = pb;
    }
  });
  r.best = best;
  r.m = top;
  if (!(r.m > kNegInf)) fail("sampling: every logit is NaN or -inf");
  cand.clear();
  if (p.temperature == 0.0f) return r;  // 2. greedy: nothing more to prepare

  // 3. Tempered softmax, unnormalised: prob = exp((z - m) / T), so the largest is 1.
  r.inv_t = 1.0f / p.temperature;
  const float m = r.m, inv_t = r.inv_t;
  q.resize(n);
  float* qp = q.data();
  for_ranges(par, vocab, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float d = zp[i] - m;  // d == 0 kept apart: 0 * inf is NaN for a tiny temperature
      qp[i] = d == 0 ? 1.0f : std::exp(d * inv_t);
    }
  });
  double sum[4] = {0, 0, 0, 0};  // four chains: faster, and still one fixed order
  size_t i4 = n & ~size_t(3);
  for (size_t i = 0; i < i4; i += 4) {
    sum[0] += q[i];
    sum[1] += q[i + 1];
    sum[2] += q[i + 2];
    sum[3] += q[i + 3];
  }
  for (size_t i = i4; i < n; ++i) sum[0] += q[i];
  r.total = (sum[0] + sum[1]) + (sum[2] + sum[3]);

  const float thr = p.min_p;  // min_p * max(prob), and max(prob) == 1
  const bool top_k = p.top_k > 0 && int64_t(p.top_k) < vocab;
  r.filtered = top_k || p.top_p < 1.0f || thr > 0;
  if (!r.filtered) return r;
  // Only ids in buckets >= floor can survive top_k / top_p; min_p filters here too (what it
  // drops lies past every top_p cut, and top_k's mass is taken before it).
  const uint32_t floor = top_k ? top_k_floor(z, size_t(p.top_k))
                         : p.top_p < 1.0f ? top_p_floor(z, q, double(p.top_p) * r.total)
                                          : 0;
  cand.resize(n);  // filled by index, then cut: cheaper than push_back in this hot loop
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    if (bucket(z[i]) < floor) continue;
    if (top_k || (q[i] > 0 && q[i] >= thr)) cand[count++] = {z[i], q[i], int32_t(i)};
  }
  cand.resize(count);

  // 4. Filters.
  double mass = r.total;  // the mass top_p is relative to
  if (top_k) {
    std::nth_element(cand.begin(), cand.begin() + (p.top_k - 1), cand.end(), better);
    cand.resize(size_t(p.top_k));
    mass = 0;
    for (const Cand& c : cand) mass += c.p;
    if (thr > 0)  // the best candidate (prob 1 > thr) always stays
      cand.erase(std::remove_if(cand.begin(), cand.end(), [&](const Cand& c) { return c.p < thr; }),
                 cand.end());
  }
  if (p.top_p < 1.0f) cand.resize(top_mass_prefix(cand, double(p.top_p) * mass));

  // Canonical order, increasing id, so that the draw does not depend on how the set was found.
  // The kept set is every id at least as good as its worst member that passes min_p.
  if (cand.size() <= 4096) {
    std::sort(cand.begin(), cand.end(), [](const Cand& a, const Cand& b) { return a.id < b.id; });
  } else if (top_k || p.top_p < 1.0f) {  // (min_p alone collected them in id order already)
    const Cand worst = *std::min_element(cand.begin(), cand.end(),
                                         [](const Cand& a, const Cand& b) { return better(b, a); });
    cand.resize(n);
    size_t count = 0;
    for (size_t i = 0; i < n; ++i) {
      Cand c{z[i], q[i], int32_t(i)};
      if (q[i] > 0 && q[i] >= thr && !better(worst, c)) cand[count++] = c;
    }
    cand.resize(count);
  }
  return r;
}

}  // namespace

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p,
                     PenaltyState& st, uint64_t position, float* logprob,
                     const ParallelRanges* par) {
  Prepared r = prepare(logits, vocab, p, st, par);
  if (p.temperature == 0.0f) {  // greedy; the logprob at temperature 1
    if (logprob) *logprob = float(double(r.m) - log_sum_exp(r.z.data(), vocab, r.m));
    update_penalties(st, p, int32_t(r.best));
    return int32_t(r.best);
  }
  // 5. The draw: walk the candidates until the running mass passes u * (their mass).
  const double u = sampling_uniform(p.seed, position);
  int32_t chosen = -1;
  double acc = 0;
  if (r.filtered) {
    double kept = 0;
    for (const Cand& c : r.cand) kept += c.p;
    const double target = u * kept;
    for (const Cand& c : r.cand) {
      if (!(c.p > 0)) continue;
      chosen = c.id;  // rounding can leave acc <= target at the end: the last positive one wins
      acc += c.p;
      if (acc > target) break;
    }
  } else {
    const double target = u * r.total;
    for (size_t i = 0; i < r.q.size(); ++i) {
      if (!(r.q[i] > 0)) continue;
      chosen = int32_t(i);
      acc += r.q[i];
      if (acc > target) break;
    }
  }
  if (chosen < 0) chosen = int32_t(r.best);
  if (logprob) {
    const float d = r.z[size_t(chosen)] - r.m;
    *logprob = float((d == 0 ? 0.0 : double(d) * double(r.inv_t)) - std::log(r.total));
  }
  update_penalties(st, p, chosen);
  return chosen;
}

std::vector<int32_t> sampling_candidates(const float* logits, int64_t vocab,
                                         const SamplingParams& p, const PenaltyState& st) {
  Prepared r = prepare(logits, vocab, p, st, nullptr);
  std::vector<int32_t> ids;
  if (p.temperature == 0.0f) {
    ids.push_back(int32_t(r.best));
  } else if (r.filtered) {
    for (const Cand& c : r.cand)
      if (c.p > 0) ids.push_back(c.id);
  } else {
    for (size_t i = 0; i < r.q.size(); ++i)
      if (r.q[i] > 0) ids.push_back(int32_t(i));
  }
  return ids;
}

}  // namespace rwkvpp
