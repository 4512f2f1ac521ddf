// Matrix-vector products for few tokens (n <= 8): y[t, r] = sum_c W[r, c] * x[t, c] with W
// [R, K] row-major in fp32, fp16, bf16 or int8, x and y fp32, fp32 accumulation. int8 rows
// carry one fp32 scale each (kernels/quantize.h): the sum over q * x is multiplied by it at
// the end, y[t, r] = scales[r] * sum_c q[r, c] * x[t, c]. Decoding is bound by
// reading W once from memory, so these kernels aim at memory bandwidth: 16-byte weight loads
// that bypass L1 (each weight is read once), x through the read-only cache (every warp reads
// all of it), several rows per warp so that each x value fetched serves them all.
// The kernels are templates in this header so that the kernel lab (kernels/cuda/dev/) can time
// every variant; kernels/cuda/matmul.cu picks one per token count.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"

namespace rwkvpp::cuda {

constexpr int kGemvWarps = 8;  // warps per block (256 threads)

// int8 weights (q of a row-scaled matrix) as fp32; their row scale is applied after the sum.
__device__ __forceinline__ float to_float(int8_t v) { return float(v); }
template <typename T>
constexpr bool kRowScaled = std::is_same_v<T, int8_t>;

// 16 bytes of W as fp32 values: 16 for int8, 8 for fp16/bf16, 4 for fp32.
template <typename T>
struct Pack16;
template <>
struct Pack16<float> {
  static constexpr int n = 4;
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[4]) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  }
};
template <>
struct Pack16<__half> {
  static constexpr int n = 8;
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[8]) {
    const uint32_t p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      __half2 h2;
      memcpy(&h2, &p[q], 4);
      const float2 v = __half22float2(h2);
      f[2 * q] = v.x;
      f[2 * q + 1] = v.y;
    }
  }
};
template <>
struct Pack16<__nv_bfloat16> {
  static constexpr int n = 8;
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[8]) {
    const uint32_t p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // bf16 is the top half of an fp32
      f[2 * q] = __uint_as_float(p[q] << 16);
      f[2 * q + 1] = __uint_as_float(p[q] & 0xffff0000u);
    }
  }
};

template <>
struct Pack16<int8_t> {
  static constexpr int n = 16;
  // Without a conversion instruction (int-to-float runs at a quarter of the FMA rate): q ^ 0x80
  // is q + 128 as an unsigned byte; placed under the exponent bits 0x4B000000 it makes the fp32
  // 2^23 + q + 128, exactly, and subtracting 2^23 + 128 leaves q.
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[16]) {
    const uint32_t p[4] = {u.x ^ 0x80808080u, u.y ^ 0x80808080u, u.z ^ 0x80808080u,
                           u.w ^ 0x80808080u};
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int b = 0; b < 4; ++b)  // result bytes: [byte b of p, 0x00, 0x00, 0x4B]
        f[4 * q + b] =
            __uint_as_float(__byte_perm(p[q], 0x4B000000u, 0x7540u | unsigned(b))) - 8388736.0f;
  }
};

// A 16-byte load that does not allocate in L1 (the weights are streamed once; L1 is left to x).
__device__ __forceinline__ uint4 load_stream16(const void* p) {
  uint4 u;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
               : "l"(p));
  return u;
}

// What a GEMV does with each result v before storing it (Backend::Epilogue): an activation,
// a gate multiply, and accumulation into y. Uniform across the grid, so the branches cost
// nothing; the default stores v as it is.
struct GemvEpilogue {
  int act = 0;  // 0 none, 1 sigmoid, 2 relu then square, 3 tanh
  const float* gate = nullptr;  // [n, R], multiplies v
  bool accumulate = false;      // y += v instead of y = v

  __device__ __forceinline__ void store(float* y, int64_t i, float v) const {
    if (act == 1) v = 1.0f / (1.0f + expf(-v));
    else if (act == 2) v = v > 0.0f ? v * v : 0.0f;
    else if (act == 3) v = tanhf(v);
    if (gate) v = gate[i] * v;
    y[i] = accumulate ? y[i] + v : v;
  }
};

