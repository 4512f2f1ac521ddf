// The CPU matrix kernel with AVX-512 (F, BW, VL) and F16C: 16 rows per vector; every tile covers
// a whole 128-row block (8 vectors) for up to 3 tokens, so each k step reads contiguous weights.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c (kernels/CMakeLists.txt) and only
// called where the CPU has them (gemm.cpp).
// GCC 12 warns inside its own avx512fintrin.h (the "undefined" pass-through operand of the
// unmasked int8 widening intrinsics) at -O3: a known false positive, silenced for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "kernels/cpu/gemm_kernel.h"

namespace rwkvpp::cpu {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int L = 16;
  static constexpr int kWideNV = 8, kWideT = 3;
  // Measured (kernels/cpu/dev/gemm_lab, docs/perf.md): whole-block tiles of 3 tokens are as fast
  // at 512 tokens as 32-row x 12-token tiles, and 2-3x faster at 3-8 tokens (one sequential
  // pass over the weights instead of four strided ones): the tall tile is the wide one.
  static constexpr int kTileNV = kWideNV, kTileT = kWideT, kTallFrom = 1 << 30;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float f) { return _mm512_set1_ps(f); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static __mmask16 mask(int n) { return __mmask16((1u << n) - 1u); }
  static V load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static V f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V bf16(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static void nib2(const uint8_t* p, V& lo, V& hi) {
    const __m512i u = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(u, _mm512_set1_epi32(15)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(u, 4));
  }
  static V i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace

GemmBlockFn gemm_block_avx512() { return &block_any<Avx512>; }

}  // namespace rwkvpp::cpu
