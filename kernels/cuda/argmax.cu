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

// The block's best (value, id) from each thread's; every thread gets it. Ends synchronised.
__device__ __forceinline__ void block_best(float& best, int32_t& bid) {
  __shared__ float red_v[32];
  __shared__ int32_t red_i[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
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
  __syncthreads();
}

// The block's sum of each thread's s (double); every thread gets it. Ends synchronised.
__device__ __forceinline__ double block_sum_d(double s) {
  __shared__ double red_s[32];
  return block_sum(s, red_s);
}

__global__ void argmax_rows_kernel(const float* __restrict__ logits, int64_t vocab,
                                   int32_t* __restrict__ ids, float* __restrict__ logprobs) {
  pdl_begin();
  const int64_t r = blockIdx.x;
  const float* z = logits + r * vocab;

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
  block_best(best, bid);  // every thread now holds the row's (best, bid)
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
  s = block_sum_d(s);
  if (threadIdx.x == 0) logprobs[r] = float(mx - (mx + log(s)));
}

// Few rows: each row split over blocks of kSplitValues values, read once. A block finds its
// part's best (m_b, id_b) and s_b = sum exp(z - m_b) from registers and stores them; the
// row's last block to finish (a ticket per row) combines the parts: the best of the bests, and
// sum_b s_b exp(m_b - M) (in double, as the one-block form) for the log-softmax. One block of
// 1024 threads per row took 26 us for a row of 50277 on an H100 (a 1.5B step is ~1.45 ms).
// The tickets return to 0 after each row, so the scratch stays valid across graph replays.
constexpr int kSplitThreads = 256;
constexpr int kSplitValues = kSplitThreads * kUnroll;

struct ArgmaxPart {
  float v;
  int32_t id;
  double s;
};

__global__ void argmax_split_kernel(const float* __restrict__ logits, int64_t vocab,
                                    int32_t* __restrict__ ids, float* __restrict__ logprobs,
                                    ArgmaxPart* __restrict__ parts, unsigned* __restrict__ tickets) {
  pdl_begin();
  __shared__ bool last;
  const int64_t r = blockIdx.y;
  const float* z = logits + r * vocab;
  float v[kUnroll];
  load_strided(z, blockIdx.x * int64_t(kSplitValues) + threadIdx.x, vocab, v);
  float best = -INFINITY;
  int32_t bid = INT32_MAX;
#pragma unroll
  for (int k = 0; k < kUnroll; ++k)
    if (v[k] > best) {
      best = v[k];
      bid = int32_t(blockIdx.x * int64_t(kSplitValues) + threadIdx.x + k * kSplitThreads);
    }
  block_best(best, bid);
  double s = 0;
  if (bid != INT32_MAX)
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (!isnan(v[k])) s += exp(double(v[k]) - double(best));
  s = block_sum_d(s);
  ArgmaxPart* row_parts = parts + r * gridDim.x;
  if (threadIdx.x == 0) {
    row_parts[blockIdx.x] = {best, bid, s};
    __threadfence();  // the part is visible before the ticket says so
    last = atomicAdd(tickets + r, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  best = -INFINITY;
  bid = INT32_MAX;
  float mb = -INFINITY;
  double sb = 0;
  if (threadIdx.x < gridDim.x) {  // gridDim.x <= kSplitThreads (argmax_rows)
    mb = __ldcg(&row_parts[threadIdx.x].v);
    const int32_t ib = __ldcg(&row_parts[threadIdx.x].id);
    sb = __ldcg(&row_parts[threadIdx.x].s);
    best = mb;
    bid = ib;
  }
  block_best(best, bid);
  const bool none = bid == INT32_MAX;
  s = (!none && mb != -INFINITY) ? sb * exp(double(mb) - double(best)) : 0.0;
  s = block_sum_d(s);
  if (threadIdx.x == 0) {
    ids[r] = none ? -1 : bid;
    if (logprobs) logprobs[r] = none ? -INFINITY : float(double(best) - (double(best) + log(s)));
    tickets[r] = 0;
  }
}

}  // namespace

size_t argmax_scratch_bytes() {
  return kArgmaxSplitRows * sizeof(unsigned) + size_t(kArgmaxSplitRows) * kSplitThreads * sizeof(ArgmaxPart);
}

void argmax_rows(const float* logits, int64_t m, int64_t vocab, int32_t* ids, float* logprobs,
                 void* scratch, cudaStream_t s) {
  if (m == 0) return;
  const int64_t blocks = (vocab + kSplitValues - 1) / kSplitValues;
  if (scratch && m <= kArgmaxSplitRows && blocks > 1 && blocks <= kSplitThreads) {
    auto* tickets = static_cast<unsigned*>(scratch);
    auto* parts = reinterpret_cast<ArgmaxPart*>(tickets + kArgmaxSplitRows);
    launch(argmax_split_kernel, dim3(unsigned(blocks), unsigned(m)), kSplitThreads, 0, s, logits,
           vocab, ids, logprobs, parts, tickets);
    RWKVPP_CUDA_LAUNCHED("argmax_split_kernel");
    return;
  }
  launch(argmax_rows_kernel, unsigned(m), kThreads, 0, s, logits, vocab, ids, logprobs);
  RWKVPP_CUDA_LAUNCHED("argmax_rows_kernel");
}

}  // namespace rwkvpp::cuda
