// Row normalisation kernel (see layer_norm.cuh).
//
// Mapping: one block per row (blockIdx.x grid-strides over rows), its threads striding over the
// row's columns. Three passes over the row: the mean, then the variance around it (two-pass,
// as the CPU reference does, so large means do not cancel), then the scaled output; rows up to
// kRowRegs * 256 wide are read once into registers (row_mean_rstd_regs). Each thread writes only
// columns it read itself, after both reductions, so y may alias x.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/layer_norm.cuh"

namespace rwkvpp::cuda {
namespace {

__global__ void norm_rows_kernel(const float* x, const float* __restrict__ w,
                                 const float* __restrict__ b, float* y, int64_t rows,
                                 int64_t width, int64_t period, float eps) {
  pdl_begin();
  __shared__ float red[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * width;
    float* yr = y + r * width;
    const int64_t wo = (r % period) * width;
    if (width <= int64_t(kRowRegs) * blockDim.x) {  // the row in registers, read once
      float v[kRowRegs];
      const float2 st = row_mean_rstd_regs(xr, int(width), eps, red, v);
#pragma unroll
      for (int i = 0; i < kRowRegs; ++i) {
        const int64_t c = threadIdx.x + int64_t(i) * blockDim.x;
        if (c < width) yr[c] = (v[i] - st.x) * st.y * w[wo + c] + b[wo + c];
      }
      continue;
    }
    const float2 st = row_mean_rstd(xr, width, eps, red);
    const float mean = st.x, inv = st.y;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
      yr[c] = (xr[c] - mean) * inv * w[wo + c] + b[wo + c];
    // block_sum ended with a barrier, and the next row's first reads are of another row, so no
    // thread can overwrite what a slower one still reads.
  }
}

}  // namespace

void norm_rows(const float* x, const float* w, const float* b, float* y, int64_t rows,
               int64_t width, int64_t period, float eps, cudaStream_t s) {
  if (rows == 0 || width == 0) return;
  // Round the width up to whole warps; 256 threads at most (wider rows loop).
  const int threads = int(std::min<int64_t>(256, (width + 31) / 32 * 32));
  const unsigned grid = unsigned(std::min<int64_t>(rows, 1 << 20));
  launch(norm_rows_kernel, grid, threads, 0, s, x, w, b, y, rows, width, period, eps);
  RWKVPP_CUDA_LAUNCHED("norm_rows_kernel");
}

}  // namespace rwkvpp::cuda
