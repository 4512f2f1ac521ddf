// Token shift kernel (see token_shift.cuh).
//
// Mapping: blockIdx.y is the segment; the block's threads grid-stride over that segment's
// len * d (token, channel) pairs, consecutive threads on consecutive channels. The thread of a
// segment's first token for channel c is the only one that touches state[c]: it reads the old
// value into prev and then stores the segment's last x, so no other thread races with it.
// State layout: slot `slot` holds its d floats at state + slot * stride + off.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/token_shift.cuh"

namespace rwkvpp::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void token_shift_kernel(const float* __restrict__ x, int64_t d,
                                   const Segment* __restrict__ segs, float* state, int64_t stride,
                                   int64_t off, float* __restrict__ prev) {
  const Segment sg = segs[blockIdx.y];
  const int64_t count = int64_t(sg.len) * d;
  float* st = state + int64_t(sg.slot) * stride + off;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, c = i - t * d;
    const int64_t row = sg.start + t;
    if (t == 0) {
      const float old = st[c];
      st[c] = x[(sg.start + sg.len - 1) * d + c];
      prev[row * d + c] = old;
    } else {
      prev[row * d + c] = x[(row - 1) * d + c];
    }
  }
}

}  // namespace

void token_shift(const float* x, int64_t d, const Segment* segs, int64_t n_segs, int32_t max_len,
                 float* state, int64_t stride, int64_t off, float* prev, cudaStream_t s) {
  if (n_segs == 0 || max_len == 0 || d == 0) return;
  const unsigned gx = std::min<unsigned>(grid_for(int64_t(max_len) * d, kThreads), 1024);
  for (int64_t s0 = 0; s0 < n_segs; s0 += 65535) {
    const unsigned gy = unsigned(std::min<int64_t>(n_segs - s0, 65535));
    token_shift_kernel<<<dim3(gx, gy), kThreads, 0, s>>>(x, d, segs + s0, state, stride, off, prev);
    RWKVPP_CUDA_LAUNCHED("token_shift_kernel");
  }
}

}  // namespace rwkvpp::cuda
