// Matrix products (see matmul.cuh): GEMV dispatch for few tokens, cuBLAS for more, and the
// activation conversion kernels the 16-bit cuBLAS path needs. int8 weights: the GEMV up to
// kI8GemvMaxTokens (in passes of 8 tokens), else tiles dequantised to fp16 (int8.cuh) and the
// fp16 cuBLAS path, with the row scales applied to y at the end.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "common/env_options.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/int8.cuh"
#include "kernels/cuda/matmul.cuh"

#define RWKVPP_CUBLAS_CHECK(call)                                                          \
  do {                                                                                     \
    cublasStatus_t st_ = (call);                                                           \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                      \
      ::rwkvpp::cuda::fail_cublas(int(st_), #call, __FILE__, __LINE__);                    \
  } while (0)

namespace rwkvpp::cuda {
namespace {

constexpr int kThreads = 256;

// Rows per warp (RPW) and chunks in flight per lane (UNROLL) of the vector GEMV for NT tokens.
// More rows let each x value fetched from L1 serve more weights (x bytes per weight byte ~
// 2 * NT / RPW for 16-bit W), at the price of registers and of fewer, larger work units.
// Chosen from the kernel lab's measurements on an H100 (docs/perf.md, GEMV).
// Best per token count on W [20480, 5120], [5120, 20480] and [5120, 5120] (fp16 and bf16):
//   n:    1  2  3  4  5  6  7  8
//   RPW:  1  2  2  4  4  8  4  8
//   UNROLL 2 for n = 1, else 1.
constexpr int gemv_rows_per_warp(int nt) {
  return nt == 1 ? 1 : nt <= 3 ? 2 : (nt == 6 || nt == 8) ? 8 : 4;
}
constexpr int gemv_unroll(int nt) { return nt == 1 ? 2 : 1; }
// int8 unpacks 16 weights per load, so each weight byte needs 4 bytes of x from L1 at one row
// per warp (fp16: 2): at 3 TB/s of weights that L1 traffic, not DRAM, bounds the kernel (the
// first H100 run, one row per warp: 14B batch 1 at 2.5x its halved floor). Four rows per warp
// cut it to 1 byte of x per weight byte; registers stay as for fp16's 8 rows.
template <typename T>
constexpr int gemv_rows(int nt) {
  return kRowScaled<T> ? 4 : gemv_rows_per_warp(nt);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Warps per row group of the vector GEMV (gemv.cuh, WPR) for one or two tokens, from the kernel
// lab's table on an H100 (docs/perf.md, fourth session): two tokens 4; one token of int8 2 (its
// unpacking wants more warps; 4 and 8 were slower on the 14B shapes; with the pipelined loop 1
// was faster in the lab on 5120-row products but slower end to end, sixth session); one token
// of fp16, bf16 or fp32 doubled from 1 while the grid has fewer than kGemvWarpsPerSm warps per
// SM (1.5B's 2048-row products: 4; 14B's, 5120 rows and more: 1, where 2 was 8-10 % slower).
// Never more than leaves each lane UNROLL chunks of its rows. RWKVPP_GEMV_WPR=1|2|4|8 fixes it
// (measurements).
constexpr int kGemvWarpsPerSm = 32;

int sm_count() {
  static int cached[64] = {};
  int dev = 0;
  RWKVPP_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  if (cached[dev] == 0)
    RWKVPP_CUDA_CHECK(cudaDeviceGetAttribute(&cached[dev], cudaDevAttrMultiProcessorCount, dev));
  return cached[dev];
}

int gemv_wpr(int nt, bool row_scaled, int64_t rows, int K, int pack, int rpw, int unroll) {
  const int forced = env_options().cuda.gemv_wpr;  // 0, or 1, 2, 4 or 8
  const int64_t nchunk = K / pack;
  auto fits = [&](int w) { return nchunk >= int64_t(32) * w * unroll; };
  int wpr = forced ? forced : nt == 2 ? 4 : row_scaled ? 2 : 1;
  if (!forced && nt == 1 && !row_scaled) {
    const int64_t target = int64_t(sm_count()) * kGemvWarpsPerSm, groups = (rows + rpw - 1) / rpw;
    while (wpr < kGemvWarps && groups * wpr < target && fits(2 * wpr)) wpr *= 2;
  }
  while (wpr > 1 && !fits(wpr)) wpr /= 2;
  return wpr;
}

// The one-token loop (gemv.cuh, PIPE): plain, two chunks per lane loaded, then used (UNROLL 2);
// or pipelined, one chunk per lane, the next one's loads issued before it is used (the same
// registers). Pipelined for int8 (14B batch 1 on an H100: 5.49 / 5.49 ms against 5.70), plain
// for the others (1.5B fp16: 1.36 / 1.36 ms against 1.31 / 1.32; two chunks pipelined, twice
// the registers, lost everywhere: docs/perf.md, sixth session). RWKVPP_GEMV_PIPE=0|1 fixes it.
bool gemv_pipelined(bool row_scaled) {
  const int forced = env_options().cuda.gemv_pipe;  // -1, 0 or 1
  return forced == 0 || forced == 1 ? forced == 1 : row_scaled;
}

// Calls f(integral_constant UNROLL, bool_constant PIPE) for NT tokens of T: (1, true) for a
// pipelined one-token loop, (gemv_unroll(NT), false) otherwise.
template <typename T, int NT, typename F>
void with_loop(F&& f) {
  if constexpr (NT == 1) {
    if (gemv_pipelined(kRowScaled<T>)) return f(std::integral_constant<int, 1>{}, std::true_type{});
  }
  f(std::integral_constant<int, gemv_unroll(NT)>{}, std::false_type{});
}

// Calls f(UNROLL, WPR, PIPE), each a std::integral_constant, with the vector GEMV's shape for
// NT tokens of T over `rows` rows of K: the loop of with_loop and WPR chosen at run time (one
// or two tokens; more tokens bring enough rows of work per warp: WPR 1).
template <typename T, int NT, typename F>
void with_gemv_shape(int64_t rows, int K, F&& f) {
  with_loop<T, NT>([&](auto uc, auto pc) {
    if constexpr (NT <= 2) {
      constexpr int u = decltype(uc)::value;
      switch (gemv_wpr(NT, kRowScaled<T>, rows, K, Pack16<T>::n, gemv_rows<T>(NT), u)) {
        case 2:
          return f(uc, std::integral_constant<int, 2>{}, pc);
        case 4:
          return f(uc, std::integral_constant<int, 4>{}, pc);
        case 8:
          return f(uc, std::integral_constant<int, 8>{}, pc);
        default:
          break;
      }
    }
    f(uc, std::integral_constant<int, 1>{}, pc);
  });
}

template <typename T, int NT>
void launch_vec(const T* W, const float* x, float* y, int R, int K, const float* scales,
                cudaStream_t s, const GemvEpilogue& ep) {
  with_gemv_shape<T, NT>(R, K, [&](auto u, auto w, auto p) {
    launch_gemv_vec<T, NT, gemv_rows<T>(NT), decltype(u)::value, decltype(w)::value,
                    decltype(p)::value>(W, x, y, R, K, s, scales, ep);
  });
}

template <typename T, int NT>
void gemv_nt(const T* W, const float* x, float* y, int R, int K, const float* scales,
             cudaStream_t s, const GemvEpilogue& ep) {
  if (K % Pack16<T>::n == 0 && aligned16(W) && aligned16(x))
    launch_vec<T, NT>(W, x, y, R, K, scales, s, ep);
  else
    launch_gemv_scalar<T, NT>(W, x, y, R, K, s, scales, ep);
}

template <typename T>
void gemv(const T* W, const float* x, float* y, int R, int K, int n, cudaStream_t s,
          const float* scales = nullptr, const GemvEpilogue& ep = {}) {
  switch (n) {
    case 1: gemv_nt<T, 1>(W, x, y, R, K, scales, s, ep); break;
    case 2: gemv_nt<T, 2>(W, x, y, R, K, scales, s, ep); break;
    case 3: gemv_nt<T, 3>(W, x, y, R, K, scales, s, ep); break;
    case 4: gemv_nt<T, 4>(W, x, y, R, K, scales, s, ep); break;
    case 5: gemv_nt<T, 5>(W, x, y, R, K, scales, s, ep); break;
    case 6: gemv_nt<T, 6>(W, x, y, R, K, scales, s, ep); break;
    case 7: gemv_nt<T, 7>(W, x, y, R, K, scales, s, ep); break;
    case 8: gemv_nt<T, 8>(W, x, y, R, K, scales, s, ep); break;
    default: fail_msg("gemv: " + std::to_string(n) + " tokens is more than it handles");
  }
  RWKVPP_CUDA_LAUNCHED("gemv_kernel");
}

// Converting fp32 inputs to fp16 for cuBLAS, each scaled by a power of two so that its largest
// magnitude lands in [2^14, 2^15) (fp16 overflows at 65504; activations of deep layers exceed
// that). Two launches for up to three inputs: block maxima, then each block reduces them (in a
// fixed order: the result does not depend on timing) and converts its share. A power-of-two
// scale is exact, so the fp16 values are those of an unscaled rounding wherever that stays in
// fp16's normal range. RELU2: the input is relu(x)^2, computed on the fly (as Unary::ReluSquare).
constexpr int kConstAlpha = 0, kConstZero = kMaxConvJobs, kConstOne = kMaxConvJobs + 1, kConstPartials = 64;
constexpr int kAmaxBlocks = 1024;  // most block maxima per input
constexpr unsigned kConvertBlocks = 4096;  // most blocks per input of the conversion
static_assert(kConstOne < kConstPartials && kConstPartials + kMaxConvJobs * kAmaxBlocks <= kMatmulConsts);

struct ConvJobs {
  const float* x[kMaxConvJobs];
  __half* out[kMaxConvJobs];
  int64_t count[kMaxConvJobs];
};

// Job blockIdx.y's input, output and count, selected with constant indices (no local copy of
// the parameters).
struct ConvJob {
  const float* x;
  __half* out;
  int64_t count;
};
__device__ __forceinline__ ConvJob conv_job(const ConvJobs& jobs) {
  ConvJob c{jobs.x[0], jobs.out[0], jobs.count[0]};
#pragma unroll
  for (int i = 1; i < kMaxConvJobs; ++i)
    if (blockIdx.y == unsigned(i)) c = {jobs.x[i], jobs.out[i], jobs.count[i]};
  return c;
}

template <bool RELU2>
__device__ __forceinline__ float conv_in(float v) {
  if constexpr (RELU2) {
    const float r = fmaxf(v, 0.0f);
    return r * r;
  }
  return v;
}

// Whether the 4-wide loops apply: count a multiple of 4, x 16-byte and out 8-byte aligned.
__device__ __forceinline__ bool vec4_ok(const float* x, const __half* out, int64_t count) {
  return (count & 3) == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
         (reinterpret_cast<uintptr_t>(out) & 7) == 0;
}

// Max of v over the block (v >= 0; NaNs were skipped by fmaxf); every thread gets it.
__device__ float block_max(float v) {
  __shared__ float part[32];
  __shared__ float result;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) result = v;
  }
  __syncthreads();
  return result;
}

// Block (b, j) writes the largest |input j| over its grid-stride share to partials[j * G + b].
template <bool RELU2>
__global__ void amax_blocks_kernel(ConvJobs jobs, float* partials) {
  pdl_begin();
  const int j = blockIdx.y;
  const ConvJob job = conv_job(jobs);
  const float* x = job.x;
  const int64_t count = job.count;
  float m = 0.0f;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  if (vec4_ok(x, nullptr, count)) {
    const auto* x4 = reinterpret_cast<const float4*>(x);
    for (int64_t i = first; i < count / 4; i += step) {
      const float4 v = x4[i];
      m = fmaxf(fmaxf(m, fabsf(conv_in<RELU2>(v.x))), fabsf(conv_in<RELU2>(v.y)));
      m = fmaxf(fmaxf(m, fabsf(conv_in<RELU2>(v.z))), fabsf(conv_in<RELU2>(v.w)));
    }
  } else {
    for (int64_t i = first; i < count; i += step) m = fmaxf(m, fabsf(conv_in<RELU2>(x[i])));
  }
  m = block_max(m);
  if (threadIdx.x == 0) partials[j * gridDim.x + blockIdx.x] = m;
}

// out_j[i] = in_j[i] / scale_j in fp16, scale_j = 2^(e - 14) for e = floor(log2(amax)), amax
// over input j's G block maxima (SHARED: over all `njobs` inputs'); block (0, j) stores
// scale_j to alphas[j] for the GEMM to multiply back.
template <bool RELU2, bool SHARED>
__global__ void convert_f16_kernel(ConvJobs jobs, const float* partials, int G, int njobs,
                                   float* alphas) {
  pdl_begin();
  const int j = blockIdx.y;
  const int lo = SHARED ? 0 : j * G, hi = SHARED ? njobs * G : (j + 1) * G;
  float m = 0.0f;
  for (int i = lo + int(threadIdx.x); i < hi; i += int(blockDim.x)) m = fmaxf(m, partials[i]);
  const float amax = block_max(m);
  float scale = 1.0f, inv = 1.0f;
  if (amax > 0.0f && isfinite(amax)) {
    const int e = max(-100, min(100, ilogbf(amax)));
    scale = ldexpf(1.0f, e - 14);
    inv = ldexpf(1.0f, 14 - e);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) alphas[j] = scale;
  const ConvJob job = conv_job(jobs);
  const float* x = job.x;
  __half* out = job.out;
  const int64_t count = job.count;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  if (vec4_ok(x, out, count)) {
    const auto* x4 = reinterpret_cast<const float4*>(x);
    auto* o2 = reinterpret_cast<__half2*>(out);
    for (int64_t i = first; i < count / 4; i += step) {
      const float4 v = x4[i];
      o2[2 * i] = __floats2half2_rn(conv_in<RELU2>(v.x) * inv, conv_in<RELU2>(v.y) * inv);
      o2[2 * i + 1] = __floats2half2_rn(conv_in<RELU2>(v.z) * inv, conv_in<RELU2>(v.w) * inv);
    }
  } else {
    for (int64_t i = first; i < count; i += step) out[i] = __float2half_rn(conv_in<RELU2>(x[i]) * inv);
  }
}

// The two launches for `njobs` inputs; consts[kConstAlpha + j] receives input j's scale.
void convert_x_f16(const ConvJobs& jobs, int njobs, bool shared, bool relu2, float* consts,
                   cudaStream_t s) {
  int64_t most = 0;
  for (int j = 0; j < njobs; ++j) most = std::max(most, jobs.count[j]);
  // Blocks for 4 values per thread (the 4-wide loops; the scalar ones stride further): the
  // maxima with ~8 loads per thread, few enough that each conversion block reads them cheaply.
  const unsigned g = grid_for((most + 3) / 4, kThreads);
  const unsigned ga = std::max(1u, std::min<unsigned>((g + 7) / 8, kAmaxBlocks));
  float* partials = consts + kConstPartials;
  const dim3 grid_a(ga, unsigned(njobs)), grid_c(std::min(g, kConvertBlocks), unsigned(njobs));
  if (relu2)
    launch(amax_blocks_kernel<true>, grid_a, kThreads, 0, s, jobs, partials);
  else
    launch(amax_blocks_kernel<false>, grid_a, kThreads, 0, s, jobs, partials);
  RWKVPP_CUDA_LAUNCHED("amax_blocks_kernel");
  float* alphas = consts + kConstAlpha;
  if (relu2 && shared)
    launch(convert_f16_kernel<true, true>, grid_c, kThreads, 0, s, jobs, partials, int(ga), njobs,
           alphas);
  else if (relu2)
    launch(convert_f16_kernel<true, false>, grid_c, kThreads, 0, s, jobs, partials, int(ga), njobs,
           alphas);
  else if (shared)
    launch(convert_f16_kernel<false, true>, grid_c, kThreads, 0, s, jobs, partials, int(ga), njobs,
           alphas);
  else
    launch(convert_f16_kernel<false, false>, grid_c, kThreads, 0, s, jobs, partials, int(ga), njobs,
           alphas);
  RWKVPP_CUDA_LAUNCHED("convert_f16_kernel");
}

// One input: x [count] -> xh, scale to consts[kConstAlpha].
void convert_x_f16(const float* x, __half* xh, int64_t count, bool relu2, float* consts,
                   cudaStream_t s) {
  ConvJobs j{};
  j.x[0] = x;
  j.out[0] = xh;
  j.count[0] = count;
  convert_x_f16(j, 1, false, relu2, consts, s);
}

// count inputs of cnt values each, converted into consecutive parts of xh.
ConvJobs scratch_jobs(const float* const* x, int count, int64_t cnt, __half* xh) {
  ConvJobs j{};
  for (int i = 0; i < count; ++i) {
    j.x[i] = x[i];
    j.out[i] = xh + i * cnt;
    j.count[i] = cnt;
  }
  return j;
}

// out[i] = bf16(x[i]), one thread per element (grid-stride).
__global__ void convert_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ out,
                                    int64_t count) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(x[i]);
}

