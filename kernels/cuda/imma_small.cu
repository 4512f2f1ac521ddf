// Batch-invariant products for up to 32 input columns (see imma.cuh for the contract): one
// launch per product or per group of up to three products with one K, no conversion pass and
// no fold pass.
//
// A block owns 64 rows of one product's W (4 warps of 16 rows), BN input columns and one slice
// of K (blockIdx.z). Before the wait for the previous kernel (pdl_begin) it requests the first
// STAGES - 1 k tiles of its W rows (cp.async; W is written by no kernel). After it, it reads
// its slice of x in fp32, finds each token's largest magnitude over the slice (fp16 and int8)
// and writes the slice as fp16 times that token's 2^e (bf16: hi and lo columns) into shared
// memory, where it stays for the whole slice. The k tiles of W then stream through STAGES
// buffers while the MMAs run over them in order; the slice's sums times 2^-e are the element's
// value (one slice) or go to the partials, where the tile's last block adds them in slice
// order (imma_detail::fold_tile) and finishes them.
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/imma.cuh"
#include "kernels/cuda/imma_detail.cuh"

namespace rwkvpp::cuda {
namespace {

using namespace imma_detail;

constexpr int kSmallBM = 64, kSmallThreads = 128, kSmallStages = 6;

// Bytes per shared row of the converted slice (one input column): 16 of padding keeps
// ldmatrix's eight rows on distinct banks.
__host__ __device__ constexpr int slice_row_bytes(int slice) { return slice * 2 + 16; }

// The slice's values of input column gc, read once into registers: lane l holds
// x[k0 + 4 (l + 32 i) .. + 3] for i < kVec (float4 loads where x's rows are 16-byte aligned),
// zeros past the slice and for columns past nb.
constexpr int kVec = 8;  // float4 per lane: slices up to kImmaSmallMaxSlice
static_assert(kVec * 4 * 32 == kImmaSmallMaxSlice, "a lane's registers hold the longest slice");

struct Column {
  float4 v[kVec];
};

__device__ __forceinline__ float4 relu2_4(float4 v, bool relu2) {
  if (!relu2) return v;
  auto f = [](float x) { const float r = fmaxf(x, 0.0f); return r * r; };
  return make_float4(f(v.x), f(v.y), f(v.z), f(v.w));
}

__device__ __forceinline__ void load_column(const Args& a, const Job& j, int gc, int k0, int kl, bool bf16,
                                            Column& col) {
  const int lane = threadIdx.x & 31;
  const bool valid = gc < a.nb;
  const int t = bf16 ? gc / 2 : gc;
  const float* xr = j.x + int64_t(t) * a.K + k0;
  const bool aligned = (reinterpret_cast<uintptr_t>(xr) & 15u) == 0;
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int k = 4 * (lane + 32 * i);
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (valid && k < kl) {
      if (aligned && k + 3 < kl) {
        v = __ldg(reinterpret_cast<const float4*>(xr + k));
      } else {
        v.x = xr[k];
        if (k + 1 < kl) v.y = xr[k + 1];
        if (k + 2 < kl) v.z = xr[k + 2];
        if (k + 3 < kl) v.w = xr[k + 3];
      }
    }
    col.v[i] = relu2_4(v, a.relu2);
  }
}

// Column c of the block's input, loaded by load_column: its scale (fp16 and int8: from the
// slice's largest magnitude; bf16: hi and lo columns, no scale), converted into row c of sB
// (zeros up to kpad).
template <bool BF16>
__device__ __forceinline__ void store_column(const Column& col, int gc, int kpad, unsigned char* row,
                                             float* inv) {
  const int lane = threadIdx.x & 31;
  float scale = 1.0f;
  if constexpr (!BF16) {
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      m = fmaxf(m, fmaxf(fmaxf(fabsf(col.v[i].x), fabsf(col.v[i].y)), fmaxf(fabsf(col.v[i].z), fabsf(col.v[i].w))));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    scale = scale_for(m);
  }
  if (lane == 0) *inv = 1.0f / scale;  // a power of two: exact
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int k = 4 * (lane + 32 * i);
    if (k >= kpad) break;
    const float4 v = col.v[i];
    if constexpr (BF16) {
      auto part = [&](float x) {
        const __nv_bfloat16 hi = __float2bfloat16_rn(x);
        return gc % 2 == 0 ? hi : __float2bfloat16_rn(x - __bfloat162float(hi));
      };
      __nv_bfloat162 p0 = __halves2bfloat162(part(v.x), part(v.y)), p1 = __halves2bfloat162(part(v.z), part(v.w));
      *reinterpret_cast<__nv_bfloat162*>(row + 2 * k) = p0;
      *reinterpret_cast<__nv_bfloat162*>(row + 2 * k + 4) = p1;
    } else {
      *reinterpret_cast<__half2*>(row + 2 * k) = __floats2half2_rn(v.x * scale, v.y * scale);
      *reinterpret_cast<__half2*>(row + 2 * k + 4) = __floats2half2_rn(v.z * scale, v.w * scale);
    }
  }
}

