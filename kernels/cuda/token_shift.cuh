// Token shift over a batch of segments for the CUDA backend (contract in kernels/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

// For each segment s (device table `segs`, n_segs entries, longest max_len) and token t of it:
//   prev[t] = (t == s.start) ? state[s.slot * stride + off ..+d] : x[t - 1];
//   state[s.slot * stride + off ..+d] = x[s.start + s.len - 1].
void token_shift(const float* x, int64_t d, const Segment* segs, int64_t n_segs, int32_t max_len,
                 float* state, int64_t stride, int64_t off, float* prev, cudaStream_t s);

// Decode steps only (every segment one token, n_segs tokens in all): layer norm of each row
// of x (eps, w, b), token shift of the normalised row through the state, and nmix (1..6) mixes
//   out[j][row] = xln * mu[j] + prev * (1 - mu[j])
// in one kernel, one block per token or column slice of one (Backend::norm_shift_mix). out[j]
// must not alias x.
struct MixOut {
  const float* mu[6];
  float* out[6];
};
void norm_shift_mix_decode(const float* x, const float* w, const float* b, float eps, int64_t d,
                           const Segment* segs, int64_t n_segs, float* state, int64_t stride,
                           int64_t off, const MixOut& mix, int nmix, cudaStream_t s);

}  // namespace rwkvpp::cuda
