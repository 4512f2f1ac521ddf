// RWKV-4's time-mix products and WKV in one launch for one decoding token
// (Backend::kvr_wkv4, kernels/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

// One token, the only segment of device table `seg`, whose state starts at st = state +
// seg->slot * stride + off_aa (aa, bb, pp: st[0, d), st[d, 2d), st[2d, 3d)):
//   k = W[0] x[0], v = W[1] x[1], r = sigmoid(W[2] x[2]) (W [d, d], one dtype: fp32, fp16 or
//   bf16), out[c] = r[c] * wkv4_step(k[c], v[c], w[c], u[c], state of c).
// Each channel's WKV runs in the warp that finished its three dot products, so k, v and r never
// go through memory and one launch replaces two. Returns false (and launches nothing) where it
// is not the faster form: int8, or rows enough that the GEMV keeps one warp per row (see
// kvr_wkv4.cu), or shapes the vector GEMV does not take (d not a multiple of the 16-byte pack,
// unaligned W or x, mixed dtypes or shapes). RWKVPP_KVR_FUSED=0 turns it off (measurements).
bool kvr_wkv4_one(const WeightView* const (&W)[3], const float* const (&x)[3], const float* w,
                  const float* u, const Segment* seg, float* state, int64_t stride,
                  int64_t off_aa, float* out, int64_t d, cudaStream_t s);

}  // namespace rwkvpp::cuda
