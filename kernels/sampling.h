// Sampling one token from a row of logits, on the host.
//
// Order of operations in sample_token():
//   1. penalties for the ids already generated (PenaltyState::counts, count > 0):
//        repetition (Hugging Face): logit > 0 ? logit / repetition_penalty
//                                             : logit * repetition_penalty
//        presence/frequency (ChatRWKV): logit -= presence_penalty + count * frequency_penalty
//   2. temperature == 0: greedy argmax (lowest id among equal maxima); done.
//   3. z = logit / temperature, p = softmax(z) over the whole vocabulary;
//   4. filters, in Hugging Face's order: top_k keeps the k most probable; top_p keeps the
//      smallest most-probable prefix of those whose mass (renormalised over the top_k survivors)
//      reaches top_p; min_p keeps ids with p >= min_p * max(p). Ties are broken by lower id, so
//      the kept set is always well defined;
//   5. one draw from the kept ids in proportion to p: with u = sampling_uniform(seed, position),
//      a counter-based RNG, the first kept id (in increasing id order) at which the running sum
//      of p exceeds u times the kept mass. The same request gives the same tokens however it
//      was batched, partitioned, or spread over ranks.
// Cost for vocab 65536: O(vocab) (one exp per id) with no full sort; top_k and top_p first
// narrow the ids with a histogram of the logits, then select (nth_element / a quickselect on
// probability mass) among the few that remain.
// Afterwards the penalty state decays and counts the chosen id (ChatRWKV's occurrence rule):
//   counts[i] *= penalty_decay for all i; counts[chosen] += 1.
//
// Thread-safety: sample_token may run on several threads at once (each with its own
// PenaltyState); it keeps a per-thread scratch buffer.
#pragma once

#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

#include "common/sampling_params.h"  // SamplingParams, validate()

namespace rwkvpp {

// Occurrence counts of the tokens a sequence has generated (decayed), one per sequence.
struct PenaltyState {
  std::unordered_map<int32_t, float> counts;
};

// Samples one id from logits[vocab] (fp32, not modified), as described above. `position` is the
// index of the token being generated within its request. When logprob is non-null it receives
// the log-softmax of the chosen id after penalties and temperature, over the whole vocabulary
// (before top_k/top_p/min_p; at temperature 1 for greedy). Throws Error when every logit is NaN
// or -inf. Ids in `st` must be < vocab.
//
// `par` (may be null): runs part(begin, end) over pieces that cover [0, n), possibly on several
// threads, and returns when all are done. sample_token then spreads its passes over the
// vocabulary that are elementwise or an argmax (NaN -> -inf, the max, the exps) over it; the
// sum and the draw stay in one order, so the result is the same bit for bit with or without it
// (the last stage uses it for steps of few rows: worker/host_sampler.h).
using ParallelRanges =
    std::function<void(int64_t n, const std::function<void(int64_t begin, int64_t end)>& part)>;
int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p,
                     PenaltyState& st, uint64_t position, float* logprob = nullptr,
                     const ParallelRanges* par = nullptr);

// The ids sample_token could return for these logits, parameters and state (those that survive
// the filters with a non-zero probability), in increasing order; {argmax} for greedy. For tests
// and debugging.
std::vector<int32_t> sampling_candidates(const float* logits, int64_t vocab,
                                         const SamplingParams& p, const PenaltyState& st);

// The uniform number in [0, 1) that sample_token draws for (seed, position).
double sampling_uniform(uint64_t seed, uint64_t position);

}  // namespace rwkvpp
