// Matrix products (see matmul.cuh): GEMV dispatch for few tokens, cuBLAS for more, and the
// activation conversion kernels the 16-bit cuBLAS path needs. int8 weights: the GEMV up to
// kI8GemvMaxTokens (in passes of 8 tokens), else tiles dequantised to fp16 (int8.cuh) and the
// fp16 cuBLAS path, with the row scales applied to y at the end.
#include <algorithm>
#include <cstdlib>
#include <string>

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

// RWKVPP_I8_RPW=1|2|4|8 overrides the rows per warp of the one-token int8 GEMV (measurement).
int i8_rows_override() {
  static const int v = [] {
    const char* e = std::getenv("RWKVPP_I8_RPW");
    const int r = e ? std::atoi(e) : 0;
    return (r == 1 || r == 2 || r == 4 || r == 8) ? r : 0;
  }();
  return v;
}

template <typename T, int NT>
void gemv_nt(const T* W, const float* x, float* y, int R, int K, const float* scales,
             cudaStream_t s, const GemvEpilogue& ep) {
  if (K % Pack16<T>::n == 0 && aligned16(W) && aligned16(x)) {
    if constexpr (kRowScaled<T> && NT == 1) {
      switch (i8_rows_override()) {
        case 1: return launch_gemv_vec<T, 1, 1, 2>(W, x, y, R, K, s, scales, ep);
        case 2: return launch_gemv_vec<T, 1, 2, 2>(W, x, y, R, K, s, scales, ep);
        case 4: return launch_gemv_vec<T, 1, 4, 2>(W, x, y, R, K, s, scales, ep);
        case 8: return launch_gemv_vec<T, 1, 8, 1>(W, x, y, R, K, s, scales, ep);
        default: break;
      }
    }
    launch_gemv_vec<T, NT, gemv_rows<T>(NT), gemv_unroll(NT)>(W, x, y, R, K, s, scales, ep);
  } else
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

// Largest |x| over count values, as the bits of a non-negative float (which order like
// unsigned integers) into *out, which must start at 0. Grid-stride, warp max, one atomic per
// warp. NaNs are skipped (fmaxf), so they pass through the conversion unscaled.
__global__ void amax_kernel(const float* __restrict__ x, int64_t count, unsigned* out) {
  float m = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    m = fmaxf(m, fabsf(x[i]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) atomicMax(out, __float_as_uint(m));
}

__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// out[i] = x[i] / scale in T, one thread per element (grid-stride). With SCALED, scale is
// 2^(e - 14) for e = floor(log2(amax)) (amax from amax_kernel), exact in binary, and block 0's
// first thread stores it to *alpha for the GEMM to multiply back; otherwise scale is 1.
template <typename T, bool SCALED>
__global__ void convert_kernel(const float* __restrict__ x, T* __restrict__ out, int64_t count,
                               const unsigned* amax_bits, float* alpha) {
  float inv = 1.0f;
  if constexpr (SCALED) {
    const float amax = __uint_as_float(*amax_bits);
    float scale = 1.0f;
    if (amax > 0.0f && isfinite(amax)) {
      const int e = max(-100, min(100, ilogbf(amax)));
      scale = ldexpf(1.0f, e - 14);
      inv = ldexpf(1.0f, 14 - e);
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) *alpha = scale;
  }
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    store_as(out + i, x[i] * inv);
}

// x = hi + lo in bf16: hi[i] = bf16(x[i]), lo[i] = bf16(x[i] - hi[i]); out holds hi for the
// count values, then lo. One thread per element (grid-stride).
__global__ void split_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ out,
                                  int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    out[i] = hi;
    out[count + i] = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
}

size_t round256(size_t b) { return (b + 255) / 256 * 256; }

// x [count] fp32 -> xh fp16, scaled by a power of two into fp16's range (amax_kernel,
// convert_kernel); consts[0] = amax bits, consts[1] = alpha (the scale), for the GEMM.
void convert_x_f16_scaled(const float* x, __half* xh, int64_t count, float* consts,
                          cudaStream_t s) {
  const unsigned g = grid_for(count, kThreads);
  auto* amax = reinterpret_cast<unsigned*>(consts);
  RWKVPP_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(unsigned), s));
  amax_kernel<<<std::min(g, 1024u), kThreads, 0, s>>>(x, count, amax);
  RWKVPP_CUDA_LAUNCHED("amax_kernel");
  convert_kernel<__half, true><<<g, kThreads, 0, s>>>(x, xh, count, amax, consts + 1);
  RWKVPP_CUDA_LAUNCHED("convert_kernel<fp16>");
}

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
                    void* scratch, float* consts, cudaStream_t s) {
  const int64_t R = W.rows, K = W.cols, tile = i8_tile_rows(W);
  auto* xh = static_cast<__half*>(scratch);
  auto* wh = reinterpret_cast<__half*>(static_cast<char*>(scratch) + round256(size_t(n * K) * 2));
  convert_x_f16_scaled(x, xh, n * K, consts, s);
  const float* alpha = consts + 1;
  const float* beta = consts + 2;
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

void matmul(cublasHandle_t h, const WeightView& W, const float* x, float* y, int64_t n,
            void* scratch, float* consts, cudaStream_t s) {
  const int64_t R = W.rows, K = W.cols;
  if (n == 0 || R == 0) return;
  if (R > INT32_MAX || K > INT32_MAX || n > INT32_MAX)
    fail_msg("matmul: shape [" + std::to_string(R) + ", " + std::to_string(K) + "] x " +
             std::to_string(n) + " tokens is too large");
  if (K == 0) {
    RWKVPP_CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(n * R) * sizeof(float), s));
    return;
  }
  if (W.dtype == DType::I8) {
    if (!W.scales) fail_msg("matmul: int8 weights without their row scales");
    if (n > kI8GemvMaxTokens) return matmul_i8_gemm(h, W, x, y, n, scratch, consts, s);
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
    split_bf16_kernel<<<g, kThreads, 0, s>>>(x, xs, count);
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
    convert_kernel<__nv_bfloat16, false><<<g, kThreads, 0, s>>>(x, xb, count, nullptr, nullptr);
    RWKVPP_CUDA_LAUNCHED("convert_kernel<bf16>");
    RWKVPP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(n), int(K), &one,
                                     W.data, CUDA_R_16BF, int(K), xb, CUDA_R_16BF, int(K), &zero,
                                     y, CUDA_R_32F, int(R), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
    return;
  }
  // fp16: scale into range on the device, GEMM with alpha = scale from device memory.
  auto* xh = static_cast<__half*>(scratch);
  float* alpha = consts + 1;
  const float* beta = consts + 2;
  convert_x_f16_scaled(x, xh, count, consts, s);
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
  }
  return true;
}

