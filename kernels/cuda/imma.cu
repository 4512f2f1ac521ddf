// Batch-invariant products (see imma.cuh for the arithmetic contract): the many-token kernels,
// the plain kernel and the plans. Up to 32 input columns take imma_small.cu.
//
// Kernels:
// - convert_*: one block per (token row, slice); the slice's largest magnitude (a max: exact in
//   any order) gives its power-of-two scale; the slice is written as fp16 (or the row as bf16
//   hi/lo pairs).
// - imma_kernel: a block computes a BM x BN tile of W rows x input columns. Its warps form a
//   WM x WN grid, each warp MT x NT tiles of m16n8k16. k tiles of 32 stream through STAGES
//   shared-memory buffers by cp.async (16-byte copies; rows past R and k past K are filled with
//   zeros); fp16/bf16 fragments come from ldmatrix, int8 ones are widened to fp16 from shared
//   memory (exact). Every k tile belongs to one slice (imma_slices); each finished slice's sums
//   times the slice's 2^-e join the block's total in slice order (FOLD: the block owns every
//   slice), or a block owns one slice (blockIdx.z) and writes its sums to the partials, which
//   imma_fold_kernel adds (imma_detail::fold_element, the order of fold_tile).
// - ifma_kernel: fp32 weights and shapes the MMA kernels do not take: one thread per element, a
//   plain fma chain over k in order, tiles of W and x staged in shared memory.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "common/env_options.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/imma.cuh"
#include "kernels/cuda/imma_detail.cuh"

