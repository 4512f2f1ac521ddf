// Per-head reductions of RWKV-6/7 (contracts in kernels/backend.h): L2 normalisation of each
// head's vector, and the weighted per-head dot product that scales another vector.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace rwkvpp::cuda {

// y[i, h*N + j] = x[i, h*N + j] / max(||x[i, h*N .. h*N+N)||_2, eps). y may alias x.
void head_l2_normalize(const float* x, float* y, int64_t n, int64_t n_head, int64_t head_size,
                       float eps, cudaStream_t s);
// y[i, h*N + j] += (sum_l a[i,h*N+l] * b[i,h*N+l] * w[h*N+l]) * c[i, h*N + j].
void head_dot_add(const float* a, const float* b, const float* w, const float* c, float* y,
                  int64_t n, int64_t n_head, int64_t head_size, cudaStream_t s);

}  // namespace rwkvpp::cuda
