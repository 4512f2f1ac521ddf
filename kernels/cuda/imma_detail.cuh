// Pieces shared by the batch-invariant product kernels (imma.cu: many tokens; imma_small.cu:
// up to 32 input columns). The arithmetic contract is in imma.cuh; what both kernels must do
// identically lives here: the MMA, the per-(token, slice) input scale, the end of an element.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/gemv.cuh"

namespace rwkvpp::cuda::imma_detail {

constexpr int kBK = 32;     // k per staged tile (the MMAs run over it in steps of 16, in order)
constexpr int kRow16 = 80;  // bytes per shared row of a 16-bit tile: 64 + 16 of padding
constexpr int kRow8 = 48;   // bytes per shared row of an int8 tile: 32 + 16 of padding
constexpr int kMaxJobs = 3;

// One product y = ep(x' W^T) as the kernels see it.
struct Job {
  const void* W;          // [R, K] row-major
  const float* scales;    // int8: [R]; else null
  const float* x;         // [n, K] fp32 (imma_small converts it itself)
  const void* xb;         // [nb, K] converted input (the large kernels)
  const float* inv;       // [n, S]: 2^-e per (token, slice) (the large kernels, fp16/int8)
  float* y;               // [n, R]
  GemvEpilogue ep;
  float* part;            // [S, nb, R]: slice sums times their 2^-e (split launches)
  int* tickets;           // one per (row tile, column tile) of a split launch; 0 between launches
  int R;
};

struct Args {
  Job job[kMaxJobs];
  int tile_base[kMaxJobs + 1];  // first blockIdx.x of each job (prefix sums of row tiles)
  int count;                    // jobs
  int K, n, nb;                 // K, tokens, input columns (n, or 2n: bf16 hi/lo)
  int slice, slices;            // k per slice (a multiple of kBK), S
  bool relu2;                   // x' = relu(x)^2
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// Two int8 values at p (k, k + 1 of one row) as an fp16 pair (exact).
__device__ __forceinline__ uint32_t i8x2_to_h2(const int8_t* p) {
  const __half2 h = __halves2half2(__int2half_rn(p[0]), __int2half_rn(p[1]));
  return *reinterpret_cast<const uint32_t*>(&h);
}

// A fragments of 16 rows x k 16 from a staged tile (row stride kRowA bytes).
template <bool I8, int kRowA>
__device__ __forceinline__ void load_a_frag(uint32_t (&fa)[4], const unsigned char* tA, int rbase,
                                            int kk, int lane) {
  if constexpr (I8) {
    const int g = lane >> 2, t4 = lane & 3;
    const auto* r0 = reinterpret_cast<const int8_t*>(tA + (rbase + g) * kRowA + kk + 2 * t4);
    const auto* r1 = reinterpret_cast<const int8_t*>(tA + (rbase + g + 8) * kRowA + kk + 2 * t4);
    fa[0] = i8x2_to_h2(r0);
    fa[1] = i8x2_to_h2(r1);
    fa[2] = i8x2_to_h2(r0 + 8);
    fa[3] = i8x2_to_h2(r1 + 8);
  } else {
    ldmatrix_x4(fa, tA + (rbase + (lane & 15)) * kRowA + (kk + (lane >> 4) * 8) * 2);
  }
}

__device__ __forceinline__ float input(const float* x, int64_t i, bool relu2) {
  const float v = x[i];
  if (!relu2) return v;
  const float r = fmaxf(v, 0.0f);
  return r * r;
}

// The power of two that brings a largest magnitude m into [2^14, 2^15) (fp16 overflows at
// 65504); 1 for zero or non-finite m.
__device__ __forceinline__ float scale_for(float m) {
  int e = 0;
  if (m > 0.0f && isfinite(m)) {
    int ex;
    frexpf(m, &ex);  // m = f * 2^ex, f in [0.5, 1)
    e = max(-126, min(126, 15 - ex));
  }
  return ldexpf(1.0f, e);
}

// The end of the contract for element (token t, row r) from its total(s), every slice's sum
// already times its 2^-e: bf16 adds hi + lo, int8 multiplies by the row's scale.
__device__ __forceinline__ void finish(const Job& j, bool bf16, int t, int r, float total, float total_lo) {
  float v = bf16 ? total + total_lo : total;
  if (j.scales) v = v * j.scales[r];
  j.ep.store(j.y, int64_t(t) * j.R + r, v);
}

// Most slices a product is cut into (imma_slices): the fold keeps one value per slice in
// registers, so that all of an element's loads are in flight at once.
constexpr int kMaxSlices = 32;

// The S slice sums of 4 consecutive rows (float4) or one row at p, p + stride, ..., added in
// slice order. Every load is issued before the first add.
template <typename V>
__device__ __forceinline__ V sum_slices(const V* p, int64_t stride, int S) {
  V v[kMaxSlices];
#pragma unroll
  for (int s = 0; s < kMaxSlices; ++s)
    if (s < S) v[s] = __ldcg(p + s * stride);
  V t = v[0];
#pragma unroll
  for (int s = 1; s < kMaxSlices; ++s)
    if (s < S) {
      if constexpr (std::is_same_v<V, float4>) t.x = t.x + v[s].x, t.y = t.y + v[s].y, t.z = t.z + v[s].z, t.w = t.w + v[s].w;
      else t = t + v[s];
    }
  return t;
}

// A split launch's tile after its block wrote its slice's sums to j.part: the block that
// arrives last (a ticket per tile) adds the S sums of each element in slice order, finishes
// it and puts the ticket back to 0 for the next launch. Every thread of the block calls it.
// Rows go four at a time (float4) where the tile's rows allow, so each thread has 4 x S
// values in flight.
template <int BM, int BN>
__device__ __forceinline__ void fold_tile(const Args& a, const Job& j, int row0, int col0, int tile,
                                          bool bf16) {
  __shared__ int last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(j.tickets + tile, 1) == a.slices - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int cols = min(BN, a.nb - col0), tokens = bf16 ? cols / 2 : cols, t0 = bf16 ? col0 / 2 : col0;
  const int rows = min(BM, j.R - row0);
  const int64_t stride = int64_t(a.nb) * j.R;
  const bool vec = rows % 4 == 0 && j.R % 4 == 0;
  const int per = vec ? 4 : 1, groups = rows / per;
  for (int i = threadIdx.x; i < groups * tokens; i += blockDim.x) {
    const int r = row0 + (i % groups) * per, t = t0 + i / groups, c = bf16 ? 2 * t : t;
    const float* p = j.part + int64_t(c) * j.R + r;
    if (vec) {
      const float4 hi = sum_slices(reinterpret_cast<const float4*>(p), stride / 4, a.slices);
      float4 lo = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (bf16) lo = sum_slices(reinterpret_cast<const float4*>(p + j.R), stride / 4, a.slices);
      finish(j, bf16, t, r, hi.x, lo.x);
      finish(j, bf16, t, r + 1, hi.y, lo.y);
      finish(j, bf16, t, r + 2, hi.z, lo.z);
      finish(j, bf16, t, r + 3, hi.w, lo.w);
    } else {
      const float hi = sum_slices(p, stride, a.slices);
      finish(j, bf16, t, r, hi, bf16 ? sum_slices(p + j.R, stride, a.slices) : 0.0f);
    }
  }
  if (threadIdx.x == 0) j.tickets[tile] = 0;
}

// Element (t, r) of a split launch on many tokens (imma.cu's 128 x 128 tiles): the same adds in
// the same order as fold_tile, over the whole grid instead of one block per tile.
__device__ __forceinline__ void fold_element(const Args& a, const Job& j, int t, int r, bool bf16) {
  const int c = bf16 ? 2 * t : t;
  const int64_t stride = int64_t(a.nb) * j.R;
  const float* p = j.part + int64_t(c) * j.R + r;
  finish(j, bf16, t, r, sum_slices(p, stride, a.slices), bf16 ? sum_slices(p + j.R, stride, a.slices) : 0.0f);
}

}  // namespace rwkvpp::cuda::imma_detail
