// RWKV-7 WKV recurrence (generalised delta rule) for the CUDA backend (contract in
// kernels/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

// r, w, k, v, a, b, out: [n_tokens, H*N]; w is the decay factor in (0, 1). State per slot at
// state + slot * stride + off: S [H, N, N], value row j before key column i.
void wkv7(const float* r, const float* w, const float* k, const float* v, const float* a,
          const float* b, const Segment* segs, int64_t n_segs, float* state, int64_t stride,
          int64_t off, float* out, int64_t n_head, int64_t head_size, cudaStream_t s);

// Backend::rwkv7_mix in one kernel (rwkv7_mix.cu): its elementwise work, kk's norm, the
// recurrence, the group norm, the bonus and the gate, one block per (head, segment). Takes head
// sizes 32 and 64 and segments of up to 16 tokens, of any length when `any_length` (the
// invariant mode: a prompt in chunks must give the bits of token by token); false (nothing
// done) otherwise, and always with RWKVPP_V7_FUSED=0 (the plain ops, for comparisons). Longer
// segments are left to the plain ops, whose elementwise passes are parallel over the tokens
// (the kernel was 8.8 % slower at a 4096-token prefill on an H100, docs/perf.md).
bool rwkv7_mix(const Backend::Rwkv7Mix& p, const Segment* segs, int64_t n_segs, int32_t max_len,
               bool any_length, float* state, int64_t stride, int64_t off, int64_t n_head,
               int64_t head_size, cudaStream_t s);

}  // namespace rwkvpp::cuda