__global__ void epilogue_kernel(const float* v, float* y, int64_t count, GemvEpilogue ep) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    ep.store(y, i, v[i]);
}

// x = hi + lo in bf16: hi[i] = bf16(x[i]), lo[i] = bf16(x[i] - hi[i]); out holds hi for the
// count values, then lo. One thread per element (grid-stride).
__global__ void split_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ out,
                                  int64_t count) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    out[i] = hi;
    out[count + i] = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
}

size_t round256(size_t b) { return (b + 255) / 256 * 256; }

// Rows of int8 W dequantised to fp16 per cuBLAS call: a tile of about 16 MiB (a multiple of
// 128 rows, at least 128), small enough to be still in L2 (50 MB on an H100) when the GEMM
// reads it back, and small next to the weights (the head of a 14B model whole would be 0.5 GB).
int64_t i8_tile_rows(const WeightView& W) {
  const int64_t rows = std::max<int64_t>(128, (int64_t(16) << 20) / std::max<int64_t>(W.cols * 2, 1) / 128 * 128);
  return std::min(rows, W.rows);
}

// int8 W, n > kI8GemvMaxTokens: y = (x * Wq^T) * scales, Wq the integers q in fp16 (exact);
// x scaled into fp16 as on the fp16 path. Scratch: [xh: n * K fp16][tile: rows * K fp16].
void matmul_i8_gemm(cublasHandle_t h, const WeightView& W, const float* x, float* y, int64_t n,
                    void* scratch, float* consts, bool relu2, cudaStream_t s) {
  const int64_t R = W.rows, K = W.cols, tile = i8_tile_rows(W);
  auto* xh = static_cast<__half*>(scratch);
  auto* wh = reinterpret_cast<__half*>(static_cast<char*>(scratch) + round256(size_t(n * K) * 2));
  convert_x_f16(x, xh, n * K, relu2, consts, s);
  const float* alpha = consts + kConstAlpha;
  const float* beta = consts + kConstZero;
  const auto* q = static_cast<const int8_t*>(W.data);
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  for (int64_t r0 = 0; r0 < R && st == CUBLAS_STATUS_SUCCESS; r0 += tile) {
    const int64_t rb = std::min(tile, R - r0);
    try {
      dequant_i8_f16(q + r0 * K, wh, rb * K, s);
    } catch (...) {
      cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST);
      throw;
    }
    // Rows [r0, r0 + rb) of y^T (column-major [R, n], ld R) start at y + r0.
    st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(rb), int(n), int(K), alpha, wh, CUDA_R_16F,
                      int(K), xh, CUDA_R_16F, int(K), beta, y + r0, CUDA_R_32F, int(R),
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  }
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  RWKVPP_CUBLAS_CHECK(st);
  binary_row(Binary::Mul, y, W.scales, y, n, R, s);
}

}  // namespace

