// The CPU matrix kernel with AVX2, FMA and F16C: 8 rows per vector; up to 15 tokens stream a
// whole 128-row block per k step (16 vectors), larger batches use 16-row x 6-token tiles. Compiled with
// -mavx2 -mfma -mf16c (kernels/CMakeLists.txt) and only called where the CPU has them (gemm.cpp).
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "kernels/cpu/gemm_kernel.h"

namespace rwkvpp::cpu {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int L = 8;
  static constexpr int kWideNV = 16, kWideT = 3;
  // Measured (kernels/cpu/dev/gemm_lab, forced on an AVX-512 machine; docs/perf.md): a whole
  // block per k step, even with accumulators spilled to L1, reads at ~48 GB/s on two cores where
  // two or four strided passes over 64- or 32-row tiles got 28 and 18; from 16 tokens on, the
  // register-resident 16-row x 6-token tile computes 1.5x faster.
  static constexpr int kTileNV = 2, kTileT = 6, kTallFrom = 16;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float f) { return _mm256_set1_ps(f); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static V f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static V bf16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void nib2(const uint8_t* p, V& lo, V& hi) {
    const __m256i u = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(u, _mm256_set1_epi32(15)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(u, 4));
  }
  static V i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace

GemmBlockFn gemm_block_avx2() { return &block_any<Avx2>; }

}  // namespace rwkvpp::cpu