namespace rwkvpp::cuda {
namespace {

using namespace imma_detail;

constexpr int kConvThreads = 128;

// Slice s of row t of x as fp16 times 2^e, the slice's largest magnitude brought into
// [2^14, 2^15); inv[t * S + s] = 2^-e.
__global__ void convert_f16_kernel(const float* x, int K, int slice, bool relu2, __half* xh, float* inv) {
  pdl_begin();
  __shared__ float red[kConvThreads / 32];
  const int t = int(blockIdx.x), s = int(blockIdx.y), S = int(gridDim.y);
  const int k0 = s * slice, k1 = min(K, k0 + slice);
  const float* xr = x + int64_t(t) * K;
  float m = 0.0f;
  for (int k = k0 + int(threadIdx.x); k < k1; k += kConvThreads) m = fmaxf(m, fabsf(input(xr, k, relu2)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int w = 1; w < kConvThreads / 32; ++w) m = fmaxf(m, red[w]);
  const float scale = scale_for(m);
  if (threadIdx.x == 0) inv[int64_t(t) * S + s] = 1.0f / scale;
  for (int k = k0 + int(threadIdx.x); k < k1; k += kConvThreads)
    xh[int64_t(t) * K + k] = __float2half_rn(input(xr, k, relu2) * scale);
}

// Row t of x as two bf16 rows of the product's input: 2t = hi = bf16(x), 2t + 1 = lo = bf16(x - hi).
__global__ void convert_bf16_kernel(const float* x, int K, bool relu2, __nv_bfloat16* xb) {
  pdl_begin();
  const int64_t t = blockIdx.x;
  for (int k = int(threadIdx.x); k < K; k += kConvThreads) {
    const float v = input(x, t * K + k, relu2);
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    xb[(2 * t) * K + k] = hi;
    xb[(2 * t + 1) * K + k] = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
}

// ---- the MMA kernel ---------------------------------------------------------------------------

template <typename WT, int BM, int BN, int WM, int WN, int STAGES, bool FOLD>
__global__ void __launch_bounds__(WM * WN * 32) imma_kernel(const Args a) {
  constexpr bool kI8 = std::is_same_v<WT, int8_t>;
  constexpr bool kBf16 = std::is_same_v<WT, __nv_bfloat16>;
  constexpr int kThreadsK = WM * WN * 32;
  constexpr int WTM = BM / WM, WTN = BN / WN, MT = WTM / 16, NT = WTN / 8;
  constexpr int kRowA = kI8 ? kRow8 : kRow16;
  constexpr int kChunksA = kBK * int(sizeof(WT)) / 16;  // 16-byte chunks per row of a k tile
  constexpr int kElemsChunkA = 16 / int(sizeof(WT));
  static_assert(MT >= 1 && NT >= 1 && WTM % 16 == 0 && WTN % 8 == 0, "tile shape");
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* sA = smem;                                  // [STAGES][BM][kRowA]
  unsigned char* sB = smem + STAGES * BM * kRowA;            // [STAGES][BN][kRow16]

  const Job& jb = a.job[0];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  const int row0 = blockIdx.x * BM, col0 = blockIdx.y * BN;
  const int K = a.K, R = jb.R;
  const int tiles_all = (K + kBK - 1) / kBK, tiles_slice = a.slice / kBK;
  // The k tiles this block sums: every slice (FOLD), or slice blockIdx.z.
  const int j0 = FOLD ? 0 : int(blockIdx.z) * tiles_slice;
  const int j1 = FOLD ? tiles_all : min(tiles_all, j0 + tiles_slice);
  const auto* W = static_cast<const unsigned char*>(jb.W);
  const auto* X = static_cast<const unsigned char*>(jb.xb);

  auto load_a = [&](int stage, int j) {
    const int k0 = j * kBK;
    for (int i = tid; i < BM * kChunksA; i += kThreadsK) {
      const int r = i / kChunksA, c = i % kChunksA, gr = row0 + r, gk = k0 + c * kElemsChunkA;
      const bool ok = gr < R && gk < K;
      const void* src = ok ? W + (int64_t(gr) * K + gk) * int64_t(sizeof(WT)) : W;
      cp_async16(sA + (stage * BM + r) * kRowA + c * 16, src, ok);
    }
  };
  auto load_b = [&](int stage, int j) {
    const int k0 = j * kBK;
    for (int i = tid; i < BN * 4; i += kThreadsK) {
      const int r = i / 4, c = i % 4, gc = col0 + r, gk = k0 + c * 8;
      const bool ok = gc < a.nb && gk < K;
      const void* src = ok ? X + (int64_t(gc) * K + gk) * 2 : X;
      cp_async16(sB + (stage * BN + r) * kRow16 + c * 16, src, ok);
    }
  };
  // 2^-e of input column c in slice s (bf16: 1).
  auto inv_of = [&](int c, int s) -> float {
    if constexpr (kBf16) return 1.0f;
    return c < a.n ? jb.inv[int64_t(c) * a.slices + s] : 1.0f;
  };

  // The weights are read by no kernel's writes: their first tiles are requested before the
  // wait for the previous kernel (pdl_begin), the inputs after it.
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st)
    if (j0 + st < j1) load_a(st, j0 + st);
  pdl_begin();
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (j0 + st < j1) load_b(st, j0 + st);
    cp_async_commit();
  }

  // acc: the slice being summed; tot: the slices finished so far, each times its 2^-e (FOLD
  // only: a block that sums one slice keeps it in acc).
  float acc[MT][NT][4], tot[FOLD ? MT : 1][FOLD ? NT : 1][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mt][nt][q] = 0.0f;
  bool have_total = false;
  const int g = lane >> 2, t4 = lane & 3;

  for (int j = j0; j < j1; ++j) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int stage = (j - j0) % STAGES;
    const unsigned char* tA = sA + stage * BM * kRowA;
    const unsigned char* tB = sB + stage * BN * kRow16;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t fa[MT][4], fb[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) load_a_frag<kI8, kRowA>(fa[mt], tA, wm * WTM + mt * 16, kk, lane);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int cbase = wn * WTN + nt * 8;
        ldmatrix_x2(fb[nt], tB + (cbase + (lane & 7)) * kRow16 + (kk + ((lane >> 3) & 1) * 8) * 2);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma16816<kBf16>(acc[mt][nt], fa[mt], fb[nt]);
    }
    // Prefetch tile j + STAGES - 1 into the buffer computed in the previous iteration (every
    // thread has passed this iteration's barrier, so none still reads it).
    const int jn = j + STAGES - 1;
    if (jn < j1) {
      load_a((jn - j0) % STAGES, jn);
      load_b((jn - j0) % STAGES, jn);
    }
    cp_async_commit();
    // A finished slice joins the total: the first as it is, later ones added in order.
    if constexpr (FOLD) {
      if (j + 1 == j1 || (j + 1) % tiles_slice == 0) {
        const int s = j / tiles_slice;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int c = col0 + wn * WTN + nt * 8 + 2 * t4;
          const float i0 = inv_of(c, s), i1 = inv_of(c + 1, s);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const float v = acc[mt][nt][q] * (q & 1 ? i1 : i0);
              tot[mt][nt][q] = have_total ? tot[mt][nt][q] + v : v;
              acc[mt][nt][q] = 0.0f;
            }
        }
        have_total = true;
      }
    }
  }
  cp_async_wait<0>();

  // Element (row, col) of the fragment: q = 0, 1: row g, cols 2 t4, 2 t4 + 1; q = 2, 3: row g + 8.
  const bool split = !FOLD && a.slices > 1;
  const int s = FOLD ? 0 : int(blockIdx.z);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int c = col0 + wn * WTN + nt * 8 + 2 * t4;  // even: c and c + 1
    const float i0 = FOLD ? 1.0f : inv_of(c, s), i1 = FOLD ? 1.0f : inv_of(c + 1, s);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row0 + wm * WTM + mt * 16 + g + h * 8;
        if (r >= R) continue;
        float v0, v1;
        if constexpr (FOLD) v0 = tot[mt][nt][2 * h], v1 = tot[mt][nt][2 * h + 1];
        else v0 = acc[mt][nt][2 * h] * i0, v1 = acc[mt][nt][2 * h + 1] * i1;
        if (split) {
          float* p = jb.part + int64_t(s) * a.nb * R;
          if (c < a.nb) p[int64_t(c) * R + r] = v0;
          if (c + 1 < a.nb) p[int64_t(c + 1) * R + r] = v1;
        } else if (kBf16) {
          if (c + 1 < a.nb) finish(jb, true, c / 2, r, v0, v1);
        } else {
          if (c < a.n) finish(jb, false, c, r, v0, 0.0f);
          if (c + 1 < a.n) finish(jb, false, c + 1, r, v1, 0.0f);
        }
      }
  }
}

