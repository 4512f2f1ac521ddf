// Layer norm and group norm (per-head layer norm) for the CUDA backend.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace rwkvpp::cuda {

// Normalises `rows` rows of width `width`: y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * w + b,
// where w and b are taken at offset (r % period) * width (period 1: layer norm over rows of d;
// period H with width N: group norm over the heads of each token). y may alias x.
void norm_rows(const float* x, const float* w, const float* b, float* y, int64_t rows,
               int64_t width, int64_t period, float eps, cudaStream_t s);

}  // namespace rwkvpp::cuda