size_t matmul_scratch_bytes(const WeightView& W, int64_t n) {
  if (W.dtype == DType::I8) {
    if (n <= kI8GemvMaxTokens) return 0;
    return round256(size_t(n) * size_t(W.cols) * 2) + size_t(i8_tile_rows(W)) * size_t(W.cols) * 2;
  }
  if (n <= kGemvMaxTokens || W.dtype == DType::F32) return 0;
  if (W.dtype == DType::BF16 && n <= kBf16SplitMaxTokens)  // [hi; lo] in bf16, then y_hi, y_lo
    return round256(size_t(2 * n) * size_t(W.cols) * 2) + size_t(2 * n) * size_t(W.rows) * 4;
  return size_t(n) * size_t(W.cols) * 2;
}

void init_matmul_consts(float* consts, cudaStream_t s) {
  float c[kConstOne + 1] = {};
  c[kConstOne] = 1.0f;
  RWKVPP_CUDA_CHECK(cudaMemcpyAsync(consts, c, sizeof c, cudaMemcpyHostToDevice, s));
  RWKVPP_CUDA_CHECK(cudaStreamSynchronize(s));
}

bool matmul_folds(const WeightView& W, int64_t n, const MatmulOpts& o) {
  if (W.dtype == DType::F16) return n > kGemvMaxTokens;
  if (W.dtype == DType::I8) return !o.accumulate && n > kI8GemvMaxTokens;
  return !o.relu_square_x && !o.accumulate;
}

