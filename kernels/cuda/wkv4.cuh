// RWKV-4 WKV recurrence for the CUDA backend (contract in kernels/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

// k, v, out: [n_tokens, d]; w = -exp(time_decay), u = time_first: [d]. State per slot at
// state + slot * stride + off_aa: aa [d], bb [d], pp [d].
// gate (nullable, [n_tokens, d]): out = gate * wkv, in the same kernel (Backend::wkv4_gated).
void wkv4(const float* k, const float* v, const float* w, const float* u, const Segment* segs,
          int64_t n_segs, float* state, int64_t stride, int64_t off_aa, float* out, int64_t d,
          cudaStream_t s, const float* gate = nullptr);

}  // namespace rwkvpp::cuda
