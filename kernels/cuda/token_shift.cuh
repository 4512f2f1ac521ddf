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

}  // namespace rwkvpp::cuda