namespace {

template <typename T, int NT>
void launch_group_nt(const WeightView* const* W, const float* const* x, float* const* y,
                     const GemvEpilogue* ep, int count, int K, cudaStream_t s) {
  GemvJobs<T> jobs{};
  for (int i = 0; i < count; ++i)
    jobs.j[i] = {static_cast<const T*>(W[i]->data), x[i], y[i], W[i]->scales, ep[i], int(W[i]->rows)};
  launch_gemv_vec_group<T, NT, gemv_rows<T>(NT), gemv_unroll(NT)>(jobs, count, K, s);
}

template <typename T>
void launch_group(const WeightView* const* W, const float* const* x, float* const* y,
                  const GemvEpilogue* ep, int count, int K, int n, cudaStream_t s) {
  switch (n) {
    case 1: launch_group_nt<T, 1>(W, x, y, ep, count, K, s); break;
    case 2: launch_group_nt<T, 2>(W, x, y, ep, count, K, s); break;
    case 3: launch_group_nt<T, 3>(W, x, y, ep, count, K, s); break;
    case 4: launch_group_nt<T, 4>(W, x, y, ep, count, K, s); break;
    case 5: launch_group_nt<T, 5>(W, x, y, ep, count, K, s); break;
    case 6: launch_group_nt<T, 6>(W, x, y, ep, count, K, s); break;
    case 7: launch_group_nt<T, 7>(W, x, y, ep, count, K, s); break;
    case 8: launch_group_nt<T, 8>(W, x, y, ep, count, K, s); break;
    default: break;
  }
  RWKVPP_CUDA_LAUNCHED("gemv_vec_group_kernel");
}

}  // namespace

bool gemv_group(const WeightView* const* W, const float* const* x, float* const* y,
                const GemvEpilogue* ep, int count, int64_t n, cudaStream_t s) {
  if (count < 1 || count > kGemvMaxJobs || n < 1 || n > kGemvMaxTokens) return false;
  const DType dt = W[0]->dtype;
  const int64_t K = W[0]->cols;
  const int pack = dt == DType::F32 ? 4 : dt == DType::I8 ? 16 : 8;
  if (K == 0 || K % pack != 0 || K > INT32_MAX) return false;
  for (int i = 0; i < count; ++i) {
    if (W[i]->dtype != dt || W[i]->cols != K || W[i]->rows > INT32_MAX || W[i]->rows < 1) return false;
    if (!aligned16(W[i]->data) || !aligned16(x[i])) return false;
    if (dt == DType::I8 && !W[i]->scales) return false;
  }
  if (dt == DType::I8 && n == 1 && i8_rows_override()) return false;  // measuring one variant
  switch (dt) {
    case DType::F32: launch_group<float>(W, x, y, ep, count, int(K), int(n), s); break;
    case DType::F16: launch_group<__half>(W, x, y, ep, count, int(K), int(n), s); break;
    case DType::BF16: launch_group<__nv_bfloat16>(W, x, y, ep, count, int(K), int(n), s); break;
    case DType::I8: launch_group<int8_t>(W, x, y, ep, count, int(K), int(n), s); break;
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
  const unsigned g = grid_for(cnt, kThreads);
  auto* amax = reinterpret_cast<unsigned*>(consts);
  RWKVPP_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(unsigned), s));
  for (int i = 0; i < count; ++i) {
    amax_kernel<<<std::min(g, 1024u), kThreads, 0, s>>>(x[i], cnt, amax);
    RWKVPP_CUDA_LAUNCHED("amax_kernel");
  }
  auto* xh = static_cast<__half*>(scratch);
  for (int i = 0; i < count; ++i) {
    convert_kernel<__half, true><<<g, kThreads, 0, s>>>(x[i], xh + i * cnt, cnt, amax, consts + 1);
    RWKVPP_CUDA_LAUNCHED("convert_kernel<fp16>");
  }
  RWKVPP_CUBLAS_CHECK(cublasSetStream(h, s));
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
  const cublasStatus_t st = cublasGemmBatchedEx(
      h, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(n), int(K), consts + 1, dev_ptrs, CUDA_R_16F,
      int(K), dev_ptrs + 3, CUDA_R_16F, int(K), consts + 2,
      const_cast<void* const*>(dev_ptrs + 6), CUDA_R_32F, int(R), count, CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  RWKVPP_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  RWKVPP_CUBLAS_CHECK(st);
  return true;
}

}  // namespace rwkvpp::cuda
