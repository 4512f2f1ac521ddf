// Batch-invariant products (see imma.cuh for the arithmetic contract).
//
// Kernels:
// - convert_*: one block per token row; its largest magnitude (a max: exact in any order) gives
//   the row's power-of-two scale; the row is written as fp16 (or as bf16 hi/lo pairs).
// - imma_kernel: a block computes a BM x BN tile of W rows x input columns. Its warps form a
//   WM x WN grid, each warp MT x NT tiles of m16n8k16. k tiles of 32 stream through STAGES
//   shared-memory buffers by cp.async (16-byte copies; rows past R and k past K are filled with
//   zeros); fp16/bf16 fragments come from ldmatrix, int8 ones are widened to fp16 from shared
//   memory (exact). Every k tile belongs to one slice (imma_slices); the block folds each
//   finished slice into its total (FOLD, or a block owning a single slice), and writes either
//   the final values or its slice's sums to the partials for imma_fold_kernel.
// - imma_fold_kernel: adds the partials of each element slice by slice, in order, then the end
//   of the contract (scale, hi + lo, epilogue).
// - ifma_kernel: fp32 weights and shapes the MMA kernels do not take: one thread per element, a
//   plain fma chain over k in order, tiles of W and x staged in shared memory.
#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/imma.cuh"