// The partials of a split launch, added slice by slice in order, then the end (fold_element).
__global__ void imma_fold_kernel(const Args a, bool bf16) {
  pdl_begin();
  const Job& j = a.job[0];
  const int64_t count = int64_t(a.n) * j.R;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    fold_element(a, j, int(i / j.R), int(i % j.R), bf16);
}

// ---- the plain kernel -----------------------------------------------------------------------

constexpr int kFmaRows = 32, kFmaTokens = 8, kFmaK = 32;

template <typename WT>
__global__ void __launch_bounds__(kFmaRows * kFmaTokens) ifma_kernel(const WT* W, const float* scales,
                                                                     const float* x, int R, int K, int n,
                                                                     bool relu2, float* y, GemvEpilogue ep) {
  pdl_begin();
  __shared__ float sw[kFmaRows][kFmaK + 1];
  __shared__ float sx[kFmaTokens][kFmaK];
  const int tr = threadIdx.x % kFmaRows, tt = threadIdx.x / kFmaRows;
  const int r = blockIdx.x * kFmaRows + tr, t = blockIdx.y * kFmaTokens + tt;
  float acc = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kFmaK) {
    // Rows of W and x staged with consecutive threads on consecutive k (coalesced).
    for (int i = threadIdx.x; i < kFmaRows * kFmaK; i += blockDim.x) {
      const int rr = blockIdx.x * kFmaRows + i / kFmaK, kk = k0 + i % kFmaK;
      float v = 0.0f;
      if (rr < R && kk < K) {
        if constexpr (std::is_same_v<WT, int8_t>) v = float(W[int64_t(rr) * K + kk]);
        else v = to_float(W[int64_t(rr) * K + kk]);
      }
      sw[i / kFmaK][i % kFmaK] = v;
    }
    for (int i = threadIdx.x; i < kFmaTokens * kFmaK; i += blockDim.x) {
      const int tk = blockIdx.y * kFmaTokens + i / kFmaK, kk = k0 + i % kFmaK;
      sx[i / kFmaK][i % kFmaK] = tk < n && kk < K ? input(x, int64_t(tk) * K + kk, relu2) : 0.0f;
    }
    __syncthreads();
    const int kn = min(kFmaK, K - k0);
    for (int k = 0; k < kn; ++k) acc = fmaf(sx[tt][k], sw[tr][k], acc);
    __syncthreads();
  }
  if (r < R && t < n) ep.store(y, int64_t(t) * R + r, scales ? acc * scales[r] : acc);
}

