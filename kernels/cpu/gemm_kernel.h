// The block kernel of the CPU matrix product, written once over an instruction-set traits class
// I and included by each gemm_<isa>.cpp (compiled with that set's -m flags). Everything here is
// in an unnamed namespace, so each including file gets its own copy (no shared weak symbols
// across instruction sets). The arithmetic contract is gemm.h's: lanes are output rows; each
// element is one fma chain in k order from +0.
//
// I provides: V (a vector of I::L floats), zero(), set1(float), fma(a, b, c) = a * b + c fused,
// mul(a, b), load(const float*), load_n(const float*, int n) / store(float*, V) /
// store_n(float*, V, int n) (the first n lanes), and the widening loads f16(const uint16_t*),
// bf16(const uint16_t*), i8(const int8_t*) of L stored values, nib2(const uint8_t* p, V& lo,
// V& hi) (the low and the high nibbles of the L bytes at p as floats). And the tile shapes:
// kWideNV and kWideT (vectors per k step and tokens of the wide tile: a whole block where it
// fits, read once per token tile), kTileNV and kTileT (the tall tile for kTallFrom tokens and
// more: fewer rows, more tokens per loaded weight vector).
#pragma once

#include <cstdint>

#include "kernels/cpu/gemm_isa.h"

namespace rwkvpp::cpu {
namespace {

constexpr int64_t kBlock = 128;  // == kBlockRows (gemm.h)
constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
constexpr int64_t pad32(int64_t r) { return (r + 31) / 32 * 32; }

struct F32E {
  using T = float;
  template <class I>
  static typename I::V load(const T* p) { return I::load(p); }
};
struct F16E {
  using T = uint16_t;
  template <class I>
  static typename I::V load(const T* p) { return I::f16(p); }
};
struct BF16E {
  using T = uint16_t;
  template <class I>
  static typename I::V load(const T* p) { return I::bf16(p); }
};
struct I8E {
  using T = int8_t;
  template <class I>
  static typename I::V load(const T* p) { return I::i8(p); }
};

// One register tile: NV vectors of rows (NV * L rows starting at w) by NT tokens, over k in
// [k0, k1). w: the block's packed weights at this tile's first row (k step: wb elements);
// x: the tile's first token (rows K apart); y: its first output (rows R apart); `valid`: rows
// of the tile that exist (the rest are padding and are not stored); `first`: start from +0
// instead of the partial sums in y; `last`: k1 == K (int8: scale the sums). sc: the tile's int8
// scales (null otherwise).
template <class I, class E, int NV, int NT>
void tile(const typename E::T* w, int64_t wb, const float* sc, const float* x, int64_t K,
          int64_t k0, int64_t k1, float* y, int64_t R, int64_t valid, bool first, bool last) {
  (void)sc;
  using V = typename I::V;
  constexpr int L = I::L;
  V acc[NT][NV];
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      const int64_t left = valid - int64_t(v) * L;
      if (first || left <= 0) acc[t][v] = I::zero();
      else if (left >= L) acc[t][v] = I::load(y + t * R + v * L);
      else acc[t][v] = I::load_n(y + t * R + v * L, int(left));
    }
  const typename E::T* wk = w + k0 * wb;
  auto weight = [&](int v) { return E::template load<I>(wk + v * L); };
  for (int64_t k = k0; k < k1; ++k, wk += wb) {
    if constexpr (NV > NT) {
      // Wide tiles (a whole block, few tokens): the tokens' inputs stay in registers and each
      // weight vector is used as soon as it is loaded.
      V xb[NT];
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) xb[t] = I::set1(x[t * K + k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const V wv = weight(v);
#pragma GCC unroll 16
        for (int t = 0; t < NT; ++t) acc[t][v] = I::fma(xb[t], wv, acc[t][v]);
      }
    } else {
      // Tall tiles (many tokens): the weight vectors stay in registers.
      V wv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) wv[v] = weight(v);
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) {
        const V xb = I::set1(x[t * K + k]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[t][v] = I::fma(xb, wv[v], acc[t][v]);
      }
    }
  }
  if constexpr (__is_same(E, I8E)) {
    if (last) {  // int8: the row scales multiply the finished sums
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const V s = I::load(sc + v * L);
#pragma GCC unroll 16
        for (int t = 0; t < NT; ++t) acc[t][v] = I::mul(acc[t][v], s);
      }
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      const int64_t left = valid - int64_t(v) * L;
      if (left >= L) I::store(y + t * R + v * L, acc[t][v]);
      else if (left > 0) I::store_n(y + t * R + v * L, acc[t][v], int(left));
    }
}

