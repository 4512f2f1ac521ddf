// Plain-loop reference implementations of the recurrent and normalisation ops, shared by the
// CPU backend and by tests. They follow DESIGN.md's formulas literally; fp32 throughout.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "kernels/backend.h"

namespace rwkvpp::cpu {

inline float apply(Binary op, float a, float b) {
  switch (op) {
    case Binary::Add: return a + b;
    case Binary::Mul: return a * b;
    case Binary::Sub: return a - b;
  }
  return 0;
}

void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t d,
                float eps);
void unary(Unary op, const float* x, float* y, int64_t count);
void token_shift(const float* x, int64_t d, std::span<const Segment> segs, float* state,
                 int64_t stride, int64_t off, float* prev);
void wkv4(const float* k, const float* v, const float* w, const float* u,
          std::span<const Segment> segs, float* state, int64_t stride, int64_t off_aa, float* out,
          int64_t d);
void wkv5(const float* r, const float* k, const float* v, const float* w, bool w_per_token,
          const float* u, std::span<const Segment> segs, float* state, int64_t stride, int64_t off,
          float* out, int64_t H, int64_t N);
void wkv7(const float* r, const float* w, const float* k, const float* v, const float* a,
          const float* b, std::span<const Segment> segs, float* state, int64_t stride, int64_t off,
          float* out, int64_t H, int64_t N);
// Backend::lerp, head_l2_normalize and head_dot_add (contracts in kernels/backend.h).
void lerp(const float* a, const float* b, const float* m, float* y, int64_t count);
void head_l2_normalize(const float* x, float* y, int64_t n, int64_t H, int64_t N, float eps);
void head_dot_add(const float* a, const float* b, const float* w, const float* c, float* y,
                  int64_t n, int64_t H, int64_t N);

}  // namespace rwkvpp::cpu