void apply_epilogue(const float* v, float* y, int64_t count, const GemvEpilogue& ep,
                    cudaStream_t s) {
  if (count == 0) return;
  launch(epilogue_kernel, grid_for(count, kThreads), kThreads, 0, s, v, y, count, ep);
  RWKVPP_CUDA_LAUNCHED("epilogue_kernel");
}

void matmul(cublasHandle_t h, const WeightView& W, const float* x, float* y, int64_t n,
            void* scratch, float* consts, cudaStream_t s, const MatmulOpts& o) {
  const int64_t R = W.rows, K = W.cols;
  if (n == 0 || R == 0) return;
  if ((o.relu_square_x || o.accumulate) && !matmul_folds(W, n, o))
    fail_msg("matmul: options it does not fold for this dtype and " + std::to_string(n) + " tokens");
  if (R > INT32_MAX || K > INT32_MAX || n > INT32_MAX)
    fail_msg("matmul: shape [" + std::to_string(R) + ", " + std::to_string(K) + "] x " +
             std::to_string(n) + " tokens is too large");
  if (K == 0) {
    if (!o.accumulate) RWKVPP_CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(n * R) * sizeof(float), s));
    return;
  }
  if (W.dtype == DType::I8) {
    if (!W.scales) fail_msg("matmul: int8 weights without their row scales");
    if (n > kI8GemvMaxTokens) return matmul_i8_gemm(h, W, x, y, n, scratch, consts, o.relu_square_x, s);
    // Passes of up to 8 tokens, each reading W once (1 byte per weight): for 9..16 tokens two
    // passes move 2 bytes per weight, as the fp16 path's cuBLAS call does, against ~3 for
    // dequantise + cuBLAS (docs/cuda.md, int8).
    for (int64_t t0 = 0; t0 < n; t0 += kGemvMaxTokens)
      gemv(static_cast<const int8_t*>(W.data), x + t0 * K, y + t0 * R, int(R), int(K),
           int(std::min(kGemvMaxTokens, n - t0)), s, W.scales);
    return;
  }
  if (n <= kGemvMaxTokens && gemv_with_epilogue(W, x, y, n, {}, s)) return;
  RWKVPP_CUBLAS_CHECK(cublasSetStream(h, s));
  const float one = 1.0f, zero = 0.0f;
  if (W.dtype == DType::F32) {
    // y^T [R, n] (column-major, ld R) = W^T (W row-major [R, K] is column-major [K, R]) * x^T.
    RWKVPP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(n), int(K), &one,
                                     W.data, CUDA_R_32F, int(K), x, CUDA_R_32F, int(K), &zero, y,
                                     CUDA_R_32F, int(R), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  const int64_t count = n * K;
  const unsigned g = grid_for(count, kThreads);
  if (W.dtype == DType::BF16 && n <= kBf16SplitMaxTokens) {
    auto* xs = static_cast<__nv_bfloat16*>(scratch);
    float* ys = reinterpret_cast<float*>(static_cast<char*>(scratch) +
                                         round256(size_t(2 * count) * 2));
    launch(split_bf16_kernel, g, kThreads, 0, s, x, xs, count);
    RWKVPP_CUDA_LAUNCHED("split_bf16_kernel");
    RWKVPP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(2 * n), int(K), &one,
                                     W.data, CUDA_R_16BF, int(K), xs, CUDA_R_16BF, int(K), &zero,
                                     ys, CUDA_R_32F, int(R), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
    binary(Binary::Add, ys, ys + n * R, y, n * R, s);
    return;
  }
  if (W.dtype == DType::BF16) {
    auto* xb = static_cast<__nv_bfloat16*>(scratch);
    launch(convert_bf16_kernel, g, kThreads, 0, s, x, xb, count);
    RWKVPP_CUDA_LAUNCHED("convert_bf16_kernel");
    RWKVPP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(n), int(K), &one,
                                     W.data, CUDA_R_16BF, int(K), xb, CUDA_R_16BF, int(K), &zero,
                                     y, CUDA_R_32F, int(R), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
    return;
  }
  // fp16: scale into range on the device, GEMM with alpha = scale from device memory (and
  // beta = 1 from there when accumulating).
  auto* xh = static_cast<__half*>(scratch);
  const float* alpha = consts + kConstAlpha;
  const float* beta = consts + (o.accumulate ? kConstOne : kConstZero);
  convert_x_f16(x, xh, count, o.relu_square_x, consts, s);
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
  const cublasStatus_t st =
      cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(n), int(K), alpha, W.data, CUDA_R_16F,
                   int(K), xh, CUDA_R_16F, int(K), beta, y, CUDA_R_32F, int(R),
                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  RWKVPP_CUBLAS_CHECK(st);
}

