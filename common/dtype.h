// Element types of stored weights. Activations and recurrent state are always fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace rwkvpp {

// I8 and I4 are compute dtypes only: weight matrices quantised when a backend loads them
// (kernels/quantize.h), files never store them. I8: one fp32 scale per row. I4: 4 bits a weight
// in groups of kI4Group along the input dimension, an fp16 scale and offset per group.
enum class DType : uint8_t { F32 = 0, F16 = 1, BF16 = 2, I8 = 3, I4 = 4 };
inline constexpr int64_t kI4Group = 32;

// Bytes per element; int4 has none (two weights a byte: see matrix_bytes) and throws Error.
size_t dtype_size(DType t);
// Bytes a backend holds for a [rows, cols] weight matrix computed as t, before any padding:
// rows * cols elements, plus an fp32 scale per row for int8, or half a byte a weight and two
// fp16 per group of kI4Group per row for int4.
uint64_t matrix_bytes(DType t, int64_t rows, int64_t cols);
const char* dtype_name(DType t);          // "fp32", "fp16", "bf16", "int8"
// Accepts fp32/f32/float32, fp16/f16/float16, bf16/bfloat16, int8/i8; throws Error.
DType parse_dtype(std::string_view name);
// As parse_dtype, but only the dtypes a model file stores (not int8); `what` names the caller
// (an option or a file) in the error.
DType parse_storage_dtype(std::string_view name, std::string_view what);
// Throws Error naming `what` when t is not a storage dtype (int8).
void require_storage_dtype(DType t, std::string_view what);
// The floating dtype for tensors that int8 compute does not quantise (the embedding, RWKV-6/7's
// low-rank matrices, a synthetic model's stored weights): fp16 for int8, else t itself.
inline DType unquantised_dtype(DType t) { return t == DType::I8 || t == DType::I4 ? DType::F16 : t; }
// The head's dtype when the layers compute as t: int4 keeps the head in fp16, as rwkv.cpp's
// formats do (an int8 head, one scale per row, doubled int4's KL divergence on a trained RWKV-7:
// docs/perf-cpu.md); int8 quantises it like every other matrix.
inline DType head_dtype(DType t) { return t == DType::I4 ? DType::F16 : t; }

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even, overflow to inf

// Converts n elements of type `from` at src into fp32 at dst. Throws Error for int8 (its values
// need their row scales: kernels/quantize.h).
void to_f32(DType from, const void* src, float* dst, size_t n);
// Converts n fp32 values into `to` at dst. Throws Error for int8 (see quantize_rows_i8).
void from_f32(DType to, const float* src, void* dst, size_t n);

}  // namespace rwkvpp
