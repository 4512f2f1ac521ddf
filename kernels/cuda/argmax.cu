// Row argmax and log-softmax of the maximum (see argmax.cuh).
//
// Mapping: one block of 1024 threads per row. Each thread strides over the row (so within a
// thread ids increase and a strict > keeps the lowest id among equals), then a warp reduction
// with shuffles and one across the 32 warps combine (value, id) pairs: the larger value wins,
// equal values keep the lower id; NaN never compares greater, so it acts as -inf. A second pass
// sums exp(z - max) in double (the host reference sums in double too; only the order of the
// additions differs, far below the float rounding of the result).
#include <cmath>

#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/cuda_common.cuh"

namespace rwkvpp::cuda {
namespace {

constexpr int kThreads = 1024;
// Loads in flight per thread: the row is read kUnroll values at a time, all issued before any
// is compared, instead of one memory latency per value (one row of 50277 took 38 us on an H100).
constexpr int kUnroll = 8;

// Keeps the better of two (value, id) candidates: the larger value, then the lower id. A thread
// that saw nothing but NaN or -inf holds (-inf, INT32_MAX), which never beats a real candidate.
__device__ __forceinline__ void take_better(float& v, int32_t& id, float ov, int32_t oid) {
  if (ov > v || (ov == v && oid < id)) {
    v = ov;
    id = oid;
  }
}

// z[i0], z[i0 + blockDim.x], ... (kUnroll of them, -inf past the end), all loads issued first.
__device__ __forceinline__ void load_strided(const float* z, int64_t i0, int64_t vocab, float (&v)[kUnroll]) {
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const int64_t i = i0 + int64_t(k) * blockDim.x;
    v[k] = i < vocab ? z[i] : -INFINITY;
  }
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void argmax_rows_kernel(const float* __restrict__ logits, int64_t vocab,
                                   int32_t* __restrict__ ids, float* __restrict__ logprobs) {
  __shared__ float red_v[32];
  __shared__ int32_t red_i[32];
  __shared__ double red_s[32];
  const int64_t r = blockIdx.x;
  const float* z = logits + r * vocab;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

  float best = -INFINITY;
  int32_t bid = INT32_MAX;
  for (int64_t i0 = threadIdx.x; i0 < vocab; i0 += int64_t(blockDim.x) * kUnroll) {
    float v[kUnroll];
    load_strided(z, i0, vocab, v);
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (v[k] > best) {  // NaN and the padding: false; ids rise with k, so the lowest id wins
        best = v[k];
        bid = int32_t(i0 + int64_t(k) * blockDim.x);
      }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    take_better(best, bid, __shfl_xor_sync(0xffffffffu, best, o),
                __shfl_xor_sync(0xffffffffu, bid, o));
  if (lane == 0) {
    red_v[warp] = best;
    red_i[warp] = bid;
  }
  __syncthreads();
  best = lane < nwarps ? red_v[lane] : -INFINITY;
  bid = lane < nwarps ? red_i[lane] : INT32_MAX;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    take_better(best, bid, __shfl_xor_sync(0xffffffffu, best, o),
                __shfl_xor_sync(0xffffffffu, bid, o));
  // Every thread now holds the row's (best, bid).
  const bool none = bid == INT32_MAX;
  if (threadIdx.x == 0) ids[r] = none ? -1 : bid;
  if (!logprobs) return;
  if (none) {
    if (threadIdx.x == 0) logprobs[r] = -INFINITY;
    return;
  }
  const double mx = double(best);
  double s = 0;
  for (int64_t i0 = threadIdx.x; i0 < vocab; i0 += int64_t(blockDim.x) * kUnroll) {
    float v[kUnroll];
    load_strided(z, i0, vocab, v);
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (!isnan(v[k])) s += exp(double(v[k]) - mx);  // exp(-inf) = 0
  }
  s = warp_sum_d(s);
  if (lane == 0) red_s[warp] = s;
  __syncthreads();
  if (warp == 0) {
    double t = lane < nwarps ? red_s[lane] : 0.0;
    t = warp_sum_d(t);
    if (lane == 0) logprobs[r] = float(mx - (mx + log(t)));
  }
}

}  // namespace

void argmax_rows(const float* logits, int64_t m, int64_t vocab, int32_t* ids, float* logprobs,
                 cudaStream_t s) {
  if (m == 0) return;
  argmax_rows_kernel<<<unsigned(m), kThreads, 0, s>>>(logits, vocab, ids, logprobs);
  RWKVPP_CUDA_LAUNCHED("argmax_rows_kernel");
}

}  // namespace rwkvpp::cuda
