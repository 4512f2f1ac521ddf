// The last stage's parallel host sampling (worker/host_sampler.h): every row gets exactly what
// sample_token gives it alone (tokens, log probabilities, penalty states), over the pool and on
// the calling thread, and an error in a row comes out of sample() after the other rows ran.
#include <cmath>
#include <limits>
#include <random>

#include "catch.h"
#include "common/error.h"
#include "worker/host_sampler.h"

using namespace rwkvpp;

namespace {

std::vector<float> random_rows(size_t rows, size_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> v(rows * vocab);
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace

TEST_CASE("host sampling over threads gives every row what sample_token gives it alone",
          "[sampling][worker]") {
  // A vocab large enough for the pool (kParallelMinVocab) with a row per thread, one row split
  // over the pool (fewer rows than threads / kRowsPerThreadMin), and a small vocab on one thread.
  for (auto [rows, vocab] : {std::pair<size_t, size_t>{24, 8193}, {1, 65536}, {3, 512}}) {
    const std::vector<float> logits = random_rows(rows, vocab, 7);
    std::vector<SamplingParams> params(rows);
    std::vector<PenaltyState> mine(rows), ref(rows);
    for (size_t r = 0; r < rows; ++r) {
      SamplingParams& p = params[r];
      p.temperature = r % 5 == 0 ? 0.0f : 0.5f + 0.1f * float(r % 7);
      p.top_p = r % 3 == 0 ? 0.9f : 1.0f;
      p.top_k = r % 4 == 1 ? 40 : 0;
      p.presence_penalty = r % 2 ? 0.3f : 0.0f;
      p.frequency_penalty = r % 2 ? 0.2f : 0.0f;
      p.seed = 100 + r;
      mine[r].counts[int32_t(r % vocab)] = 2.0f;  // earlier tokens, so penalties bite
      ref[r] = mine[r];
    }
    HostSampler sampler(4);  // a pool on any machine
    for (uint64_t position = 0; position < 3; ++position) {  // penalty states carry over
      std::vector<HostSampler::Row> batch;
      for (size_t r = 0; r < rows; ++r)
        batch.push_back({logits.data() + r * vocab, &params[r], &mine[r], position + r});
      sampler.sample(batch, int64_t(vocab));
      for (size_t r = 0; r < rows; ++r) {
        float lp = 0;
        const int32_t want = sample_token(logits.data() + r * vocab, int64_t(vocab), params[r],
                                          ref[r], position + r, &lp);
        CHECK(batch[r].token == want);
        CHECK(batch[r].logprob == lp);
        CHECK(mine[r].counts == ref[r].counts);
      }
    }
  }
}

TEST_CASE("a row that cannot be sampled fails the call once every row is done", "[worker]") {
  const size_t rows = 32, vocab = 8192;
  std::vector<float> logits = random_rows(rows, vocab, 3);
  for (size_t i = 0; i < vocab; ++i)
    logits[5 * vocab + i] = std::numeric_limits<float>::quiet_NaN();
  std::vector<SamplingParams> params(rows);
  for (int threads : {1, 3}) {
    std::vector<PenaltyState> st(rows);
    std::vector<HostSampler::Row> batch;
    for (size_t r = 0; r < rows; ++r) {
      params[r].temperature = 1.0f;
      batch.push_back({logits.data() + r * vocab, &params[r], &st[r], 0});
    }
    HostSampler sampler(threads);
    CHECK_THROWS_AS(sampler.sample(batch, int64_t(vocab)), Error);
    CHECK(batch[5].token == -1);
    CHECK(batch[4].token >= 0);
    CHECK(batch[31].token >= 0);
  }
}
