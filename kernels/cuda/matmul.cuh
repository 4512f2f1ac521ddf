// Matrix products of the CUDA backend: y[n, R] = x[n, K] * W[R, K]^T, fp32 activations, W in
// fp32, fp16, bf16 or int8 (with row scales), fp32 accumulation.
#pragma once

#include "kernels/cuda/cublas_lazy.h"
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

// Tokens up to which the hand-written GEMV (gemv.cuh) runs; above, cuBLAS.
constexpr int64_t kGemvMaxTokens = 8;
// Tokens up to which int8 W runs the GEMV, in passes of kGemvMaxTokens; above, cuBLAS.
constexpr int64_t kI8GemvMaxTokens = 16;
// Tokens up to which the bf16 cuBLAS path splits x into two bf16 terms (see matmul()).
constexpr int64_t kBf16SplitMaxTokens = 128;

// Bytes of device scratch that matmul() needs for n tokens (0 when none).
size_t matmul_scratch_bytes(const WeightView& W, int64_t n);

// Device floats the cuBLAS paths read and write ("consts" below): [0, 8) the scales of up to
// eight converted inputs (cuBLAS's alpha), [8] = 0 and [9] = 1 (beta), from index 64 the
// per-block maxima of the inputs being converted. Allocate them zero-filled, then call
// init_matmul_consts once.
constexpr int kMatmulConsts = 64 + 8 * 1024;
void init_matmul_consts(float* consts, cudaStream_t s);

// What matmul() may fold into a cuBLAS product: relu_square_x, the product reads relu(x)^2
// instead of x (applied while x is converted to fp16; RWKV's FFN value product); accumulate,
// y += x W^T (cuBLAS's beta = 1) instead of y = x W^T.
struct MatmulOpts {
  bool relu_square_x = false;
  bool accumulate = false;
};
// Whether matmul() takes these options for W and n tokens: both on the fp16 cuBLAS path
// (n > kGemvMaxTokens); relu_square_x also on int8's (n > kI8GemvMaxTokens).
bool matmul_folds(const WeightView& W, int64_t n, const MatmulOpts& o);

// y = x W^T. `scratch` holds at least matmul_scratch_bytes(W, n) bytes; `consts` as above
// (cuBLAS reads alpha and beta from there on the fp16 path). Options other than the defaults
// only where matmul_folds() says so. Paths:
// - n <= kGemvMaxTokens: the GEMV kernels, W read once, x in fp32.
// - fp32 W: cublasGemmEx in fp32 (no TF32).
// - bf16 W, n <= kBf16SplitMaxTokens: x = hi + lo with hi = bf16(x), lo = bf16(x - hi) (exact to
//   ~2^-17 relative), one cublasGemmEx over the 2n columns [hi; lo], then y = y_hi + y_lo. Up to
//   there the GEMM is bound by reading W, which it reads once, so the split costs little, and
//   chunked prompts then agree with token-by-token decoding to ~1e-5 instead of ~1e-1.
// - bf16 W, larger n (compute-bound): x rounded to bf16, one cublasGemmEx.
// - fp16 W: x scaled by a power of two so that its largest magnitude lands in [2^14, 2^15)
//   (fp16 overflows at 65504; activations of deep layers exceed that), rounded to fp16, then
//   cublasGemmEx with alpha = the scale, read from device memory, so nothing waits on the host.
// - int8 W, n <= kI8GemvMaxTokens: the GEMV in passes of 8 tokens (x fp32, the row scale
//   applied to each sum). Larger n: x converted as for fp16; W dequantised to fp16 integers
//   (exact: |q| <= 127) a tile of ~16 MiB at a time into the scratch, one cublasGemmEx per
//   tile, then y scaled by the row scales. Beyond fp16's 2 bytes per weight this reads the
//   int8 byte and writes 2 (the read-back mostly hits L2): see docs/cuda.md, int8.
void matmul(cublasHandle_t h, const WeightView& W, const float* x, float* y, int64_t n,
            void* scratch, float* consts, cudaStream_t s, const MatmulOpts& o = {});

struct GemvEpilogue;
// y[i] = ep(v[i]) for i < count (GemvEpilogue::store: activation, gate, accumulation) in one
// pass; v may be y. What is left of an epilogue after a cuBLAS product.
void apply_epilogue(const float* v, float* y, int64_t count, const GemvEpilogue& ep,
                    cudaStream_t s);
// y = epilogue(x W^T) in one GEMV launch (gemv.cuh, GemvEpilogue) when n <= kGemvMaxTokens;
// returns false (and does nothing) for shapes it does not take.
bool gemv_with_epilogue(const WeightView& W, const float* x, float* y, int64_t n,
                        const GemvEpilogue& ep, cudaStream_t s);
// count (<= kGemvMaxJobs) such products with one dtype and token count (each of its own
// shape) in one launch (gemv.cuh, gemv_vec_group_kernel); false (nothing done) for what it
// does not take.
bool gemv_group(const WeightView* const* W, const float* const* x, float* const* y,
                const GemvEpilogue* ep, int count, int64_t n, cudaStream_t s);

// Above kGemvMaxTokens: count (2..3) products with fp16 W of one shape as one batched cuBLAS
// GEMM (one launch: at batch 256 a 5120 x 5120 product alone fills 80 of 132 SMs with 128 x 128
// tiles; three fill them). The inputs share one power-of-two scale (their largest magnitude).
// `scratch`: gemm_group_scratch_bytes; `dev_ptrs`: 9 device pointers W[0..2], the fp16 copies
// of x in the scratch (scratch + i * n * K halves), y[0..2], kept by the caller. Returns false
// (nothing done) for what it does not take.
size_t gemm_group_scratch_bytes(int count, int64_t n, int64_t K);
bool gemm_group_f16(cublasHandle_t h, const WeightView* const* W, const float* const* x,
                    float* const* y, int count, int64_t n, void* scratch, float* consts,
                    const void* const* dev_ptrs, cudaStream_t s);
// Above kGemvMaxTokens: count (2..kMaxConvJobs) products with fp16 W of any shapes (the FFN's
// key and receptance; RWKV-7's seven products of the time mix's input and its four low-rank
// second factors): the inputs converted in one launch pair, each with its own scale, into
// consecutive parts of `scratch` (gemm_jobs_scratch_bytes), then one cuBLAS GEMM each. False
// (nothing done) for what it does not take.
constexpr int kMaxConvJobs = 8;
size_t gemm_jobs_scratch_bytes(const WeightView* const* W, int count, int64_t n);
bool gemm_jobs_f16(cublasHandle_t h, const WeightView* const* W, const float* const* x,
                   float* const* y, int count, int64_t n, void* scratch, float* consts,
                   cudaStream_t s);

}  // namespace rwkvpp::cuda
