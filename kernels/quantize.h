// Symmetric per-row int8 quantisation of weight matrices (the compute dtype DType::I8).
//
// For a matrix W [rows, cols]: scale[r] = max_c |W[r, c]| / 127 (fp32), and
//   q[r, c] = round-to-nearest-even(W[r, c] / scale[r]), clamped to [-127, 127],
// so that W[r, c] ~= q[r, c] * scale[r] with |W - q * scale| <= scale / 2 (up to the fp32
// rounding of the division, a relative 2^-24). A row of zeros (or one whose largest magnitude
// is so small that max / 127 underflows to 0, below 1.8e-43) gets scale 0 and q 0. A
// non-finite value fails: it has no int8 form.
//
// In backend memory an int8 matrix is one buffer: q row-major [rows, cols], padded to a
// multiple of 16 bytes, then the scales [rows] fp32 (WeightView::data and ::scales).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace rwkvpp {

// Quantises rows x cols values of dtype `src_dtype` (fp32, fp16 or bf16) at src into q and
// scales. Rows are independent; large matrices are shared among threads (the result does not
// depend on the thread count). Throws Error on a non-finite value (naming its row and column).
void quantize_rows_i8(DType src_dtype, const void* src, int64_t rows, int64_t cols, int8_t* q,
                      float* scales);

// out[r, c] = float(q[r, c]) * scales[r] for rows x cols values: the weights int8 stands for.
void dequantize_rows_i8(const int8_t* q, const float* scales, int64_t rows, int64_t cols,
                        float* out);

// Group-wise asymmetric int4 (the compute dtype DType::I4), the scheme of ggml's Q4_1 with the
// codes chosen against the stored fp16 values. For each row r and each group g of `group`
// consecutive columns (the last may be shorter): with lo and hi the group's smallest and largest
// value, m = fp16(lo) and d = fp16((hi - m) / 15) (round to nearest even), then
//   q[r, c] = clamp(round-to-nearest-even((W[r, c] - m) / d), 0, 15)  (0 where d == 0),
// so that W[r, c] ~= q * d + m, off by at most d / 2 plus the fp16 rounding of m and d (relative
// 2^-11 of lo and of hi - m: a value at the edge may be clipped by that much). Rounding m down and
// d up instead (no clipping, slightly wider steps) measured worse on trained models
// (docs/perf-cpu.md). A non-finite value, or a group beyond fp16's range, fails naming its row
// and columns.
//   q: [rows, cols] bytes holding 0..15; d, m: [rows, ceil(cols / group)] fp16 bits.
void quantize_rows_i4(DType src_dtype, const void* src, int64_t rows, int64_t cols, int64_t group,
                      uint8_t* q, uint16_t* d, uint16_t* m);

// The buffer layout: byte offset of the scales, and total bytes.
inline size_t i8_scales_offset(int64_t rows, int64_t cols) {
  return (size_t(rows) * size_t(cols) + 15) / 16 * 16;
}
inline size_t i8_weight_bytes(int64_t rows, int64_t cols) {
  return i8_scales_offset(rows, cols) + size_t(rows) * sizeof(float);
}

}  // namespace rwkvpp