bool gemv_with_epilogue(const WeightView& W, const float* x, float* y, int64_t n,
                        const GemvEpilogue& ep, cudaStream_t s) {
  const int64_t R = W.rows, K = W.cols;
  if (n < 1 || n > kGemvMaxTokens || K == 0 || R > INT32_MAX || K > INT32_MAX) return false;
  switch (W.dtype) {
    case DType::F32: gemv(static_cast<const float*>(W.data), x, y, int(R), int(K), int(n), s, nullptr, ep); break;
    case DType::F16: gemv(static_cast<const __half*>(W.data), x, y, int(R), int(K), int(n), s, nullptr, ep); break;
    case DType::BF16:
      gemv(static_cast<const __nv_bfloat16*>(W.data), x, y, int(R), int(K), int(n), s, nullptr, ep);
      break;
    case DType::I8:
      if (!W.scales) fail_msg("matmul: int8 weights without their row scales");
      gemv(static_cast<const int8_t*>(W.data), x, y, int(R), int(K), int(n), s, W.scales, ep);
      break;
    case DType::I4: return false;
  }
  return true;
}

namespace {

template <typename T, int NT>
void launch_group_nt(const WeightView* const* W, const float* const* x, float* const* y,
                     const GemvEpilogue* ep, int count, cudaStream_t s) {
  GemvJobs<T> jobs{};
  int64_t rows = 0;
  int K = 0;  // the shape is chosen for the widest job; the kernel walks each job's own K
  for (int i = 0; i < count; ++i) {
    jobs.j[i] = {static_cast<const T*>(W[i]->data), x[i], y[i], W[i]->scales, ep[i],
                 int(W[i]->rows), int(W[i]->cols)};
    rows += W[i]->rows;
    K = std::max(K, int(W[i]->cols));
  }
  with_gemv_shape<T, NT>(rows, K, [&](auto u, auto w, auto p) {
    launch_gemv_vec_group<T, NT, gemv_rows<T>(NT), decltype(u)::value, decltype(w)::value,
                          decltype(p)::value>(jobs, count, s);
  });
}

template <typename T>
void launch_group(const WeightView* const* W, const float* const* x, float* const* y,
                  const GemvEpilogue* ep, int count, int n, cudaStream_t s) {
  switch (n) {
    case 1: launch_group_nt<T, 1>(W, x, y, ep, count, s); break;
    case 2: launch_group_nt<T, 2>(W, x, y, ep, count, s); break;
    case 3: launch_group_nt<T, 3>(W, x, y, ep, count, s); break;
    case 4: launch_group_nt<T, 4>(W, x, y, ep, count, s); break;
    case 5: launch_group_nt<T, 5>(W, x, y, ep, count, s); break;
    case 6: launch_group_nt<T, 6>(W, x, y, ep, count, s); break;
    case 7: launch_group_nt<T, 7>(W, x, y, ep, count, s); break;
    case 8: launch_group_nt<T, 8>(W, x, y, ep, count, s); break;
    default: break;
  }
  RWKVPP_CUDA_LAUNCHED("gemv_vec_group_kernel");
}

}  // namespace