// Vectorised GEMV. Requires K % Pack16<T>::n == 0 and 16-byte aligned W and x (then every row
// of both is aligned too).
//
// Mapping: the block's warps form groups of WPR warps; group g of block b owns rows r0 .. r0 +
// RPW - 1 with r0 = (b * kGemvWarps / WPR + g) * RPW (rows past R are clamped for loading and
// never written). The group's WPR * 32 lanes walk K together in 16-byte chunks: lane l of the
// group's warp k takes chunks k * 32 + l, k * 32 + l + WPR * 32, ..., so each warp load covers
// 512 contiguous bytes of one row; UNROLL chunks per lane are loaded before any is used, to
// keep enough bytes in flight. For each chunk the lane reads the matching values of x for each
// of the NT tokens and accumulates RPW * NT fp32 partial sums; a shuffle butterfly reduces
// them per warp, the group's warps add theirs through shared memory (WPR > 1), and lane (row *
// NT + token) % 32 of the group's first warp writes each result (times the row's scale for
// int8; `scales` is unused for the other dtypes).
//
// Why WPR: a decode GEMV is bound by the bytes in flight (bandwidth x latency, ~3 MB on an
// H100). One warp per row gives too few warps where rows are few (1.5B: 2048 rows, ~16 warps
// per SM, each lane's chunks read in dependent rounds of UNROLL: 1.3-2.3 TB/s measured);
// splitting K over WPR warps multiplies the loads in flight by WPR.
template <typename T, int NT, int RPW, int UNROLL, int WPR = 1, bool PIPE = false>
__device__ __forceinline__ void gemv_vec_rows(const T* __restrict__ W, const float* __restrict__ x,
                                              float* __restrict__ y, int R, int K,
                                              const float* __restrict__ scales,
                                              const GemvEpilogue& ep) {
  static_assert(kGemvWarps % WPR == 0, "WPR divides the block's warps");
  constexpr int V = Pack16<T>::n;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r0 = (blockIdx.x * (kGemvWarps / WPR) + warp / WPR) * RPW;
  if constexpr (WPR == 1) {
    if (r0 >= R) return;  // reads and writes nothing: needs no pdl_begin()
  }
  // With WPR > 1 every warp reaches the barrier below; a group past R reads nothing.
  const int nchunk = r0 < R ? K / V : 0;
  const T* rows[RPW];
#pragma unroll
  for (int q = 0; q < RPW; ++q) rows[q] = W + int64_t(min(r0 + q, R - 1)) * K;
  float acc[RPW][NT];
#pragma unroll
  for (int q = 0; q < RPW; ++q)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[q][t] = 0.0f;

  // The weights of the lane's first round are loaded before pdl_begin() (they do not depend on
  // the kernels before this one; x and y do), so under programmatic dependent launch they are
  // in flight while the previous kernel drains. Without PIPE each later round's loads are
  // issued after the previous round is used, as in a plain loop (nothing of this warp in
  // flight while it computes); with PIPE the next round's loads are issued before the current
  // round is used (twice the weight registers, loads in flight throughout).
  constexpr int kStep = 32 * WPR * UNROLL;
  int c0 = (warp % WPR) * 32 + lane;
  using Round = uint4[UNROLL][RPW];
  auto load_round = [&](Round& wv, int first) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = first + u * 32 * WPR;
#pragma unroll
      for (int q = 0; q < RPW; ++q)
        wv[u][q] = c < nchunk ? load_stream16(rows[q] + int64_t(c) * V) : make_uint4(0, 0, 0, 0);
    }
  };
  auto use_round = [&](const Round& wv, int first) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = first + u * 32 * WPR;
      if (c >= nchunk) break;
      float wf[RPW][V];
#pragma unroll
      for (int q = 0; q < RPW; ++q) Pack16<T>::unpack(wv[u][q], wf[q]);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float4* xp = reinterpret_cast<const float4*>(x + int64_t(t) * K + int64_t(c) * V);
        float xv[V];
#pragma unroll
        for (int e = 0; e < V / 4; ++e) {
          const float4 f = __ldg(xp + e);
          xv[4 * e] = f.x;
          xv[4 * e + 1] = f.y;
          xv[4 * e + 2] = f.z;
          xv[4 * e + 3] = f.w;
        }
#pragma unroll
        for (int q = 0; q < RPW; ++q)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[q][t] = fmaf(wf[q][e], xv[e], acc[q][t]);
      }
    }
  };
  Round wv;
  load_round(wv, c0);
  pdl_begin();
  if constexpr (PIPE) {
    for (; c0 < nchunk; c0 += kStep) {
      Round nv;
      load_round(nv, c0 + kStep);  // past the row's end: zeros, no load
      use_round(wv, c0);
#pragma unroll
      for (int u = 0; u < UNROLL; ++u)
#pragma unroll
        for (int q = 0; q < RPW; ++q) wv[u][q] = nv[u][q];
    }
  } else {
    for (; c0 < nchunk; c0 += kStep) {
      use_round(wv, c0);
      if (c0 + kStep < nchunk) load_round(wv, c0 + kStep);
    }
  }
#pragma unroll
  for (int q = 0; q < RPW; ++q)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[q][t] = warp_sum(acc[q][t]);
  if constexpr (WPR > 1) {
    __shared__ float part[kGemvWarps][RPW * NT];
#pragma unroll
    for (int q = 0; q < RPW; ++q)
#pragma unroll
      for (int t = 0; t < NT; ++t)
        if (lane == (q * NT + t) % 32) part[warp][q * NT + t] = acc[q][t];
    __syncthreads();
    if (warp % WPR != 0 || r0 >= R) return;
#pragma unroll
    for (int q = 0; q < RPW; ++q)
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int k = 1; k < WPR; ++k) acc[q][t] += part[warp + k][q * NT + t];
  }