// ---- plans ----------------------------------------------------------------------------------

enum class Cfg { Plain, Small, Large, LargeFold };

struct Plan {
  Cfg cfg = Cfg::Plain;
  int nb = 0;        // input columns
  int slice = 0, slices = 1;
  size_t xb_bytes = 0, inv_bytes = 0, part_bytes = 0;
  size_t tickets = 0;
  int row_tiles = 0;  // of the small kernel
};

size_t round256(size_t b) { return (b + 255) / 256 * 256; }

bool mma_takes(const WeightView& W) {
  const bool aligned = (reinterpret_cast<uintptr_t>(W.data) & 15u) == 0;
  if (!aligned || W.rows > INT32_MAX || W.cols > INT32_MAX) return false;
  if (W.dtype == DType::F16 || W.dtype == DType::BF16) return W.cols % 8 == 0;
  if (W.dtype == DType::I8) return W.cols % 16 == 0 && W.scales;
  return false;
}

int sm_count_here() {
  int dev = 0, sms = 0;
  RWKVPP_CUDA_CHECK(cudaGetDevice(&dev));
  RWKVPP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

constexpr int kLargeBM = 128;

Plan plan_for(const WeightView& W, int64_t n) {
  Plan p;
  if (!mma_takes(W)) return p;  // the plain kernel needs no scratch
  const int64_t R = W.rows, K = W.cols;
  const bool bf16 = W.dtype == DType::BF16;
  p.nb = int(bf16 ? 2 * n : n);
  p.slices = imma_slices(R, K);
  p.slice = int(((K + p.slices - 1) / p.slices + kBK - 1) / kBK * kBK);
  p.slices = int((K + p.slice - 1) / p.slice);
  const size_t split_part = p.slices > 1 ? size_t(p.slices) * size_t(p.nb) * size_t(R) * 4 : 0;
  if (p.nb <= kImmaSmallColumns && p.slice <= kImmaSmallMaxSlice) {
    p.cfg = Cfg::Small;
    p.row_tiles = int((R + imma_small_row_tile() - 1) / imma_small_row_tile());
    p.part_bytes = round256(split_part);
    p.tickets = p.slices > 1 ? size_t(p.row_tiles) : 0;  // one column tile: BN >= nb
    return p;
  }
  p.xb_bytes = round256(size_t(p.nb) * size_t(K) * 2);
  p.inv_bytes = bf16 ? 0 : round256(size_t(n) * size_t(p.slices) * 4);
  static const int sms = sm_count_here();
  const int64_t tiles = ((R + kLargeBM - 1) / kLargeBM) * ((p.nb + 63) / 64);
  p.cfg = tiles >= 2 * sms || p.slices == 1 ? Cfg::LargeFold : Cfg::Large;
  if (p.cfg == Cfg::Large) p.part_bytes = round256(split_part);
  return p;
}

template <typename WT, int BM, int BN, int WM, int WN, int STAGES, bool FOLD>
void launch_imma(const Args& a, cudaStream_t s) {
  constexpr int kRowA = std::is_same_v<WT, int8_t> ? kRow8 : kRow16;
  constexpr size_t smem = size_t(STAGES) * (BM * kRowA + BN * kRow16);
  auto kernel = imma_kernel<WT, BM, BN, WM, WN, STAGES, FOLD>;
  if constexpr (smem + 1024 > 48 * 1024) {  // (room for static shared memory)
    static const bool set = [&] {
      RWKVPP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      return true;
    }();
    (void)set;
  }
  const dim3 grid(unsigned((a.job[0].R + BM - 1) / BM), unsigned((a.nb + BN - 1) / BN),
                  FOLD ? 1u : unsigned(a.slices));
  launch(kernel, grid, WM * WN * 32, smem, s, a);
  RWKVPP_CUDA_LAUNCHED("imma_kernel");
}

// RWKVPP_IMMA_TILE=128: the folding kernel on 128 x 128 tiles (warps of 64 x 32) instead of
// 128 x 64 (32 x 32): more MMAs per barrier, more registers. The results are the same.
bool wide_fold() { return env_options().cuda.imma_tile == 128; }

template <typename WT>
void run_large(Cfg cfg, const Args& a, cudaStream_t s) {
  if (cfg == Cfg::Large) return launch_imma<WT, kLargeBM, 128, 2, 4, 3, false>(a, s);
  if (wide_fold()) return launch_imma<WT, kLargeBM, 128, 2, 4, 3, true>(a, s);
  return launch_imma<WT, kLargeBM, 64, 4, 2, 4, true>(a, s);
}

template <typename WT>
void run_plain(const WeightView& W, const float* x, float* y, int64_t n, bool relu2,
               const GemvEpilogue& ep, cudaStream_t s) {
  const dim3 grid(unsigned((W.rows + kFmaRows - 1) / kFmaRows), unsigned((n + kFmaTokens - 1) / kFmaTokens));
  launch(ifma_kernel<WT>, grid, kFmaRows * kFmaTokens, 0, s, static_cast<const WT*>(W.data),
         W.dtype == DType::I8 ? W.scales : nullptr, x, int(W.rows), int(W.cols), int(n), relu2, y, ep);
  RWKVPP_CUDA_LAUNCHED("ifma_kernel");
}

void plain(const WeightView& W, const float* x, float* y, int64_t n, bool relu2, const GemvEpilogue& ep,
           cudaStream_t s) {
  switch (W.dtype) {
    case DType::F32: return run_plain<float>(W, x, y, n, relu2, ep, s);
    case DType::F16: return run_plain<__half>(W, x, y, n, relu2, ep, s);
    case DType::BF16: return run_plain<__nv_bfloat16>(W, x, y, n, relu2, ep, s);
    case DType::I8: return run_plain<int8_t>(W, x, y, n, relu2, ep, s);
    case DType::I4: break;
  }
  fail_msg("imma: int4 weights are not supported on CUDA");
}

void check_shape(const WeightView& W, int64_t n) {
  if (W.rows > INT32_MAX || W.cols > INT32_MAX || n > INT32_MAX / 2)
    fail_msg("imma: shape [" + std::to_string(W.rows) + ", " + std::to_string(W.cols) + "] x " +
             std::to_string(n) + " tokens is too large");
}

// Job i of `a` for product W (its scratch at `base`, laid out as plan p says).
Job job_for(const Plan& p, const WeightView& W, const float* x, float* y, const GemvEpilogue& ep,
            unsigned char* base, int* tickets) {
  Job j{};
  j.W = W.data;
  j.scales = W.dtype == DType::I8 ? W.scales : nullptr;
  j.x = x;
  j.xb = base;
  j.inv = reinterpret_cast<const float*>(base + p.xb_bytes);
  j.y = y;
  j.ep = ep;
  j.part = p.part_bytes ? reinterpret_cast<float*>(base + p.xb_bytes + p.inv_bytes) : nullptr;
  j.tickets = tickets;
  j.R = int(W.rows);
  return j;
}

}  // namespace

