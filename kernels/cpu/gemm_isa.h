// What the per-instruction-set matrix kernels (gemm_scalar.cpp, gemm_avx2.cpp, gemm_avx512.cpp)
// see: plain data only. Those files are compiled with their own -m flags, so they include
// nothing that could emit an inline function (a weak symbol the linker might pick for other
// files) compiled for an instruction set the CPU may lack. The layout is in kernels/cpu/gemm.h.
#pragma once

#include <cstdint>

namespace rwkvpp::cpu {

enum class GemmDType : uint8_t { F32 = 0, F16 = 1, BF16 = 2, I8 = 3, I4 = 4 };  // == DType's values

// A packed matrix W [rows, cols] (rows padded to 32, blocks of 128 rows; gemm.h).
struct GemmView {
  const void* data;
  GemmDType dtype;
  int64_t rows, cols;
  const float* scales;  // int8: [padded rows]; null otherwise
  const uint16_t* aux;  // int4: the groups' fp16 scales and offsets (gemm.h); null otherwise
  int64_t group;        // int4: columns per group
};

// Rows [128 b, 128 b + 128) of y[n, rows] = x[n, cols] * W^T for block b.
using GemmBlockFn = void (*)(const GemmView& W, const float* x, float* y, int64_t n, int64_t block);
GemmBlockFn gemm_block_scalar();
GemmBlockFn gemm_block_avx2();    // null when not built for x86-64
GemmBlockFn gemm_block_avx512();  // null when not built for x86-64

}  // namespace rwkvpp::cpu