using TileFn = void (*)(const void*, int64_t, const float*, const float*, int64_t, int64_t,
                        int64_t, float*, int64_t, int64_t, bool, bool);

template <class I, class E, int NV, int NT>
void tile_erased(const void* w, int64_t wb, const float* sc, const float* x, int64_t K, int64_t k0,
                 int64_t k1, float* y, int64_t R, int64_t valid, bool first, bool last) {
  tile<I, E, NV, NT>(static_cast<const typename E::T*>(w), wb, sc, x, K, k0, k1, y, R, valid, first, last);
}

// tiles[t - 1] = the tile of NV vectors and t tokens, for t = 1 .. NT.
template <class I, class E, int NV, int... Ts>
constexpr void fill_tiles(TileFn* out, std::integer_sequence<int, Ts...>) {
  ((out[Ts] = &tile_erased<I, E, NV, Ts + 1>), ...);
}

template <class I, class E, int NV, int NT>
struct TileSet {
  TileFn fn[NT];
  constexpr TileSet() : fn() { fill_tiles<I, E, NV>(fn, std::make_integer_sequence<int, NT>()); }
};

// Block `b` of y = x W^T (gemm.h's layout). The tile shape follows n (decode reads each weight
// once per call; larger batches reuse each loaded weight vector across kTileT tokens), and K is
// cut into chunks whose block weights stay in cache while every token tile passes over them.
// None of this changes any element's arithmetic (the partial sums go through y exactly).
template <class I, class E>
void block(const GemmView& W, const float* x, float* y, int64_t n, int64_t b) {
  constexpr int L = I::L;
  static constexpr TileSet<I, E, I::kWideNV, I::kWideT> wide;
  static constexpr TileSet<I, E, I::kTileNV, I::kTileT> many;
  static constexpr TileSet<I, E, 1, I::kTileT> narrow;
  const int64_t R = W.rows, K = W.cols, Rp = pad32(R);
  const int64_t row0 = b * kBlock, wb = min64(kBlock, Rp - row0), valid = min64(wb, R - row0);
  const auto* wbase = static_cast<const typename E::T*>(W.data) + row0 * K;
  const float* sc = W.scales ? W.scales + row0 : nullptr;
  int nv, tt;
  const TileFn* fns;
  if (n < I::kTallFrom) nv = I::kWideNV, tt = I::kWideT, fns = wide.fn;
  else nv = I::kTileNV, tt = I::kTileT, fns = many.fn;
  const int64_t step = int64_t(nv) * L;
  // One pass over the block's rows needs no chunks; otherwise ~32 KiB of weights per chunk.
  int64_t kc = K;
  if (step < wb || n > tt) kc = min64(K, int64_t(32768) / (wb * int64_t(sizeof(typename E::T))) / 8 * 8 + 8);
  for (int64_t k0 = 0; k0 < K; k0 += kc) {
    const int64_t k1 = min64(K, k0 + kc);
    for (int64_t t0 = 0; t0 < n; t0 += tt) {
      const int nt = int(min64(tt, n - t0));
      const float* xt = x + t0 * K;
      float* yt = y + t0 * R + row0;
      int64_t r = 0;
      for (; r + step <= wb; r += step)
        fns[nt - 1](wbase + r, wb, sc ? sc + r : nullptr, xt, K, k0, k1, yt + r, R, valid - r, k0 == 0,
                    k1 == K);
      for (; r < wb; r += L)
        narrow.fn[nt - 1](wbase + r, wb, sc ? sc + r : nullptr, xt, K, k0, k1, yt + r, R, valid - r,
                          k0 == 0, k1 == K);
    }
  }
}

