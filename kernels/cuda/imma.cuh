// Batch-invariant matrix products on the tensor cores: y = ep(x W^T) whose every element is
// computed the same way whatever the number of tokens n, the token's position among them and
// the launch shape (docs/architecture.md, Reproducibility). The fast paths (matmul.cuh: the GEMV
// splits K by token count, cuBLAS picks kernels by shape, fp16 inputs share one scale over the
// batch) do not promise that; these do, by construction:
//
// 1. The input. K is cut into S slices that depend only on W's shape (imma_slices). fp16 and
//    int8 weights take, per token and slice, x16 = fp16(x * 2^e) with e chosen from that
//    slice's largest magnitude (into [2^14, 2^15): fp16 overflows at 65504); bf16 weights take
//    x = hi + lo with hi = bf16(x), lo = bf16(x - hi) as two columns (2t, 2t + 1) of the
//    product, added at the end. relu(x)^2 (the FFN value product) is applied before.
// 2. The sum. Slice s is the chain of m16n8k16 MMAs over its k tiles of 32 in order, from 0,
//    times its 2^-e (a power of two: exact); the slices are added left to right
//    (((s0 + s1) + s2) ...), whether one block does them all (many tokens) or one block does
//    each and the last to finish adds them (few tokens: imma_small.cu). An MMA's result for
//    one element depends only on that element's row of W, column of x and accumulator.
// 3. The end. int8: v = total * scale[r]; bf16: v = total_hi + total_lo; then the epilogue
//    (GemvEpilogue::store), the same code on every path.
// Weights: fp16, bf16 (K % 8 == 0) or int8 (K % 16 == 0), 16-byte aligned, row-major [R, K].
// fp32 weights take a plain fixed-order kernel on the CUDA cores (ifma), as do shapes the
// MMA kernels do not take.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/gemv.cuh"

namespace rwkvpp::cuda {

// Slices of K for a matrix of R rows and K columns (1 .. K / 32), from its shape only.
int imma_slices(int64_t R, int64_t K);

// What imma() needs for n tokens: device scratch and tickets (ints that are 0 between
// launches: zero-filled once, each launch leaves them 0).
struct ImmaNeeds {
  size_t scratch_bytes = 0;
  size_t tickets = 0;
};
ImmaNeeds imma_needs(const WeightView& W, int64_t n);

// y = ep(x' W^T) with x' = relu(x)^2 when relu_square_x, else x; x [n, K] fp32, y [n, R].
// `scratch` and `tickets` as imma_needs(W, n) says. Any dtype (fp32 through ifma).
void imma(const WeightView& W, const float* x, float* y, int64_t n, bool relu_square_x,
          const GemvEpilogue& ep, void* scratch, int* tickets, cudaStream_t s);

// Whether 2-3 products can share one launch (few tokens, one dtype, K and slicing); each
// result is bit-identical to its imma() alone.
bool imma_group_takes(const WeightView* const* W, int count, int64_t n);
// The group in one launch; scratch and tickets hold each product's imma_needs in turn.
void imma_group(const WeightView* const* W, const float* const* x, float* const* y,
                const GemvEpilogue* ep, int count, int64_t n, void* scratch, int* tickets,
                cudaStream_t s);

// Input columns (tokens, or twice that for bf16) up to which imma_small.cu runs the product.
constexpr int kImmaSmallColumns = 32;
// The longest slice it takes (it holds a slice of x in registers and shared memory).
constexpr int kImmaSmallMaxSlice = 1024;

}  // namespace rwkvpp::cuda

namespace rwkvpp::cuda::imma_detail {
struct Args;
}

namespace rwkvpp::cuda {
// imma_small.cu: rows per block, and the launch.
int imma_small_row_tile();
void imma_small(const imma_detail::Args& a, DType dtype, cudaStream_t s);

}  // namespace rwkvpp::cuda