template <typename WT, int BN>
__global__ void __launch_bounds__(kSmallThreads) imma_small_kernel(const Args a) {
  constexpr bool kI8 = std::is_same_v<WT, int8_t>;
  constexpr bool kBf16 = std::is_same_v<WT, __nv_bfloat16>;
  constexpr int kRowA = kI8 ? kRow8 : kRow16;
  constexpr int kChunksA = kBK * int(sizeof(WT)) / 16;  // 16-byte chunks per row of a k tile
  constexpr int kElemsChunk = 16 / int(sizeof(WT));
  constexpr int NT = BN / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* sA = smem;                                        // [STAGES][BM][kRowA]
  unsigned char* sB = smem + kSmallStages * kSmallBM * kRowA;      // [BN][slice_row_bytes]
  __shared__ float sInv[BN];

  const int bx = int(blockIdx.x);
  const int ji = bx >= a.tile_base[2] ? 2 : bx >= a.tile_base[1] ? 1 : 0;
  const Job& j = a.job[ji];
  const int row_tile = bx - a.tile_base[ji];
  const int row0 = row_tile * kSmallBM, col0 = int(blockIdx.y) * BN, s = int(blockIdx.z);
  const int k0 = s * a.slice, kl = min(a.K - k0, a.slice), tiles = (kl + kBK - 1) / kBK;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int ldb = slice_row_bytes(a.slice);
  const auto* W = static_cast<const unsigned char*>(j.W);

  auto load_a = [&](int stage, int jt) {
    const int kt = k0 + jt * kBK;
    for (int i = tid; i < kSmallBM * kChunksA; i += kSmallThreads) {
      const int r = i / kChunksA, c = i % kChunksA, gr = row0 + r, gk = kt + c * kElemsChunk;
      const bool ok = gr < j.R && gk < k0 + kl;
      const void* src = ok ? W + (int64_t(gr) * a.K + gk) * int64_t(sizeof(WT)) : W;
      cp_async16(sA + (stage * kSmallBM + r) * kRowA + c * 16, src, ok);
    }
  };

#pragma unroll
  for (int st = 0; st < kSmallStages - 1; ++st) {
    if (st < tiles) load_a(st, st);
    cp_async_commit();
  }
  pdl_begin();
  // Two columns per warp at a time: both columns' loads are in flight together.
  for (int c = warp; c < BN; c += 2 * (kSmallThreads / 32)) {
    const int c2 = c + kSmallThreads / 32;
    Column x0, x1;
    load_column(a, j, col0 + c, k0, kl, kBf16, x0);
    if (c2 < BN) load_column(a, j, col0 + c2, k0, kl, kBf16, x1);
    store_column<kBf16>(x0, col0 + c, tiles * kBK, sB + c * ldb, sInv + c);
    if (c2 < BN) store_column<kBf16>(x1, col0 + c2, tiles * kBK, sB + c2 * ldb, sInv + c2);
  }
  __syncthreads();

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[nt][q] = 0.0f;

  for (int jt = 0; jt < tiles; ++jt) {
    cp_async_wait<kSmallStages - 2>();
    __syncthreads();
    const unsigned char* tA = sA + (jt % kSmallStages) * kSmallBM * kRowA;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t fa[4], fb[NT][2];
      load_a_frag<kI8, kRowA>(fa, tA, warp * 16, kk, lane);
      const int kb = jt * kBK + kk;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        ldmatrix_x2(fb[nt], sB + (nt * 8 + (lane & 7)) * ldb + (kb + ((lane >> 3) & 1) * 8) * 2);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma16816<kBf16>(acc[nt], fa, fb[nt]);
    }
    const int jn = jt + kSmallStages - 1;
    if (jn < tiles) load_a(jn % kSmallStages, jn);
    cp_async_commit();
  }
  cp_async_wait<0>();

  // Fragment element q: row g (q < 2) or g + 8, column 2 t4 + (q & 1).
  const int g = lane >> 2, t4 = lane & 3;
  const bool split = a.slices > 1;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + warp * 16 + g + h * 8, cl = nt * 8 + 2 * t4, c = col0 + cl;
      if (r >= j.R) continue;
      const float v0 = acc[nt][2 * h] * sInv[cl], v1 = acc[nt][2 * h + 1] * sInv[cl + 1];
      if (split) {
        float* p = j.part + int64_t(s) * a.nb * j.R;
        if (c < a.nb) p[int64_t(c) * j.R + r] = v0;
        if (c + 1 < a.nb) p[int64_t(c + 1) * j.R + r] = v1;
      } else if (kBf16) {
        if (c + 1 < a.nb) finish(j, true, c / 2, r, v0, v1);
      } else {
        if (c < a.n) finish(j, false, c, r, v0, 0.0f);
        if (c + 1 < a.n) finish(j, false, c + 1, r, v1, 0.0f);
      }
    }
  if (split) fold_tile<kSmallBM, BN>(a, j, row0, col0, row_tile * int(gridDim.y) + int(blockIdx.y), kBf16);
}

