// Element-wise ops of the CUDA backend: token-shift mix, unary activations, binary ops (full
// and row-broadcast), embedding lookup and row gathers. All activations fp32, row-major.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"
#include "kernels/backend.h"

namespace rwkvpp::cuda {

// y = x * mu + prev * (1 - mu), mu [d] broadcast over n rows. y may alias x.
void mix(const float* x, const float* prev, const float* mu, float* y, int64_t n, int64_t d,
         cudaStream_t s);
// y = op(x) element-wise over `count` values. y may alias x.
void unary(Unary op, const float* x, float* y, int64_t count, cudaStream_t s);
// y = op(a, b) element-wise. y may alias a or b.
void binary(Binary op, const float* a, const float* b, float* y, int64_t count, cudaStream_t s);
// y[i, :] = op(a[i, :], v), v [d] broadcast over n rows.
void binary_row(Binary op, const float* a, const float* v, float* y, int64_t n, int64_t d,
                cudaStream_t s);
// y = a + (b - a) * m element-wise. y may alias a, b or m.
void lerp(const float* a, const float* b, const float* m, float* y, int64_t count, cudaStream_t s);
// Row indices for embedding and gather_rows: in device memory (dev), or, for up to kInlineIds
// of them (a decode step's few tokens), by value in the launch's parameters, so that no
// host-to-device copy precedes the kernel (dev null).
struct IdList {
  static constexpr int kInlineIds = 8;
  const int32_t* dev = nullptr;
  int32_t inl[kInlineIds] = {};
};
// y[i, :] = E[ids[i], :] widened to fp32; E [rows, cols] of dtype `dt`; ids already checked to
// lie in [0, rows).
void embedding(const void* E, DType dt, int64_t cols, const IdList& ids, int64_t n, float* y,
               cudaStream_t s);
// y[j, :] = x[rows[j], :] for j < m.
void gather_rows(const float* x, const IdList& rows, int64_t m, int64_t d, float* y,
                 cudaStream_t s);

}  // namespace rwkvpp::cuda
