// The CPU matrix product y[n, R] = x[n, K] * W[R, K]^T for fp32, fp16, bf16, int8 and int4 weights,
// written for two goals at once:
//
// 1. Batch invariance by construction. Every output element is one sequential chain of fused
//    multiply-adds in k order, starting from +0:
//        acc = 0;  for k = 0 .. K-1:  acc = fma(x[i, k], w(r, k), acc);  y[i, r] = acc
//    where w(r, k) is the stored weight as fp32 (fp16/bf16 widened exactly). int8 runs the chain
//    over float(q[r, k]) and ends with y[i, r] = acc * scale[r] (as the CUDA kernels do: one
//    multiply per output instead of one per weight). int4 (w = q * d_g + m_g per group g of G
//    columns) folds the groups in order:
//        T = 0;  for each group g:  A = 0, X = 0;  for k in g: A = fma(x[i, k], float(q), A),
//                X = X + x[i, k];   T = fma(d_g, A, T);  T = fma(m_g, X, T);     y[i, r] = T
//    SIMD lanes run over
//    output rows, never over k, so the result of an element depends only on its own row of W
//    and its own row of x: not on the batch size n, the token's position in the batch, the
//    blocking, the thread count, or the instruction set (AVX-512, AVX2 and the scalar
//    fallback give the same bits; tests check it).
// 2. Decode at memory bandwidth. Weights are read once per call in their stored dtype and
//    widened in registers; no per-call conversion of a matrix, no temporary copy.
//
// Packed layout (what the CPU backend's load_weight stores; only this file's kernels read it):
//   rows are padded with zero rows to Rp = R rounded up to a multiple of 32, and cut into
//   blocks of kBlockRows = 128 rows (the last one may be narrower: a multiple of 32). Block b
//   (rows [128 b, 128 b + wb)) starts at element 128 b * K and stores element (k, j) of the
//   block at k * wb + j: for each k, the block's wb weights are contiguous, so one k step of
//   one block is a few contiguous vector loads.
//   int8: the fp32 scales [Rp] follow at byte offset packed_scales_offset() (0 for padding).
//   int4: block b starts at byte 64 b K; each k step holds wb / 2 bytes, byte j carrying row j
//   of the block in its low nibble and row j + wb / 2 in its high one (so one load feeds a
//   vector of each half). The groups' fp16 d and m follow at packed_scales_offset(): for block
//   b, group g: d[wb] then m[wb], at halves (256 b G' + 2 g wb) with G' = ceil(K / G) groups.
// Threads split the work by blocks (gemm_blocks), which is also the unit of the fused
// epilogues in the backend.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm_isa.h"

namespace rwkvpp::cpu {

inline constexpr int64_t kBlockRows = 128;

inline int64_t padded_rows(int64_t rows) { return (rows + 31) / 32 * 32; }
inline int64_t row_blocks(int64_t rows) { return (padded_rows(rows) + kBlockRows - 1) / kBlockRows; }
// Bytes before the scales (int8) or the groups' d and m (int4): the packed q, rounded to 64.
inline size_t packed_scales_offset(int64_t rows, int64_t cols, DType dt = DType::I8) {
  const size_t q = size_t(padded_rows(rows)) * size_t(cols);
  return ((dt == DType::I4 ? q / 2 : q) + 63) / 64 * 64;
}
// Bytes of a packed matrix of `dt` (I8 includes its scales).
size_t packed_bytes(DType dt, int64_t rows, int64_t cols);

// Packs W [rows, cols] (row-major, `src_dtype` fp32/fp16/bf16) into `dst` (packed_bytes(dt, ..)
// bytes, zero-filled by the caller) as `dt`: converted with round-to-nearest-even, or for I8
// quantised per row (quantize_rows_i8), for I4 per group of kI4Group (quantize_rows_i4). Throws
// Error on a non-finite value for I8 and I4.
void pack_weight(DType src_dtype, const void* src, int64_t rows, int64_t cols, DType dt, void* dst);
// The view of a packed matrix at `base` (what load_weight returns).
WeightView packed_view(const void* base, DType dt, int64_t rows, int64_t cols);

// The weight a packed matrix stands for, as fp32: the stored value (int8: float(q) * scale[r],
// the dequantised weight of kernels/quantize.h).
float packed_at(const WeightView& W, int64_t r, int64_t c);

// Row r of a packed matrix as packed_at gives it, into out[cols] (the CPU embedding reads its
// table this way).
void packed_row(const WeightView& W, int64_t r, float* out);

// Computes the rows of blocks [b0, b1) of y[n, W.rows] = x[n, W.cols] * W^T (W packed; y rows
// W.rows apart, x rows W.cols apart). Blocks are independent: threads may run disjoint ranges.
void gemm_blocks(const WeightView& W, const float* x, float* y, int64_t n, int64_t b0, int64_t b1);

// The instruction set the kernels use: the best the CPU has, or RWKVPP_CPU_ISA=scalar|avx2|avx512
// (read once; a set the CPU lacks is refused with an Error). Tests switch it with set_isa().
enum class Isa : uint8_t { Scalar, Avx2, Avx512 };
Isa current_isa();
bool isa_supported(Isa isa);
void set_isa(Isa isa);  // throws Error when the CPU lacks it
const char* isa_name(Isa isa);

}  // namespace rwkvpp::cpu
