// int8 -> fp16 conversion of weight tiles (see int8.cuh).
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/int8.cuh"

namespace rwkvpp::cuda {
namespace {

constexpr int kThreads = 256;

// Two int8 values (bytes b0, b0 + 1 of p) as a half2 without a conversion instruction: q ^ 0x80
// is q + 128 as an unsigned byte; under the fp16 exponent bits 0x64 it makes 1024 + q + 128
// exactly (fp16 spacing is 1 in [1024, 2048)); subtracting 1152 leaves q.
__device__ __forceinline__ __half2 i8x2_to_half2(uint32_t p_xor, unsigned sel) {
  const uint32_t bits = __byte_perm(p_xor, 0x64646464u, sel);
  __half2 h;
  memcpy(&h, &bits, 4);
  return __hsub2(h, __float2half2_rn(1152.0f));
}

// Vector kernel: thread i of the grid-stride loop takes 16 bytes of q (one uint4) and writes 16
// halves (two uint4). Requires q and out 16-byte aligned; chunks = count / 16.
__global__ void dequant_vec_kernel(const uint4* __restrict__ q, uint4* __restrict__ out,
                                   int64_t chunks) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < chunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 u = q[i];
    const uint32_t p[4] = {u.x ^ 0x80808080u, u.y ^ 0x80808080u, u.z ^ 0x80808080u,
                           u.w ^ 0x80808080u};
    uint32_t o[8];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      // result bytes [b0, 0x64, b1, 0x64] and [b2, 0x64, b3, 0x64]
      const __half2 lo = i8x2_to_half2(p[k], 0x5140u);
      const __half2 hi = i8x2_to_half2(p[k], 0x5342u);
      memcpy(&o[2 * k], &lo, 4);
      memcpy(&o[2 * k + 1], &hi, 4);
    }
    out[2 * i] = make_uint4(o[0], o[1], o[2], o[3]);
    out[2 * i + 1] = make_uint4(o[4], o[5], o[6], o[7]);
  }
}

// Scalar kernel for [begin, count): one value per thread and step.
__global__ void dequant_scalar_kernel(const int8_t* __restrict__ q, __half* __restrict__ out,
                                      int64_t begin, int64_t count) {
  pdl_begin();
  for (int64_t i = begin + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __int2half_rn(int(q[i]));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void dequant_i8_f16(const int8_t* q, __half* out, int64_t count, cudaStream_t s) {
  if (count <= 0) return;
  int64_t done = 0;
  if (aligned16(q) && aligned16(out)) {
    const int64_t chunks = count / 16;
    if (chunks > 0) {
      launch(dequant_vec_kernel, grid_for(chunks, kThreads), kThreads, 0, s,
             reinterpret_cast<const uint4*>(q), reinterpret_cast<uint4*>(out), chunks);
      RWKVPP_CUDA_LAUNCHED("dequant_vec_kernel");
    }
    done = chunks * 16;
  }
  if (done < count) {
    launch(dequant_scalar_kernel, grid_for(count - done, kThreads), kThreads, 0, s, q, out, done,
           count);
    RWKVPP_CUDA_LAUNCHED("dequant_scalar_kernel");
  }
}

}  // namespace rwkvpp::cuda
