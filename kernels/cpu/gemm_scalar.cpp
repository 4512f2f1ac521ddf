// The CPU matrix kernel without SIMD: one row per "vector", the same tiles and the same fma
// chains as the vector kernels (std::fma is exact), so it gives their results bit for bit on any
// CPU. The reference the tests hold the vector kernels to; used where neither AVX2 nor AVX-512
// is present.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/cpu/gemm_kernel.h"

namespace rwkvpp::cpu {
namespace {

struct Scalar {
  using V = float;
  static constexpr int L = 1;
  static constexpr int kWideNV = 8, kWideT = 2, kTileNV = 4, kTileT = 4, kTallFrom = 3;
  static V zero() { return 0.0f; }
  static V set1(float f) { return f; }
  static V fma(V a, V b, V c) { return std::fma(a, b, c); }
  static V mul(V a, V b) { return a * b; }
  static V load(const float* p) { return *p; }
  static V load_n(const float* p, int) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static void store_n(float* p, V v, int) { *p = v; }
  static V f16(const uint16_t* p) {
    // IEEE binary16 -> binary32, exactly (subnormals, infinities and NaN included).
    const uint32_t h = *p, sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t u;
    if (e == 0x1f) {
      u = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u);
    } else if (e != 0) {
      u = sign | ((e + 112u) << 23) | (m << 13);
    } else if (m == 0) {
      u = sign;
    } else {  // subnormal: m * 2^-24, exact in fp32
      float f = float(m) * 5.9604644775390625e-8f;
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static V bf16(const uint16_t* p) {
    const uint32_t u = uint32_t(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static V i8(const int8_t* p) { return float(*p); }
  static void nib2(const uint8_t* p, V& lo, V& hi) {
    lo = float(*p & 15);
    hi = float(*p >> 4);
  }
};

}  // namespace

GemmBlockFn gemm_block_scalar() { return &block_any<Scalar>; }

}  // namespace rwkvpp::cpu