bool gemv_group(const WeightView* const* W, const float* const* x, float* const* y,
                const GemvEpilogue* ep, int count, int64_t n, cudaStream_t s) {
  if (count < 1 || count > kGemvMaxJobs || n < 1 || n > kGemvMaxTokens) return false;
  const DType dt = W[0]->dtype;
  const int pack = dt == DType::F32 ? 4 : dt == DType::I8 ? 16 : 8;
  for (int i = 0; i < count; ++i) {
    const int64_t K = W[i]->cols;
    if (K == 0 || K % pack != 0 || K > INT32_MAX) return false;
    if (W[i]->dtype != dt || W[i]->rows > INT32_MAX || W[i]->rows < 1) return false;
    if (!aligned16(W[i]->data) || !aligned16(x[i])) return false;
    if (dt == DType::I8 && !W[i]->scales) return false;
  }
  switch (dt) {
    case DType::F32: launch_group<float>(W, x, y, ep, count, int(n), s); break;
    case DType::F16: launch_group<__half>(W, x, y, ep, count, int(n), s); break;
    case DType::BF16: launch_group<__nv_bfloat16>(W, x, y, ep, count, int(n), s); break;
    case DType::I8: launch_group<int8_t>(W, x, y, ep, count, int(n), s); break;
    case DType::I4: return false;
  }
  return true;
}