int imma_slices(int64_t R, int64_t K) {
  // About 512 blocks of 64 rows at one token (enough to keep an H100's memory busy), slices of
  // at least 256 k and at most 1024 (the small kernel keeps its slice of x in shared memory).
  // Depends on the shape only.
  const int64_t row_tiles = std::max<int64_t>(1, (R + 63) / 64);
  const int64_t want = std::max((512 + row_tiles - 1) / row_tiles, (K + 1023) / 1024);
  const int64_t most = std::min<int64_t>(imma_detail::kMaxSlices, std::max<int64_t>(1, K / 256));
  return int(std::clamp<int64_t>(want, 1, most));
}

ImmaNeeds imma_needs(const WeightView& W, int64_t n) {
  const Plan p = plan_for(W, n);
  return {p.xb_bytes + p.inv_bytes + p.part_bytes, p.tickets};
}

void imma(const WeightView& W, const float* x, float* y, int64_t n, bool relu_square_x,
          const GemvEpilogue& ep, void* scratch, int* tickets, cudaStream_t s) {
  if (n <= 0 || W.rows == 0) return;
  check_shape(W, n);
  const Plan p = plan_for(W, n);
  if (p.cfg == Cfg::Plain) return plain(W, x, y, n, relu_square_x, ep, s);
  auto* base = static_cast<unsigned char*>(scratch);
  Args a{};
  a.job[0] = job_for(p, W, x, y, ep, base, tickets);
  a.count = 1;
  a.tile_base[0] = 0;
  a.tile_base[1] = a.tile_base[2] = a.tile_base[3] = p.row_tiles;
  a.K = int(W.cols);
  a.n = int(n);
  a.nb = p.nb;
  a.slice = p.slice;
  a.slices = p.slices;
  a.relu2 = relu_square_x;
  if (p.cfg == Cfg::Small) return imma_small(a, W.dtype, s);
  if (W.dtype == DType::BF16) {
    launch(convert_bf16_kernel, unsigned(n), kConvThreads, 0, s, x, int(W.cols), relu_square_x,
           static_cast<__nv_bfloat16*>(scratch));
    RWKVPP_CUDA_LAUNCHED("convert_bf16_kernel");
  } else {
    launch(convert_f16_kernel, dim3(unsigned(n), unsigned(p.slices)), kConvThreads, 0, s, x, int(W.cols),
           p.slice, relu_square_x, static_cast<__half*>(scratch), const_cast<float*>(a.job[0].inv));
    RWKVPP_CUDA_LAUNCHED("convert_f16_kernel");
  }
  switch (W.dtype) {
    case DType::F16: run_large<__half>(p.cfg, a, s); break;
    case DType::BF16: run_large<__nv_bfloat16>(p.cfg, a, s); break;
    case DType::I8: run_large<int8_t>(p.cfg, a, s); break;
    case DType::F32:
    case DType::I4: break;
  }
  if (p.cfg == Cfg::Large && p.slices > 1) {
    launch(imma_fold_kernel, grid_for(n * W.rows, 256), 256, 0, s, a, W.dtype == DType::BF16);
    RWKVPP_CUDA_LAUNCHED("imma_fold_kernel");
  }
}

