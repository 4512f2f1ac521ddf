#include "common/dtype.h"

#include <cmath>
#include <vector>

#include "common/error.h"

namespace rwkvpp {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::I8: return 1;
    case DType::I4: break;
  }
  fail("int4 has no size per element (two weights a byte); matrix_bytes gives a matrix's bytes");
}

uint64_t matrix_bytes(DType t, int64_t rows, int64_t cols) {
  const uint64_t r = uint64_t(rows), c = uint64_t(cols);
  switch (t) {
    case DType::I8: return r * c + r * 4;
    case DType::I4: return (r * c + 1) / 2 + r * ((c + uint64_t(kI4Group) - 1) / uint64_t(kI4Group)) * 4;
    default: return r * c * dtype_size(t);
  }
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
    case DType::I8: return "int8";
    case DType::I4: return "int4";
  }
  return "?";
}

DType parse_dtype(std::string_view n) {
  if (n == "fp32" || n == "f32" || n == "float32") return DType::F32;
  if (n == "fp16" || n == "f16" || n == "float16") return DType::F16;
  if (n == "bf16" || n == "bfloat16") return DType::BF16;
  if (n == "int8" || n == "i8") return DType::I8;
  if (n == "int4" || n == "i4") return DType::I4;
  fail("unknown dtype '{}' (expected fp32, fp16, bf16, int8 or int4)", n);
}

void require_storage_dtype(DType t, std::string_view what) {
  if (t == DType::I8 || t == DType::I4)
    fail("{}: {} is a compute dtype only (--compute-dtype {} quantises the matrices when a stage "
         "loads them); model files store fp32, fp16 or bf16",
         what, dtype_name(t), dtype_name(t));
}

DType parse_storage_dtype(std::string_view n, std::string_view what) {
  DType t = parse_dtype(n);
  require_storage_dtype(t, what);
  return t;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {                                  // below fp16 normal range: subnormal or 0
    // value = a as float; subnormal unit is 2^-24.
    float v;
    std::memcpy(&v, &a, 4);
    float scaled = v * 16777216.0f;  // 2^24, exact
    uint32_t m = uint32_t(std::nearbyint(scaled));  // default rounding mode: nearest even
    return uint16_t(sign | m);
  }
  uint32_t mant = a & 0x7fffffu;
  uint32_t exp = (a >> 23) - 127 + 15;
  uint32_t h = exp << 10 | mant >> 13;
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into exponent correctly
  return uint16_t(sign | h);
}

namespace {

// All 65536 halves as floats (256 KiB): widening fp16 weights is a table lookup.
const float* f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = f16_to_f32(uint16_t(h));
    return t;
  }();
  return table.data();
}

}  // namespace

void to_f32(DType from, const void* src, float* dst, size_t n) {
  switch (from) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      const float* t = f16_table();
      for (size_t i = 0; i < n; ++i) dst[i] = t[s[i]];
      return;
    }
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::I8:
    case DType::I4: break;
  }
  fail("to_f32: quantised values need their scales (dequantise with kernels/quantize.h)");
}

void from_f32(DType to, const float* src, void* dst, size_t n) {
  switch (to) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::I8:
    case DType::I4: break;
  }
  fail("from_f32: quantised dtypes need scales (quantise with kernels/quantize.h)");
}

}  // namespace rwkvpp
