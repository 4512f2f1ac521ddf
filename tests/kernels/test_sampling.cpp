// Host sampling: greedy, determinism by (seed, position), the filters, the sampled
// distribution, the penalty formulas, and validate().
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "catch.h"
#include "common/error.h"
#include "kernels/sampling.h"

using namespace rwkvpp;

namespace {

std::vector<float> random_logits(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

int32_t argmax(const std::vector<float>& v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

int32_t draw(const std::vector<float>& logits, const SamplingParams& p, uint64_t pos,
             float* logprob = nullptr) {
  PenaltyState st;
  return sample_token(logits.data(), int64_t(logits.size()), p, st, pos, logprob);
}

// Frequencies of 20000 draws at positions 0..19999.
std::vector<double> frequencies(const std::vector<float>& logits, const SamplingParams& p) {
  const int n = 20000;
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) f[size_t(draw(logits, p, uint64_t(i)))] += 1.0 / n;
  return f;
}

// Statistical tolerance for a frequency over n = 20000 independent draws: its standard
// deviation is sqrt(p(1-p)/n) <= 0.5/sqrt(20000) = 0.0035, so 0.02 is more than 5.6 sigma and a
// correct sampler fails a check with probability below 1e-7 (and the draws are deterministic,
// so a pass stays a pass).
constexpr double kTol = 0.02;

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

std::string error_of(const SamplingParams& p) {
  try {
    validate(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("greedy picks the argmax and reports its log-softmax", "[sampling]") {
  auto logits = random_logits(65536, 1);
  float lp = 0;
  SamplingParams p;  // temperature 0
  int32_t id = draw(logits, p, 0, &lp);
  CHECK(id == argmax(logits));
  double s = 0;
  for (float x : logits) s += std::exp(double(x) - logits[size_t(id)]);
  CHECK(lp == Approx(-std::log(s)).margin(1e-5));
  // Lowest id among equal maxima.
  std::vector<float> tie{1.0f, 5.0f, 2.0f, 5.0f};
  CHECK(draw(tie, p, 0) == 1);
  std::vector<float> nan{NAN, 1.0f, NAN};
  CHECK(draw(nan, p, 0) == 1);
}

TEST_CASE("a draw depends only on (seed, position), not on call order", "[sampling]") {
  auto logits = random_logits(65536, 2);
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.95f;
  p.seed = 1234;
  std::vector<int32_t> forward, backward(100);
  for (uint64_t pos = 0; pos < 100; ++pos) forward.push_back(draw(logits, p, pos));
  for (uint64_t pos = 100; pos-- > 0;) backward[pos] = draw(logits, p, pos);
  CHECK(forward == backward);
  // Different positions and seeds give different draws.
  CHECK(std::set<int32_t>(forward.begin(), forward.end()).size() > 10);
  p.seed = 99;
  std::vector<int32_t> other;
  for (uint64_t pos = 0; pos < 100; ++pos) other.push_back(draw(logits, p, pos));
  CHECK(other != forward);
}

TEST_CASE("top_k = 1 and a tiny top_p are greedy", "[sampling]") {
  for (uint32_t seed = 0; seed < 5; ++seed) {
    auto logits = random_logits(65536, 10 + seed);
    SamplingParams p;
    p.temperature = 1.3f;
    p.top_k = 1;
    CHECK(draw(logits, p, seed) == argmax(logits));
    p.top_k = 0;
    p.top_p = 1e-6f;
    CHECK(draw(logits, p, seed) == argmax(logits));
    p.top_k = 50;  // both filters at once
    CHECK(draw(logits, p, seed) == argmax(logits));
    p.top_p = 1.0f;
    p.min_p = 0.999f;
    CHECK(draw(logits, p, seed) == argmax(logits));
  }
}

TEST_CASE("draws follow the softmax, and the filters keep the right ids", "[sampling]") {
  const std::vector<double> probs{0.1, 0.2, 0.3, 0.4};
  std::vector<float> logits;
  for (double q : probs) logits.push_back(float(std::log(q)) + 7.0f);  // shift-invariant
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  auto check_freq = [&](const std::vector<double>& want) {
    auto f = frequencies(logits, p);
    for (size_t i = 0; i < want.size(); ++i) {
      INFO("id " << i << " freq " << f[i] << " want " << want[i]);
      CHECK(std::abs(f[i] - want[i]) < kTol);
    }
  };
  check_freq(probs);
  p.temperature = 0.5f;  // p^2, renormalised
  check_freq({0.01 / 0.30, 0.04 / 0.30, 0.09 / 0.30, 0.16 / 0.30});
  p.temperature = 1.0f;
  p.top_k = 2;  // {3, 2}
  check_freq({0, 0, 3.0 / 7, 4.0 / 7});
  p.top_k = 0;
  p.top_p = 0.5f;  // 0.4 < 0.5, 0.4 + 0.3 >= 0.5: {3, 2}
  check_freq({0, 0, 3.0 / 7, 4.0 / 7});
  p.top_p = 0.75f;  // 0.4 + 0.3 < 0.75: {3, 2, 1}
  check_freq({0, 2.0 / 9, 3.0 / 9, 4.0 / 9});
  p.top_p = 1.0f;
  p.min_p = 0.6f;  // p >= 0.24: {3, 2}
  check_freq({0, 0, 3.0 / 7, 4.0 / 7});
  p.min_p = 0.0f;
  p.top_k = 3;  // top_p over the top-3 mass 0.9: 0.5 * 0.9 = 0.45 -> {3, 2}
  p.top_p = 0.5f;
  check_freq({0, 0, 3.0 / 7, 4.0 / 7});
}

// The kept set by definition: sort everything, cut prefixes (top_k, then top_p over the top_k
// mass, and min_p), drop zero probabilities.
std::vector<int32_t> reference_candidates(const std::vector<float>& z, const SamplingParams& p) {
  const float m = *std::max_element(z.begin(), z.end()), inv_t = 1.0f / p.temperature;
  std::vector<int32_t> order(z.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return z[size_t(a)] != z[size_t(b)] ? z[size_t(a)] > z[size_t(b)] : a < b;
  });
  auto q = [&](int32_t i) {
    float d = z[size_t(i)] - m;
    return d == 0 ? 1.0f : std::exp(d * inv_t);
  };
  size_t len = p.top_k > 0 ? std::min(order.size(), size_t(p.top_k)) : order.size();
  double mass = 0;
  for (size_t i = 0; i < len; ++i) mass += q(order[i]);
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t keep = 0;
    while (keep < len && cum < double(p.top_p) * mass) cum += q(order[keep++]);
    len = keep;
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i < len; ++i)
    if (q(order[i]) > 0 && q(order[i]) >= p.min_p) ids.push_back(order[i]);
  std::sort(ids.begin(), ids.end());
  return ids;
}

TEST_CASE("the kept set equals the one a full sort defines", "[sampling]") {
  PenaltyState none;
  for (float scale : {0.3f, 1.0f, 3.0f}) {
    auto logits = random_logits(65536, 77);
    for (float& x : logits) x *= scale;
    logits[5] = logits[6] = logits[7];  // ties are broken by id
    for (int top_k : {0, 1, 7, 1000}) {
      for (float top_p : {1.0f, 0.999f, 0.9f, 0.5f, 0.01f}) {
        for (float min_p : {0.0f, 0.05f}) {
          SamplingParams p;
          p.temperature = 0.8f;
          p.top_k = top_k;
          p.top_p = top_p;
          p.min_p = min_p;
          INFO("scale " << scale << " top_k " << top_k << " top_p " << top_p << " min_p " << min_p);
          auto got = sampling_candidates(logits.data(), int64_t(logits.size()), p, none);
          CHECK(got == reference_candidates(logits, p));
        }
      }
    }
  }
}

TEST_CASE("a sampled token's logprob is its tempered log-softmax", "[sampling]") {
  auto logits = random_logits(1000, 3);
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 20;
  p.seed = 5;
  float lp = 0;
  int32_t id = draw(logits, p, 17, &lp);
  double m = *std::max_element(logits.begin(), logits.end()) / 0.7, s = 0;
  for (float x : logits) s += std::exp(x / 0.7 - m);
  CHECK(lp == Approx(logits[size_t(id)] / 0.7 - m - std::log(s)).margin(1e-4));
}

TEST_CASE("penalties change the logits as the formulas say", "[sampling]") {
  std::vector<float> logits{2.0f, -2.0f, 1.0f, 0.5f};
  SamplingParams p;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  p.repetition_penalty = 2.0f;
  PenaltyState st;
  st.counts = {{0, 2.0f}, {1, 1.0f}};
  // id 0: 2 / 2 - (0.5 + 2 * 0.25) = 0;  id 1: -2 * 2 - (0.5 + 0.25) = -4.75.
  const std::vector<double> want{0.0, -4.75, 1.0, 0.5};
  double lse = 0;
  for (double z : want) lse += std::exp(z);
  lse = std::log(lse);
  float lp = 0;
  CHECK(sample_token(logits.data(), 4, p, st, 0, &lp) == 2);  // greedy after penalties
  CHECK(lp == Approx(1.0 - lse).margin(1e-5));
  // The state decays and counts the choice (ChatRWKV's rule).
  CHECK(st.counts.at(0) == Approx(2.0 * 0.996));
  CHECK(st.counts.at(1) == Approx(0.996));
  CHECK(st.counts.at(2) == Approx(1.0));
  // Sampling with temperature 1 sees the same penalised logits.
  p.temperature = 1.0f;
  st.counts = {{0, 2.0f}, {1, 1.0f}};
  int32_t id = sample_token(logits.data(), 4, p, st, 3, &lp);
  CHECK(lp == Approx(want[size_t(id)] - lse).margin(1e-5));
  // Without penalties the logits are untouched, whatever the state holds.
  SamplingParams plain;
  PenaltyState st2;
  st2.counts = {{0, 5.0f}};
  CHECK(sample_token(logits.data(), 4, plain, st2, 0) == 0);
}

TEST_CASE("validate names the bad field", "[sampling]") {
  CHECK(error_of(SamplingParams{}).empty());
  auto bad = [](auto set) {
    SamplingParams p;
    set(p);
    return error_of(p);
  };
  CHECK(has(bad([](SamplingParams& p) { p.temperature = -0.1f; }), "temperature"));
  CHECK(has(bad([](SamplingParams& p) { p.temperature = NAN; }), "temperature"));
  CHECK(has(bad([](SamplingParams& p) { p.top_k = -1; }), "top_k"));
  CHECK(has(bad([](SamplingParams& p) { p.top_p = 0.0f; }), "top_p"));
  CHECK(has(bad([](SamplingParams& p) { p.top_p = 1.5f; }), "top_p"));
  CHECK(has(bad([](SamplingParams& p) { p.min_p = 1.0f; }), "min_p"));
  CHECK(has(bad([](SamplingParams& p) { p.min_p = -0.5f; }), "min_p"));
  CHECK(has(bad([](SamplingParams& p) { p.repetition_penalty = 0.0f; }), "repetition_penalty"));
  CHECK(has(bad([](SamplingParams& p) { p.presence_penalty = INFINITY; }), "presence_penalty"));
  CHECK(has(bad([](SamplingParams& p) { p.frequency_penalty = NAN; }), "frequency_penalty"));
  CHECK(has(bad([](SamplingParams& p) { p.penalty_decay = 1.5f; }), "penalty_decay"));
  std::vector<float> all_bad{-INFINITY, NAN};
  PenaltyState st;
  CHECK_THROWS_AS(sample_token(all_bad.data(), 2, SamplingParams{}, st, 0), Error);
}

TEST_CASE("a row's passes split into pieces give the same token and logprob bit for bit",
          "[sampling]") {
  // Pieces of uneven sizes, run out of order, one empty: the result must not depend on them.
  const ParallelRanges pieces = [](int64_t n, const std::function<void(int64_t, int64_t)>& part) {
    const int64_t cut[] = {0, n / 7, n / 7, n / 2 + 3, n - 1, n};
    for (int k = 4; k >= 0; --k) part(std::min(cut[k], n), std::min(cut[k + 1], n));
  };
  std::vector<float> logits = random_logits(5003, 11);
  logits[17] = NAN;
  for (int variant = 0; variant < 6; ++variant) {
    SamplingParams p;
    p.temperature = variant == 0 ? 0.0f : 0.7f + 0.2f * float(variant);
    p.top_p = variant == 2 ? 0.8f : 1.0f;
    p.top_k = variant == 3 ? 50 : 0;
    p.min_p = variant == 4 ? 0.05f : 0.0f;
    p.presence_penalty = variant == 5 ? 0.5f : 0.0f;
    p.seed = 3;
    PenaltyState a, b;
    a.counts[900] = b.counts[900] = 1.0f;
    for (uint64_t pos = 0; pos < 40; ++pos) {
      float la = 0, lb = 0;
      const int32_t ta = sample_token(logits.data(), int64_t(logits.size()), p, a, pos, &la);
      const int32_t tb =
          sample_token(logits.data(), int64_t(logits.size()), p, b, pos, &lb, &pieces);
      CHECK(ta == tb);
      CHECK(la == lb);
    }
    CHECK(a.counts == b.counts);
  }
  // Greedy with a tie for the max in different pieces: the lower id, however the pieces fall.
  logits[4000] = logits[900] = 50.0f;
  SamplingParams greedy;
  PenaltyState st;
  CHECK(sample_token(logits.data(), int64_t(logits.size()), greedy, st, 0, nullptr, &pieces) ==
        900);
}
