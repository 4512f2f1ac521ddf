// RWKV-4 WKV recurrence for the CUDA backend (contract in kernels/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

// k, v, out: [n_tokens, d]; w = -exp(time_decay), u = time_first: [d]. State per slot at
// state + slot * stride + off_aa: aa [d], bb [d], pp [d].
// gate (nullable, [n_tokens, d]): out = gate * wkv, in the same kernel (Backend::wkv4_gated).
// One token of one channel, the stable form of wkv4.cu's header: returns wkv and advances
// (aa, bb, pp). w = -exp(time_decay), u = time_first of the channel.
__device__ __forceinline__ float wkv4_step(float k, float v, float w, float u, float& aa, float& bb,
                                           float& pp) {
  float ww = u + k;
  float p = fmaxf(pp, ww);
  float e1 = expf(pp - p), e2 = expf(ww - p);
  const float o = (e1 * aa + e2 * v) / (e1 * bb + e2);
  ww = pp + w;
  p = fmaxf(ww, k);
  e1 = expf(ww - p);
  e2 = expf(k - p);
  aa = e1 * aa + e2 * v;
  bb = e1 * bb + e2;
  pp = p;
  return o;
}

void wkv4(const float* k, const float* v, const float* w, const float* u, const Segment* segs,
          int64_t n_segs, float* state, int64_t stride, int64_t off_aa, float* out, int64_t d,
          cudaStream_t s, const float* gate = nullptr);

}  // namespace rwkvpp::cuda