#pragma unroll
  for (int q = 0; q < RPW; ++q)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float s = acc[q][t];
      if (lane == (q * NT + t) % 32 && r0 + q < R) {
        if constexpr (kRowScaled<T>) s *= __ldg(scales + r0 + q);
        ep.store(y, int64_t(t) * R + r0 + q, s);
      }
    }
}

template <typename T, int NT, int RPW, int UNROLL, int WPR = 1, bool PIPE = false>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_vec_kernel(const T* __restrict__ W, const float* __restrict__ x, float* __restrict__ y,
                    int R, int K, const float* __restrict__ scales, GemvEpilogue ep) {
  gemv_vec_rows<T, NT, RPW, UNROLL, WPR, PIPE>(W, x, y, R, K, scales, ep);
}

// Several GEMVs with the same token count and dtype in one launch: blockIdx.y picks the job,
// each with its own W, x, y, shape and epilogue; blocks past a job's rows exit. One launch and
// one tail instead of several: RWKV-4's k, v, r products, its FFN key and receptance, RWKV-7's
// seven products of the time mix's input and its four low-rank second factors (each of its
// own width K). The block copies its job out of the parameters with constant indices and
// selects (no local copy of the parameters, one inlined body).
constexpr int kGemvMaxJobs = 8;
template <typename T>
struct GemvJob {
  const T* W;
  const float* x;
  float* y;
  const float* scales;
  GemvEpilogue ep;
  int R;
  int K;
};
template <typename T>
struct GemvJobs {
  GemvJob<T> j[kGemvMaxJobs];
};

template <typename T, int NT, int RPW, int UNROLL, int WPR = 1, bool PIPE = false>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_vec_group_kernel(GemvJobs<T> jobs) {
  GemvJob<T> j = jobs.j[0];
#pragma unroll
  for (int i = 1; i < kGemvMaxJobs; ++i)
    if (blockIdx.y == unsigned(i)) j = jobs.j[i];
  gemv_vec_rows<T, NT, RPW, UNROLL, WPR, PIPE>(j.W, j.x, j.y, j.R, j.K, j.scales, j.ep);
}

// Scalar GEMV for shapes the vector kernel cannot take (K not a multiple of the pack, or
// unaligned pointers): one warp per row, lanes striding over K one element at a time. int8
// rows are scaled at the end as in the vector kernel.
template <typename T, int NT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_scalar_kernel(const T* __restrict__ W, const float* __restrict__ x, float* __restrict__ y,
                       int R, int K, const float* __restrict__ scales, GemvEpilogue ep) {
  pdl_begin();
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (r >= R) return;
  const T* row = W + int64_t(r) * K;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  for (int c = lane; c < K; c += 32) {
    const float wc = to_float(row[c]);
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = fmaf(wc, __ldg(x + int64_t(t) * K + c), acc[t]);
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float s = warp_sum(acc[t]);
    if (lane == t) {
      if constexpr (kRowScaled<T>) s *= __ldg(scales + r);
      ep.store(y, int64_t(t) * R + r, s);
    }
  }
}

// `scales`: the row scales of int8 W (required then); ignored for the other dtypes.
template <typename T, int NT, int RPW, int UNROLL, int WPR = 1, bool PIPE = false>
inline void launch_gemv_vec(const T* W, const float* x, float* y, int R, int K, cudaStream_t s,
                            const float* scales = nullptr, GemvEpilogue ep = {}) {
  const int rows_per_block = kGemvWarps / WPR * RPW;
  launch(gemv_vec_kernel<T, NT, RPW, UNROLL, WPR, PIPE>,
         unsigned((R + rows_per_block - 1) / rows_per_block), kGemvWarps * 32, 0, s, W, x, y, R, K,
         scales, ep);
}

// `count` (1..kGemvMaxJobs) jobs of `jobs`; the grid covers the job with the most rows.
template <typename T, int NT, int RPW, int UNROLL, int WPR = 1, bool PIPE = false>
inline void launch_gemv_vec_group(const GemvJobs<T>& jobs, int count, cudaStream_t s) {
  const int rows_per_block = kGemvWarps / WPR * RPW;
  int R = 0;
  for (int i = 0; i < count; ++i) R = R > jobs.j[i].R ? R : jobs.j[i].R;
  launch(gemv_vec_group_kernel<T, NT, RPW, UNROLL, WPR, PIPE>,
         dim3(unsigned((R + rows_per_block - 1) / rows_per_block), unsigned(count)),
         kGemvWarps * 32, 0, s, jobs);
}

template <typename T, int NT>
inline void launch_gemv_scalar(const T* W, const float* x, float* y, int R, int K,
                               cudaStream_t s, const float* scales = nullptr,
                               GemvEpilogue ep = {}) {
  launch(gemv_scalar_kernel<T, NT>, unsigned((R + kGemvWarps - 1) / kGemvWarps), kGemvWarps * 32, 0,
         s, W, x, y, R, K, scales, ep);
}

}  // namespace rwkvpp::cuda