bool imma_group_takes(const WeightView* const* W, int count, int64_t n) {
  if (count < 2 || count > imma_detail::kMaxJobs || n <= 0) return false;
  const Plan p0 = plan_for(*W[0], n);
  if (p0.cfg != Cfg::Small) return false;
  for (int i = 1; i < count; ++i) {
    const Plan p = plan_for(*W[i], n);
    if (p.cfg != Cfg::Small || W[i]->dtype != W[0]->dtype || W[i]->cols != W[0]->cols ||
        p.slices != p0.slices || p.slice != p0.slice)
      return false;
  }
  return true;
}

void imma_group(const WeightView* const* W, const float* const* x, float* const* y,
                const GemvEpilogue* ep, int count, int64_t n, void* scratch, int* tickets,
                cudaStream_t s) {
  if (!imma_group_takes(W, count, n)) fail_msg("imma_group: these products cannot share a launch");
  Args a{};
  auto* base = static_cast<unsigned char*>(scratch);
  int tile = 0;
  for (int i = 0; i < count; ++i) {
    check_shape(*W[i], n);
    const Plan p = plan_for(*W[i], n);
    a.job[i] = job_for(p, *W[i], x[i], y[i], ep[i], base, tickets);
    base += p.xb_bytes + p.inv_bytes + p.part_bytes;
    tickets += p.tickets;
    a.tile_base[i] = tile;
    tile += p.row_tiles;
    if (i == 0) a.nb = p.nb, a.slice = p.slice, a.slices = p.slices;
  }
  for (int i = count; i <= imma_detail::kMaxJobs; ++i) a.tile_base[i] = tile;
  a.count = count;
  a.K = int(W[0]->cols);
  a.n = int(n);
  a.relu2 = false;
  imma_small(a, W[0]->dtype, s);
}

}  // namespace rwkvpp::cuda
