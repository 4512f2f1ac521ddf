// RWKV-5/6 WKV recurrence for the CUDA backend (contract in kernels/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

// r, k, v, out: [n_tokens, H*N]; w: [H*N] or, with w_per_token, [n_tokens, H*N] (decay
// factors in (0, 1)); u: [H*N]. State per slot at state + slot * stride + off: S [H, N, N],
// key index i before value index j.
void wkv5(const float* r, const float* k, const float* v, const float* w, bool w_per_token,
          const float* u, const Segment* segs, int64_t n_segs, float* state, int64_t stride,
          int64_t off, float* out, int64_t n_head, int64_t head_size, cudaStream_t s);

}  // namespace rwkvpp::cuda