template <typename WT, int BN>
void launch_small(const Args& a, cudaStream_t s) {
  constexpr int kRowA = std::is_same_v<WT, int8_t> ? kRow8 : kRow16;
  const size_t smem = size_t(kSmallStages) * kSmallBM * kRowA + size_t(BN) * slice_row_bytes(a.slice);
  auto kernel = imma_small_kernel<WT, BN>;
  static int allowed = 47 * 1024;  // the default 48 KiB, less room for the static arrays
  if (int(smem) > allowed) {
    RWKVPP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    allowed = int(smem);
  }
  const dim3 grid(unsigned(a.tile_base[a.count]), unsigned((a.nb + BN - 1) / BN), unsigned(a.slices));
  launch(kernel, grid, kSmallThreads, smem, s, a);
  RWKVPP_CUDA_LAUNCHED("imma_small_kernel");
}

template <typename WT>
void small_for(const Args& a, cudaStream_t s) {
  if (a.nb <= 8) return launch_small<WT, 8>(a, s);
  if (a.nb <= 16) return launch_small<WT, 16>(a, s);
  return launch_small<WT, 32>(a, s);
}

}  // namespace

int imma_small_row_tile() { return kSmallBM; }

void imma_small(const imma_detail::Args& a, DType dtype, cudaStream_t s) {
  switch (dtype) {
    case DType::F16: return small_for<__half>(a, s);
    case DType::BF16: return small_for<__nv_bfloat16>(a, s);
    case DType::I8: return small_for<int8_t>(a, s);
    case DType::F32:
    case DType::I4: break;
  }
  fail_msg("imma_small: weights of dtype " + std::to_string(int(dtype)) + " take the plain kernel");
}

}  // namespace rwkvpp::cuda