namespace rwkvpp::cuda {
namespace {

constexpr int kBK = 32;           // k per tile
constexpr int kRow16 = 80;        // bytes per shared row of a 16-bit tile: 64 + 16 of padding
constexpr int kRow8 = 48;         // bytes per shared row of an int8 tile: 32 + 16 of padding
constexpr int kConvThreads = 256;

// ---- conversion ---------------------------------------------------------------------------

__device__ __forceinline__ float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nwarps ? red[lane] : 0.0f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

__device__ __forceinline__ float input(const float* x, int64_t i, bool relu2) {
  const float v = x[i];
  if (!relu2) return v;
  const float r = fmaxf(v, 0.0f);
  return r * r;
}

// Row t of x as fp16 times 2^e, its largest magnitude brought into [2^14, 2^15); inv[t] = 2^-e.
__global__ void convert_f16_kernel(const float* x, int64_t K, bool relu2, __half* xh, float* inv) {
  pdl_begin();
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  const float* xr = x + t * K;
  float m = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, fabsf(input(xr, k, relu2)));
  m = block_max(m, red);
  int e = 0;
  if (m > 0.0f && isfinite(m)) {
    int ex;
    frexpf(m, &ex);  // m = f * 2^ex, f in [0.5, 1)
    e = max(-126, min(126, 15 - ex));
  }
  const float scale = ldexpf(1.0f, e);
  if (threadIdx.x == 0) inv[t] = ldexpf(1.0f, -e);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    xh[t * K + k] = __float2half_rn(input(xr, k, relu2) * scale);
}

// Row t of x as two bf16 rows of the product's input: 2t = hi = bf16(x), 2t + 1 = lo = bf16(x - hi).
__global__ void convert_bf16_kernel(const float* x, int64_t K, bool relu2, __nv_bfloat16* xb) {
  pdl_begin();
  const int64_t t = blockIdx.x;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = input(x, t * K + k, relu2);
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    xb[(2 * t) * K + k] = hi;
    xb[(2 * t + 1) * K + k] = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
}

// ---- the MMA kernel ---------------------------------------------------------------------------

struct ImmaArgs {
  const void* W;         // [R, K]
  const float* scales;   // int8: [R]; else null
  int R, K;
  const void* xb;        // [nb, K] fp16 or bf16
  int nb, n;             // input columns (n, or 2n for bf16 hi/lo), tokens
  const float* inv;      // [n]: 2^-e per token (fp16 and int8)
  float* y;              // [n, R]
  GemvEpilogue ep;
  float* part;           // [S, nb, R] slice sums (blocks owning one slice of several)
  int slice;             // k per slice (a multiple of kBK)
  int slices;            // S
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

// The end of the contract for element (token t, row r) from its total(s).
__device__ __forceinline__ void finish(const ImmaArgs& a, bool bf16, int t, int r, float total,
                                       float total_lo) {
  float v;
  if (bf16) {
    v = total + total_lo;
  } else {
    v = total * a.inv[t];
    if (a.scales) v = v * a.scales[r];
  }
  a.ep.store(a.y, int64_t(t) * a.R + r, v);
}

template <typename WT, int BM, int BN, int WM, int WN, int STAGES, bool FOLD>
__global__ void __launch_bounds__(WM * WN * 32) imma_kernel(const ImmaArgs a) {
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

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  const int row0 = blockIdx.x * BM, col0 = blockIdx.y * BN;
  const int K = a.K, R = a.R;
  const int tiles_all = (K + kBK - 1) / kBK, tiles_slice = a.slice / kBK;
  // The k tiles this block sums: every slice (FOLD), or slice blockIdx.z.
  const int j0 = FOLD ? 0 : int(blockIdx.z) * tiles_slice;
  const int j1 = FOLD ? tiles_all : min(tiles_all, j0 + tiles_slice);
  const auto* W = static_cast<const unsigned char*>(a.W);
  const auto* X = static_cast<const unsigned char*>(a.xb);

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

  // acc: the slice being summed; tot: the slices finished so far (FOLD only: a block that
  // sums one slice keeps it in acc).
  float acc[MT][NT][4], tot[FOLD ? MT : 1][FOLD ? NT : 1][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mt][nt][q] = 0.0f;
  bool have_total = false;

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
      for (int mt = 0; mt < MT; ++mt) {
        const int rbase = wm * WTM + mt * 16;
        if constexpr (kI8) {
          const int g = lane >> 2, t4 = lane & 3;
          const auto* r0 = reinterpret_cast<const int8_t*>(tA + (rbase + g) * kRowA + kk + 2 * t4);
          const auto* r1 = reinterpret_cast<const int8_t*>(tA + (rbase + g + 8) * kRowA + kk + 2 * t4);
          fa[mt][0] = i8x2_to_h2(r0);
          fa[mt][1] = i8x2_to_h2(r1);
          fa[mt][2] = i8x2_to_h2(r0 + 8);
          fa[mt][3] = i8x2_to_h2(r1 + 8);
        } else {
          ldmatrix_x4(fa[mt], tA + (rbase + (lane & 15)) * kRowA + (kk + (lane >> 4) * 8) * 2);
        }
      }
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
    const bool slice_end = j + 1 == j1 || (j + 1) % tiles_slice == 0;
    if (FOLD && slice_end) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            if constexpr (FOLD) {
              tot[mt][nt][q] = have_total ? tot[mt][nt][q] + acc[mt][nt][q] : acc[mt][nt][q];
              acc[mt][nt][q] = 0.0f;
            }
          }
      have_total = true;
    }
  }
  cp_async_wait<0>();

  // Element (row, col) of the fragment: q = 0, 1: row g, cols 2 t4, 2 t4 + 1; q = 2, 3: row g + 8.
  const int g = lane >> 2, t4 = lane & 3;
  const bool partial = !FOLD && a.slices > 1;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row0 + wm * WTM + mt * 16 + g + h * 8;
        const int c = col0 + wn * WTN + nt * 8 + 2 * t4;  // even: c and c + 1
        if (r >= R) continue;
        float v0, v1;
        if constexpr (FOLD) v0 = tot[mt][nt][2 * h], v1 = tot[mt][nt][2 * h + 1];
        else v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
        if (partial) {
          float* p = a.part + (int64_t(blockIdx.z) * a.nb) * R;
          if (c < a.nb) p[int64_t(c) * R + r] = v0;
          if (c + 1 < a.nb) p[int64_t(c + 1) * R + r] = v1;
        } else if (kBf16) {
          if (c + 1 < a.nb) finish(a, true, c / 2, r, v0, v1);
        } else {
          if (c < a.n) finish(a, false, c, r, v0, 0.0f);
          if (c + 1 < a.n) finish(a, false, c + 1, r, v1, 0.0f);
        }
      }
}

