#include "kernels/cpu/cpu_ops.h"

#include <algorithm>
#include <cstring>

namespace rwkvpp::cpu {

void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t d,
                float eps) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < d; ++c) mean += xi[c];
    mean /= double(d);
    for (int64_t c = 0; c < d; ++c) var += (xi[c] - mean) * (xi[c] - mean);
    var /= double(d);
    const float inv = float(1.0 / std::sqrt(var + eps));
    const float m = float(mean);
    float* yi = y + i * d;
    for (int64_t c = 0; c < d; ++c) yi[c] = (xi[c] - m) * inv * w[c] + b[c];
  }
}

void unary(Unary op, const float* x, float* y, int64_t count) {
  switch (op) {
    case Unary::Sigmoid:
      for (int64_t i = 0; i < count; ++i) y[i] = 1.0f / (1.0f + std::exp(-x[i]));
      return;
    case Unary::ReluSquare:
      for (int64_t i = 0; i < count; ++i) {
        float r = std::max(x[i], 0.0f);
        y[i] = r * r;
      }
      return;
    case Unary::Silu:
      for (int64_t i = 0; i < count; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
      return;
    case Unary::Tanh:
      for (int64_t i = 0; i < count; ++i) y[i] = std::tanh(x[i]);
      return;
    case Unary::Exp:
      for (int64_t i = 0; i < count; ++i) y[i] = std::exp(x[i]);
      return;
    case Unary::NegExp:
      for (int64_t i = 0; i < count; ++i) y[i] = -std::exp(x[i]);
      return;
    case Unary::ExpNegExp:
      for (int64_t i = 0; i < count; ++i) y[i] = std::exp(-std::exp(x[i]));
      return;
  }
}

void token_shift(const float* x, int64_t d, std::span<const Segment> segs, float* state,
                 int64_t stride, int64_t off, float* prev) {
  for (const Segment& s : segs) {
    if (s.len == 0) continue;
    float* st = state + int64_t(s.slot) * stride + off;
    std::memcpy(prev + int64_t(s.start) * d, st, size_t(d) * 4);
    if (s.len > 1)
      std::memcpy(prev + int64_t(s.start + 1) * d, x + int64_t(s.start) * d, size_t(s.len - 1) * d * 4);
    std::memcpy(st, x + int64_t(s.start + s.len - 1) * d, size_t(d) * 4);
  }
}

void wkv4(const float* k, const float* v, const float* w, const float* u,
          std::span<const Segment> segs, float* state, int64_t stride, int64_t off_aa, float* out,
          int64_t d) {
  for (const Segment& s : segs) {
    float* aa = state + int64_t(s.slot) * stride + off_aa;
    float* bb = aa + d;
    float* pp = bb + d;
    for (int64_t t = s.start; t < s.start + s.len; ++t) {
      const float* kt = k + t * d;
      const float* vt = v + t * d;
      float* ot = out + t * d;
      for (int64_t c = 0; c < d; ++c) {
        float ww = u[c] + kt[c];
        float p = std::max(pp[c], ww);
        float e1 = std::exp(pp[c] - p);
        float e2 = std::exp(ww - p);
        ot[c] = (e1 * aa[c] + e2 * vt[c]) / (e1 * bb[c] + e2);
        ww = pp[c] + w[c];
        p = std::max(ww, kt[c]);
        e1 = std::exp(ww - p);
        e2 = std::exp(kt[c] - p);
        aa[c] = e1 * aa[c] + e2 * vt[c];
        bb[c] = e1 * bb[c] + e2;
        pp[c] = p;
      }
    }
  }
}

void wkv5(const float* r, const float* k, const float* v, const float* w, bool w_per_token,
          const float* u, std::span<const Segment> segs, float* state, int64_t stride, int64_t off,
          float* out, int64_t H, int64_t N) {
  const int64_t C = H * N;
  for (const Segment& s : segs) {
    float* S = state + int64_t(s.slot) * stride + off;
    for (int64_t t = s.start; t < s.start + s.len; ++t) {
      const float* wt = w_per_token ? w + t * C : w;
      for (int64_t h = 0; h < H; ++h) {
        const float* rt = r + t * C + h * N;
        const float* kt = k + t * C + h * N;
        const float* vt = v + t * C + h * N;
        float* Sh = S + h * N * N;
        float* ot = out + t * C + h * N;
        for (int64_t j = 0; j < N; ++j) ot[j] = 0;
        for (int64_t i = 0; i < N; ++i) {
          const float ri = rt[i], ki = kt[i], ui = u[h * N + i], wi = wt[h * N + i];
          float* Si = Sh + i * N;
          for (int64_t j = 0; j < N; ++j) {
            const float kv = ki * vt[j];
            ot[j] += ri * (ui * kv + Si[j]);
            Si[j] = Si[j] * wi + kv;
          }
        }
      }
    }
  }
}

void wkv7(const float* r, const float* w, const float* k, const float* v, const float* a,
          const float* b, std::span<const Segment> segs, float* state, int64_t stride, int64_t off,
          float* out, int64_t H, int64_t N) {
  const int64_t C = H * N;
  for (const Segment& s : segs) {
    float* S = state + int64_t(s.slot) * stride + off;
    for (int64_t t = s.start; t < s.start + s.len; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t o = t * C + h * N;
        float* Sh = S + h * N * N;
        for (int64_t j = 0; j < N; ++j) {
          float* Sj = Sh + j * N;
          float sa = 0;
          for (int64_t i = 0; i < N; ++i) sa += Sj[i] * a[o + i];
          float y = 0;
          for (int64_t i = 0; i < N; ++i) {
            Sj[i] = Sj[i] * w[o + i] + sa * b[o + i] + v[o + j] * k[o + i];
            y += Sj[i] * r[o + i];
          }
          out[o + j] = y;
        }
      }
    }
  }
}

void lerp(const float* a, const float* b, const float* m, float* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = a[i] + (b[i] - a[i]) * m[i];
}

void head_l2_normalize(const float* x, float* y, int64_t n, int64_t H, int64_t N, float eps) {
  for (int64_t g = 0; g < n * H; ++g) {
    const float* xg = x + g * N;
    double ss = 0;
    for (int64_t j = 0; j < N; ++j) ss += double(xg[j]) * xg[j];
    const float inv = float(1.0 / std::max(std::sqrt(ss), double(eps)));
    float* yg = y + g * N;
    for (int64_t j = 0; j < N; ++j) yg[j] = xg[j] * inv;
  }
}

void head_dot_add(const float* a, const float* b, const float* w, const float* c, float* y,
                  int64_t n, int64_t H, int64_t N) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = (i * H + h) * N;
      double dot = 0;
      for (int64_t l = 0; l < N; ++l) dot += double(a[o + l]) * b[o + l] * w[h * N + l];
      const float s = float(dot);
      for (int64_t j = 0; j < N; ++j) y[o + j] += s * c[o + j];
    }
}

}  // namespace rwkvpp::cpu
