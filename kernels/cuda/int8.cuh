// int8 weights on the CUDA backend (kernels/quantize.h has the format: q [rows, cols] int8 and
// one fp32 scale per row). The GEMV reads q directly (gemv.cuh, Pack16<int8_t>); for more tokens
// matmul.cu turns tiles of q into fp16 with this kernel and runs cuBLAS's fp16 GEMM.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace rwkvpp::cuda {

// out[i] = q[i] as fp16, for i < count: the integers themselves (exact, |q| <= 127), without
// the row scales, which the caller applies to the product. 16 values per thread and step when
// q and out are 16-byte aligned, one at a time otherwise.
void dequant_i8_f16(const int8_t* q, __half* out, int64_t count, cudaStream_t s);

}  // namespace rwkvpp::cuda