// Element (t, r): the partials of its column(s), slice by slice in order, then the end.
__global__ void imma_fold_kernel(const ImmaArgs a, bool bf16) {
  pdl_begin();
  const int64_t count = int64_t(a.n) * a.R;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int t = int(i / a.R), r = int(i % a.R);
    const int c = bf16 ? 2 * t : t;
    float tot = a.part[int64_t(c) * a.R + r], lo = 0.0f;
    if (bf16) lo = a.part[int64_t(c + 1) * a.R + r];
    for (int s = 1; s < a.slices; ++s) {
      const float* p = a.part + int64_t(s) * a.nb * a.R;
      tot = tot + p[int64_t(c) * a.R + r];
      if (bf16) lo = lo + p[int64_t(c + 1) * a.R + r];
    }
    finish(a, bf16, t, r, tot, lo);
  }
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

enum class Cfg { Plain, Small8, Small16, Small32, Large, LargeFold };

struct Plan {
  Cfg cfg = Cfg::Plain;
  int nb = 0;        // input columns
  int slice = 0, slices = 1;
  size_t xb_bytes = 0, inv_bytes = 0, part_bytes = 0;
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

Plan plan_for(const WeightView& W, int64_t n) {
  Plan p;
  if (!mma_takes(W)) return p;  // the plain kernel needs no scratch
  const int64_t R = W.rows, K = W.cols;
  const bool bf16 = W.dtype == DType::BF16;
  p.nb = int(bf16 ? 2 * n : n);
  p.slices = imma_slices(R, K);
  p.slice = int(((K + p.slices - 1) / p.slices + kBK - 1) / kBK * kBK);
  p.slices = int((K + p.slice - 1) / p.slice);
  p.xb_bytes = round256(size_t(p.nb) * size_t(K) * 2);
  p.inv_bytes = bf16 ? 0 : round256(size_t(n) * 4);
  if (p.nb <= 32) {
    p.cfg = p.nb <= 8 ? Cfg::Small8 : p.nb <= 16 ? Cfg::Small16 : Cfg::Small32;
  } else {
    static const int sms = sm_count_here();
    const int64_t tiles = ((R + 127) / 128) * ((p.nb + 63) / 64);
    p.cfg = tiles >= 2 * sms || p.slices == 1 ? Cfg::LargeFold : Cfg::Large;
  }
  if (p.cfg != Cfg::LargeFold && p.slices > 1) p.part_bytes = size_t(p.slices) * size_t(p.nb) * size_t(R) * 4;
  return p;
}

template <typename WT, int BM, int BN, int WM, int WN, int STAGES, bool FOLD>
void launch_imma(const ImmaArgs& a, cudaStream_t s) {
  constexpr int kRowA = std::is_same_v<WT, int8_t> ? kRow8 : kRow16;
  constexpr size_t smem = size_t(STAGES) * (BM * kRowA + BN * kRow16);
  auto kernel = imma_kernel<WT, BM, BN, WM, WN, STAGES, FOLD>;
  if constexpr (smem > 48 * 1024) {
    static const bool set = [&] {
      RWKVPP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      return true;
    }();
    (void)set;
  }
  const dim3 grid(unsigned((a.R + BM - 1) / BM), unsigned((a.nb + BN - 1) / BN), FOLD ? 1u : unsigned(a.slices));
  launch(kernel, grid, WM * WN * 32, smem, s, a);
  RWKVPP_CUDA_LAUNCHED("imma_kernel");
}

template <typename WT>
void run_mma(Cfg cfg, const ImmaArgs& a, cudaStream_t s) {
  switch (cfg) {
    case Cfg::Small8: return launch_imma<WT, 64, 8, 4, 1, 4, false>(a, s);
    case Cfg::Small16: return launch_imma<WT, 64, 16, 4, 1, 4, false>(a, s);
    case Cfg::Small32: return launch_imma<WT, 64, 32, 4, 1, 4, false>(a, s);
    case Cfg::Large: return launch_imma<WT, 128, 128, 2, 4, 3, false>(a, s);
    case Cfg::LargeFold: return launch_imma<WT, 128, 64, 4, 2, 4, true>(a, s);
    case Cfg::Plain: break;
  }
}

template <typename WT>
void run_plain(const WeightView& W, const float* x, float* y, int64_t n, bool relu2,
               const GemvEpilogue& ep, cudaStream_t s) {
  const dim3 grid(unsigned((W.rows + kFmaRows - 1) / kFmaRows), unsigned((n + kFmaTokens - 1) / kFmaTokens));
  launch(ifma_kernel<WT>, grid, kFmaRows * kFmaTokens, 0, s, static_cast<const WT*>(W.data),
         W.dtype == DType::I8 ? W.scales : nullptr, x, int(W.rows), int(W.cols), int(n), relu2, y, ep);
  RWKVPP_CUDA_LAUNCHED("ifma_kernel");
}

}  // namespace

