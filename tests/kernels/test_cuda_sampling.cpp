// Greedy sampling on the device (Backend::argmax_rows) against the host sampler: the ids must
// equal sample_token's greedy choice (lowest id among equal maxima, NaN ignored) and the
// logprobs its log-softmax at temperature 1. The default implementation (download + host
// reduction) runs on the CPU backend ([kernels]); the CUDA kernel runs where a GPU is ([cuda]).
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "catch.h"
#include "common/error.h"
#include "cuda_skip.h"
#include "kernels/backend.h"
#include "kernels/sampling.h"

using namespace rwkvpp;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// m rows of `vocab` logits with the hard cases mixed in: repeated maxima (ties must go to the
// lowest id), NaN (at id 0 too), -inf, and a row that is all NaN / -inf when `dead_row` >= 0.
std::vector<float> make_logits(int64_t m, int64_t vocab, uint64_t seed, int64_t dead_row) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> z(static_cast<size_t>(m * vocab));
  for (float& v : z) v = d(g);
  for (int64_t r = 0; r < m; ++r) {
    float* row = z.data() + r * vocab;
    std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
    if (r % 3 == 0) {  // a tie between several ids at the maximum
      const float top = 20.0f + float(r % 5);
      for (int k = 0; k < 4; ++k) row[pick(g)] = top;
    }
    if (r % 4 == 1) row[0] = kNaN;
    if (r % 5 == 2) row[pick(g)] = kNaN;
    if (r % 7 == 3) row[pick(g)] = -kInf;
    if (r % 6 == 5) row[vocab - 1] = 1e4f;  // the maximum at the last id
    if (r == dead_row)
      for (int64_t i = 0; i < vocab; ++i) row[i] = i % 2 ? kNaN : -kInf;
  }
  return z;
}

// Runs argmax_rows on `be` for host logits z [m, vocab] and checks every row against
// sample_token; `exact` asks for bit-identical logprobs (else within one float ulp: the device
// sums the same double terms in another order).
void check_rows(Backend& be, const std::vector<float>& z, int64_t m, int64_t vocab, bool exact) {
  DeviceBuffer buf(&be, z.size() * 4);
  be.upload(buf.get(), z.data(), z.size() * 4);
  std::vector<int32_t> ids(static_cast<size_t>(m), -7);
  std::vector<float> lps(static_cast<size_t>(m), kNaN);
  be.argmax_rows(buf.f32(), m, vocab, ids.data(), lps.data());
  std::vector<int32_t> ids_only(static_cast<size_t>(m), -7);
  be.argmax_rows(buf.f32(), m, vocab, ids_only.data(), nullptr);
  SamplingParams greedy;  // temperature 0, no penalties
  for (int64_t r = 0; r < m; ++r) {
    INFO("row " << r << " of " << m << ", vocab " << vocab);
    const float* row = z.data() + r * vocab;
    bool any = false;
    for (int64_t i = 0; i < vocab; ++i) any = any || row[i] > -kInf;
    CHECK(ids_only[size_t(r)] == ids[size_t(r)]);
    if (!any) {
      CHECK(ids[size_t(r)] == -1);
      PenaltyState st;
      CHECK_THROWS_AS(sample_token(row, vocab, greedy, st, 0), Error);
      continue;
    }
    PenaltyState st;
    float lp = 0;
    const int32_t want = sample_token(row, vocab, greedy, st, 0, &lp);
    CHECK(ids[size_t(r)] == want);
    if (exact) {
      CHECK(lps[size_t(r)] == lp);
    } else {
      const float got = lps[size_t(r)];
      CHECK((got == lp || got == std::nextafter(lp, kInf) || got == std::nextafter(lp, -kInf)));
    }
  }
}

}  // namespace

TEST_CASE("argmax_rows default (download + host argmax) equals sample_token's greedy choice",
          "[kernels]") {
  auto be = make_cpu_backend(1);
  for (int64_t vocab : {1, 7, 1000, 65536}) {
    for (int64_t m : {1, 3, 17}) {
      auto z = make_logits(m, vocab, uint64_t(vocab * 31 + m), m > 1 ? 1 : -1);
      check_rows(*be, z, m, vocab, true);
    }
  }
}

TEST_CASE("CUDA argmax_rows equals sample_token's greedy choice and logprob", "[cuda]") {
  RWKVPP_REQUIRE_CUDA();
  auto be = make_cuda_backend(0);
  // Up to 16 rows each row is split over blocks of 2048 values (2049: a last block of one).
  for (int64_t vocab : {1, 7, 1000, 1025, 2049, 4097, 50277, 65536}) {
    for (int64_t m : {1, 3, 16, 257}) {
      auto z = make_logits(m, vocab, uint64_t(vocab * 131 + m), m > 1 ? 2 : -1);
      check_rows(*be, z, m, vocab, false);
    }
  }
}