size_t gemm_group_scratch_bytes(int count, int64_t n, int64_t K) {
  return round256(size_t(count) * size_t(n * K) * 2);
}

bool gemm_group_f16(cublasHandle_t h, const WeightView* const* W, const float* const* x,
                    float* const* y, int count, int64_t n, void* scratch, float* consts,
                    const void* const* dev_ptrs, cudaStream_t s) {
  if (count < 2 || count > 3 || n <= kGemvMaxTokens || !y) return false;
  const int64_t R = W[0]->rows, K = W[0]->cols;
  for (int i = 0; i < count; ++i)
    if (W[i]->dtype != DType::F16 || W[i]->rows != R || W[i]->cols != K) return false;
  if (R > INT32_MAX || K > INT32_MAX || n > INT32_MAX || K == 0) return false;
  // One power-of-two scale for all inputs (their largest magnitude), so that one alpha serves
  // the batched GEMM; each x is converted into its part of the scratch.
  const int64_t cnt = n * K;
  auto* xh = static_cast<__half*>(scratch);
  convert_x_f16(scratch_jobs(x, count, cnt, xh), count, true, false, consts, s);
  RWKVPP_CUBLAS_CHECK(cublasSetStream(h, s));
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
  const cublasStatus_t st = cublasGemmBatchedEx(
      h, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(n), int(K), consts + kConstAlpha, dev_ptrs,
      CUDA_R_16F, int(K), dev_ptrs + 3, CUDA_R_16F, int(K), consts + kConstZero,
      const_cast<void* const*>(dev_ptrs + 6), CUDA_R_32F, int(R), count, CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  RWKVPP_CUBLAS_CHECK(st);
  return true;
}

size_t gemm_jobs_scratch_bytes(const WeightView* const* W, int count, int64_t n) {
  size_t halves = 0;
  for (int i = 0; i < count; ++i) halves += round256(size_t(n * W[i]->cols) * 2) / 2;
  return halves * 2;
}

bool gemm_jobs_f16(cublasHandle_t h, const WeightView* const* W, const float* const* x,
                   float* const* y, int count, int64_t n, void* scratch, float* consts,
                   cudaStream_t s) {
  if (count < 2 || count > kMaxConvJobs || n <= kGemvMaxTokens || n > INT32_MAX) return false;
  for (int i = 0; i < count; ++i) {
    const int64_t K = W[i]->cols;
    if (W[i]->dtype != DType::F16 || K < 1 || K > INT32_MAX || W[i]->rows > INT32_MAX || W[i]->rows < 1)
      return false;
  }
  // Each input's fp16 copy starts 256-byte aligned (gemm_jobs_scratch_bytes), for cuBLAS.
  ConvJobs j{};
  auto* xh = static_cast<__half*>(scratch);
  for (int i = 0; i < count; ++i) {
    j.x[i] = x[i];
    j.out[i] = xh;
    j.count[i] = n * W[i]->cols;
    xh += round256(size_t(j.count[i]) * 2) / 2;
  }
  convert_x_f16(j, count, false, false, consts, s);
  RWKVPP_CUBLAS_CHECK(cublasSetStream(h, s));
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  for (int i = 0; i < count && st == CUBLAS_STATUS_SUCCESS; ++i) {
    const int K = int(W[i]->cols);
    st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(W[i]->rows), int(n), K,
                      consts + kConstAlpha + i, W[i]->data, CUDA_R_16F, K, j.out[i], CUDA_R_16F, K,
                      consts + kConstZero, y[i], CUDA_R_32F, int(W[i]->rows), CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT);
  }
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  RWKVPP_CUBLAS_CHECK(st);
  return true;
}

}  // namespace rwkvpp::cuda