int imma_slices(int64_t R, int64_t K) {
  // About 512 blocks of 64 rows at one token (enough to keep an H100's memory busy), slices of
  // at least 256 k. Depends on the shape only.
  const int64_t row_tiles = std::max<int64_t>(1, (R + 63) / 64);
  const int64_t want = (512 + row_tiles - 1) / row_tiles;
  return int(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, K / 256)));
}

size_t imma_scratch_bytes(const WeightView& W, int64_t n) {
  const Plan p = plan_for(W, n);
  return p.xb_bytes + p.inv_bytes + p.part_bytes;
}

void imma(const WeightView& W, const float* x, float* y, int64_t n, bool relu_square_x,
          const GemvEpilogue& ep, void* scratch, cudaStream_t s) {
  if (n <= 0 || W.rows == 0) return;
  if (W.rows > INT32_MAX || W.cols > INT32_MAX || n > INT32_MAX / 2)
    fail_msg("imma: shape [" + std::to_string(W.rows) + ", " + std::to_string(W.cols) + "] x " +
             std::to_string(n) + " tokens is too large");
  const Plan p = plan_for(W, n);
  if (p.cfg == Cfg::Plain) {
    switch (W.dtype) {
      case DType::F32: return run_plain<float>(W, x, y, n, relu_square_x, ep, s);
      case DType::F16: return run_plain<__half>(W, x, y, n, relu_square_x, ep, s);
      case DType::BF16: return run_plain<__nv_bfloat16>(W, x, y, n, relu_square_x, ep, s);
      case DType::I8: return run_plain<int8_t>(W, x, y, n, relu_square_x, ep, s);
    }
    return;
  }
  auto* base = static_cast<unsigned char*>(scratch);
  ImmaArgs a{};
  a.W = W.data;
  a.scales = W.dtype == DType::I8 ? W.scales : nullptr;
  a.R = int(W.rows);
  a.K = int(W.cols);
  a.xb = base;
  a.nb = p.nb;
  a.n = int(n);
  a.inv = reinterpret_cast<const float*>(base + p.xb_bytes);
  a.y = y;
  a.ep = ep;
  a.part = p.part_bytes ? reinterpret_cast<float*>(base + p.xb_bytes + p.inv_bytes) : nullptr;
  a.slice = p.slice;
  a.slices = p.slices;
  if (W.dtype == DType::BF16) {
    launch(convert_bf16_kernel, unsigned(n), kConvThreads, 0, s, x, W.cols, relu_square_x,
           static_cast<__nv_bfloat16*>(scratch));
    RWKVPP_CUDA_LAUNCHED("convert_bf16_kernel");
  } else {
    launch(convert_f16_kernel, unsigned(n), kConvThreads, 0, s, x, W.cols, relu_square_x,
           static_cast<__half*>(scratch), const_cast<float*>(a.inv));
    RWKVPP_CUDA_LAUNCHED("convert_f16_kernel");
  }
  switch (W.dtype) {
    case DType::F16: run_mma<__half>(p.cfg, a, s); break;
    case DType::BF16: run_mma<__nv_bfloat16>(p.cfg, a, s); break;
    case DType::I8: run_mma<int8_t>(p.cfg, a, s); break;
    case DType::F32: break;
  }
  if (a.part) {
    const int64_t count = n * W.rows;
    launch(imma_fold_kernel, grid_for(count, 256), 256, 0, s, a, W.dtype == DType::BF16);
    RWKVPP_CUDA_LAUNCHED("imma_fold_kernel");
  }
}

}  // namespace rwkvpp::cuda