// int4 (gemm.h's contract and layout): one tile is the whole block (NV vectors: the low-nibble
// half's NV / 2 and the high-nibble half's, each load of wb / 2 bytes feeding both) for one
// token, over whole groups [k0, k1).
template <class I, int NV>
void tile_i4(const uint8_t* wblock, int64_t wb, const uint16_t* meta, int64_t G, const float* x,
             int64_t k0, int64_t k1, float* y, int64_t valid, bool first) {
  using V = typename I::V;
  constexpr int L = I::L, NP = NV / 2;
  const int64_t half = wb / 2;
  auto row_of = [&](int v) { return v < NP ? int64_t(v) * L : half + int64_t(v - NP) * L; };
  V T[NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const int64_t left = valid - row_of(v);
    if (first || left <= 0) T[v] = I::zero();
    else if (left >= L) T[v] = I::load(y + row_of(v));
    else T[v] = I::load_n(y + row_of(v), int(left));
  }
  for (int64_t kg = k0; kg < k1; kg += G) {
    const int64_t ke = min64(kg + G, k1);
    V A[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) A[v] = I::zero();
    float X = 0.0f;
    const uint8_t* wk = wblock + kg * half;
    for (int64_t k = kg; k < ke; ++k, wk += half) {
      const float xv = x[k];
      X = X + xv;
      const V xb = I::set1(xv);
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) {
        V lo, hi;
        I::nib2(wk + p * L, lo, hi);
        A[p] = I::fma(xb, lo, A[p]);
        A[NP + p] = I::fma(xb, hi, A[NP + p]);
      }
    }
    const uint16_t* dm = meta + (kg / G) * 2 * wb;
    const V Xb = I::set1(X);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      T[v] = I::fma(I::f16(dm + row_of(v)), A[v], T[v]);
      T[v] = I::fma(I::f16(dm + wb + row_of(v)), Xb, T[v]);
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const int64_t left = valid - row_of(v);
    if (left >= L) I::store(y + row_of(v), T[v]);
    else if (left > 0) I::store_n(y + row_of(v), T[v], int(left));
  }
}

template <class I>
void block_i4(const GemmView& W, const float* x, float* y, int64_t n, int64_t b) {
  constexpr int L = I::L;
  const int64_t R = W.rows, K = W.cols, Rp = pad32(R), G = W.group, ng = (K + G - 1) / G;
  const int64_t row0 = b * kBlock, wb = min64(kBlock, Rp - row0), valid = min64(wb, R - row0);
  const auto* wblock = static_cast<const uint8_t*>(W.data) + row0 * K / 2;
  const uint16_t* meta = W.aux + row0 * ng * 2;
  // ~32 KiB of packed weights per chunk, whole groups (the chunk stays in cache while each token
  // passes over it).
  const int64_t kc = n == 1 ? K : min64(K, (int64_t(32768) / (wb / 2) / G + 1) * G);
  using Tile = void (*)(const uint8_t*, int64_t, const uint16_t*, int64_t, const float*, int64_t,
                        int64_t, float*, int64_t, bool);
  static constexpr Tile tiles[4] = {&tile_i4<I, 32 / L>, &tile_i4<I, 64 / L>, &tile_i4<I, 96 / L>,
                                    &tile_i4<I, 128 / L>};
  const Tile fn = tiles[wb / 32 - 1];
  for (int64_t k0 = 0; k0 < K; k0 += kc) {
    const int64_t k1 = min64(K, k0 + kc);
    for (int64_t t = 0; t < n; ++t) fn(wblock, wb, meta, G, x + t * K, k0, k1, y + t * R + row0, valid, k0 == 0);
  }
}

template <class I>
void block_any(const GemmView& W, const float* x, float* y, int64_t n, int64_t b) {
  switch (W.dtype) {
    case GemmDType::F32: return block<I, F32E>(W, x, y, n, b);
    case GemmDType::F16: return block<I, F16E>(W, x, y, n, b);
    case GemmDType::BF16: return block<I, BF16E>(W, x, y, n, b);
    case GemmDType::I8: return block<I, I8E>(W, x, y, n, b);
    case GemmDType::I4: return block_i4<I>(W, x, y, n, b);
  }
}

}  // namespace
}  // namespace rwkvpp::cpu
