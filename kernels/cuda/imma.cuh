// Batch-invariant matrix products on the tensor cores: y = ep(x W^T) whose every element is
// computed the same way whatever the number of tokens n, the token's position among them and
// the launch shape (docs/architecture.md, Reproducibility). The fast paths (matmul.cuh: the GEMV
// splits K by token count, cuBLAS picks kernels by shape, fp16 inputs share one scale over the
// batch) do not promise that; these do, by construction:
//
// 1. The input. Each token's row is converted on its own: fp16 and int8 weights take
//    x16 = fp16(x * 2^e) with e chosen from that row's largest magnitude (into [2^14, 2^15):
//    fp16 overflows at 65504) and undo it exactly with 2^-e at the end; bf16 weights take
//    x = hi + lo with hi = bf16(x), lo = bf16(x - hi) as two columns (2t, 2t + 1) of the
//    product, added at the end. relu(x)^2 (the FFN value product) is applied before.
// 2. The sum. K is cut into S slices that depend only on W's shape (imma_slices); slice s is
//    the chain of m16n8k16 MMAs over its k tiles of 32 in order, from 0; the slices are added
//    left to right (((s0 + s1) + s2) ...), whether one block does them all (large batches) or
//    one block does each and a second kernel adds them (small ones). An MMA's result for one
//    element depends only on that element's row of W, column of x and accumulator.
// 3. The end. v = sum * 2^-e (int8: then * scale[r]; bf16: v = sum_hi + sum_lo), then the
//    epilogue (GemvEpilogue::store), the same code on both paths.
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
// Bytes of device scratch imma() needs for n tokens.
size_t imma_scratch_bytes(const WeightView& W, int64_t n);
// y = ep(x' W^T) with x' = relu(x)^2 when relu_square_x, else x; x [n, K] fp32, y [n, R].
// `scratch`: imma_scratch_bytes(W, n) bytes. Any dtype (fp32 through ifma).
void imma(const WeightView& W, const float* x, float* y, int64_t n, bool relu_square_x,
          const GemvEpilogue& ep, void* scratch, cudaStream_t s);

}  // namespace rwkvpp::cuda
