// Per-head reduction kernels (see head_ops.cuh).
//
// Mapping: one warp per (token, head) group of N channels, 8 groups per 256-thread block; the
// warp's lanes stride over the group's channels, reduce with shuffles (warp_sum leaves the total
// in every lane), then write the channels each lane read itself, so in-place use is safe.
// Groups are contiguous: group g = i * n_head + h covers [g * N, g * N + N).
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/head_ops.cuh"

namespace rwkvpp::cuda {
namespace {

constexpr int kWarps = 8;

__global__ void head_l2_normalize_kernel(const float* x, float* y, int64_t groups, int64_t N,
                                         float eps) {
  pdl_begin();
  const int lane = threadIdx.x & 31;
  for (int64_t g = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); g < groups;
       g += int64_t(gridDim.x) * kWarps) {
    const float* xg = x + g * N;
    float ss = 0.0f;
    for (int64_t j = lane; j < N; j += 32) ss += xg[j] * xg[j];
    const float inv = 1.0f / fmaxf(sqrtf(warp_sum(ss)), eps);
    float* yg = y + g * N;
    for (int64_t j = lane; j < N; j += 32) yg[j] = xg[j] * inv;
  }
}

__global__ void head_dot_add_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                    const float* __restrict__ w, const float* __restrict__ c,
                                    float* __restrict__ y, int64_t groups, int64_t H, int64_t N) {
  pdl_begin();
  const int lane = threadIdx.x & 31;
  for (int64_t g = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); g < groups;
       g += int64_t(gridDim.x) * kWarps) {
    const int64_t o = g * N, wo = (g % H) * N;
    float dot = 0.0f;
    for (int64_t l = lane; l < N; l += 32) dot += a[o + l] * b[o + l] * w[wo + l];
    dot = warp_sum(dot);
    for (int64_t j = lane; j < N; j += 32) y[o + j] += dot * c[o + j];
  }
}

unsigned groups_grid(int64_t groups) {
  return unsigned(std::min<int64_t>((groups + kWarps - 1) / kWarps, 1 << 20));
}

}  // namespace

void head_l2_normalize(const float* x, float* y, int64_t n, int64_t H, int64_t N, float eps,
                       cudaStream_t s) {
  const int64_t groups = n * H;
  if (groups == 0 || N == 0) return;
  launch(head_l2_normalize_kernel, groups_grid(groups), kWarps * 32, 0, s, x, y, groups, N, eps);
  RWKVPP_CUDA_LAUNCHED("head_l2_normalize_kernel");
}

void head_dot_add(const float* a, const float* b, const float* w, const float* c, float* y,
                  int64_t n, int64_t H, int64_t N, cudaStream_t s) {
  const int64_t groups = n * H;
  if (groups == 0 || N == 0) return;
  launch(head_dot_add_kernel, groups_grid(groups), kWarps * 32, 0, s, a, b, w, c, y, groups, H, N);
  RWKVPP_CUDA_LAUNCHED("head_dot_add_kernel");
}

}  // namespace rwkvpp::cuda
