// Shared pieces of the CUDA kernels: error-check macros, weight-element loads for the three
// weight dtypes, warp/block reductions and grid sizing. Included by the .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/env_options.h"
#include "kernels/cuda/cuda_check.h"

// Checks a CUDA runtime call; throws rwkvpp::Error with the CUDA error string on failure.
#define RWKVPP_CUDA_CHECK(call)                                                        \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess) ::rwkvpp::cuda::fail_cuda(int(e_), #call, __FILE__, __LINE__); \
  } while (0)

// Checks the launch that precedes it (bad configuration, missing kernel image); errors raised
// while the kernel runs surface at the next synchronising call.
#define RWKVPP_CUDA_LAUNCHED(name)                                                      \
  do {                                                                                  \
    cudaError_t e_ = cudaGetLastError();                                                \
    if (e_ != cudaSuccess) ::rwkvpp::cuda::fail_cuda(int(e_), name, __FILE__, __LINE__); \
  } while (0)

namespace rwkvpp::cuda {

// Programmatic dependent launch (Hopper and later; docs/cuda.md): every kernel of this backend
// is launched with cudaLaunchAttributeProgrammaticStreamSerialization, so the GPU may start
// scheduling a kernel's blocks while the kernel before it on the queue (also inside a CUDA
// graph) is still running. Each kernel therefore begins with pdl_begin(): it waits until the
// previous kernel has finished and its writes are visible (griddepcontrol.wait), then lets
// the next kernel be scheduled (launch_dependents). Before the wait a kernel may only read
// what no kernel writes (the weights: the GEMV issues its first weight loads there; the segment
// tables, which only copies write) and must write nothing. Without the attribute (RWKVPP_PDL=0,
// older GPUs) both are no-ops.
__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether kernels get the attribute: compute capability 9.0 or later, and RWKVPP_PDL is not
// "0". Read once per process (from the device current at the first launch).
inline bool pdl_allowed() {
  static const bool on = [] {
    if (!rwkvpp::env_options().cuda.pdl) return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
      return false;
    return major >= 9;
  }();
  return on;
}

// Launches `kernel` (which must begin with pdl_begin()) on `s`; throws Error when the launch
// is refused. The arguments convert to the kernel's parameter types as with <<<...>>>.
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                   Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_allowed() ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) fail_cuda(int(err), "kernel launch", __FILE__, __LINE__);
}

// One weight element as fp32, for each stored dtype.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Sum over the 32 lanes of a warp; every lane gets the total (float or double).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// `red` is shared scratch of 32 values; the call ends with the block synchronised, so the same
// scratch can be reused by the next call.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T t = lane < nwarps ? red[lane] : T(0);
  t = warp_sum(t);
  __syncthreads();
  return t;
}

// Mean and 1 / sqrt(variance + eps) of the row xr[0, width), computed by the whole block in
// two passes (the variance around the mean, as the CPU reference does, so large means do not
// cancel). Every thread gets both; `red` as for block_sum.
__device__ __forceinline__ float2 row_mean_rstd(const float* xr, int64_t width, float eps, float* red) {
  const float inv_width = 1.0f / float(width);
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) s += xr[c];
  const float mean = block_sum(s, red) * inv_width;
  float q = 0.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float dlt = xr[c] - mean;
    q += dlt * dlt;
  }
  const float var = block_sum(q, red) * inv_width;
  return make_float2(mean, 1.0f / sqrtf(var + eps));
}

// The same statistics with the row held in registers: thread t loads elements t, t + blockDim.x,
// ... (at most kRowRegs of them, all issued before any is used) into v, so the row is read from
// memory once and both passes run on registers. A strided loop that adds as it loads waits a
// full memory latency per element (measured on an H100: ~10 us for a 2048-wide row, ~130 us for
// norm_shift_mix at 256 tokens of 5120). Requires width <= kRowRegs * blockDim.x; elements past
// the width are 0 in v.
constexpr int kRowRegs = 32;
__device__ __forceinline__ float2 row_mean_rstd_regs(const float* xr, int width, float eps, float* red,
                                                     float (&v)[kRowRegs]) {
  const float inv_width = 1.0f / float(width);
#pragma unroll
  for (int i = 0; i < kRowRegs; ++i) {
    const int c = int(threadIdx.x) + i * int(blockDim.x);
    v[i] = c < width ? xr[c] : 0.0f;
  }
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < kRowRegs; ++i) s += v[i];
  const float mean = block_sum(s, red) * inv_width;
  float q = 0.0f;
#pragma unroll
  for (int i = 0; i < kRowRegs; ++i) {
    const int c = int(threadIdx.x) + i * int(blockDim.x);
    const float dlt = c < width ? v[i] - mean : 0.0f;
    q += dlt * dlt;
  }
  const float var = block_sum(q, red) * inv_width;
  return make_float2(mean, 1.0f / sqrtf(var + eps));
}

// Blocks for a grid-stride loop over `count` items with `threads` per block, capped so that
// the grid stays a few waves deep on any current GPU.
inline unsigned grid_for(int64_t count, int threads) {
  int64_t b = (count + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65536) b = 65536;
  return unsigned(b);
}

}  // namespace rwkvpp::cuda
