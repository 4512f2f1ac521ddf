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
  pdl_begin();
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

// Grid (column slices, tokens); each token's segment holds only it. Every block of a token
// computes the row's two-pass mean and variance as norm_rows does (layer_norm.cu; the row read
// once into registers where it fits), then normalises the columns of its slice, swaps them with
// the state (prev) and writes the mixes. A few tokens get several blocks each, so that a
// batch-1 step does not run on one SM; many tokens get one block each, so that no row's
// statistics are computed more than once. A block touches only its own columns of its slot's
// state.
//
// Loads before stores: the outputs and the state may alias the inputs as far as the compiler
// knows, so a loop that stores as it goes issues each later load only after the store before
// it and waits a full memory latency per mix and column (ncu, 256 tokens of 5120: 93 % of the
// warps' time in L1TEX scoreboard stalls, ~100 us per call). A thread therefore loads all the
// inputs of kColBatch columns (x, w, b, the state, every mu) before its first store, and the
// first batch's before the row statistics, whose reductions then hide their latency.
constexpr int kMinSliceCols = 512;  // the narrowest slice
constexpr int kTargetBlocks = 264;  // about two blocks per SM of an H100
constexpr int kColBatch = 4;

template <int NMIX>
struct ColBatch {
  float x[kColBatch], w[kColBatch], b[kColBatch], prev[kColBatch], mu[NMIX][kColBatch];

  // The weights (w, b, every mu): no kernel writes them, so they may be read before pdl_begin().
  __device__ __forceinline__ void load_params(const float* wp, const float* bp, const MixOut& mix,
                                              int64_t c0, int64_t step, int64_t c_end) {
#pragma unroll
    for (int k = 0; k < kColBatch; ++k) {
      const int64_t c = c0 + k * step;
      const bool in = c < c_end;
      w[k] = in ? wp[c] : 0.0f;
      b[k] = in ? bp[c] : 0.0f;
#pragma unroll
      for (int j = 0; j < NMIX; ++j) mu[j][k] = in ? mix.mu[j][c] : 0.0f;
    }
  }
  // x and the state: written by kernels, read after pdl_begin().
  __device__ __forceinline__ void load_data(const float* xr, const float* st, int64_t c0,
                                            int64_t step, int64_t c_end) {
#pragma unroll
    for (int k = 0; k < kColBatch; ++k) {
      const int64_t c = c0 + k * step;
      const bool in = c < c_end;
      x[k] = in ? xr[c] : 0.0f;
      prev[k] = in ? st[c] : 0.0f;
    }
  }
};

template <int NMIX>
__global__ void norm_shift_mix_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, float eps, int64_t d,
                                      const Segment* __restrict__ segs, float* state,
                                      int64_t stride, int64_t off, MixOut mix, int64_t slice) {
  __shared__ float red[32];
  // The segment table (uploaded by copies, never written by a kernel) and the first columns'
  // weights are read before the wait: under programmatic dependent launch their latency passes
  // while the previous kernel drains.
  const Segment sg = segs[blockIdx.y];
  const int64_t step = int64_t(blockDim.x), c_end = min(d, int64_t(blockIdx.x + 1) * slice);
  int64_t c0 = blockIdx.x * slice + threadIdx.x;
  ColBatch<NMIX> in;
  in.load_params(w, b, mix, c0, step, c_end);
  pdl_begin();
  const float* xr = x + int64_t(sg.start) * d;
  float* st = state + int64_t(sg.slot) * stride + off;
  in.load_data(xr, st, c0, step, c_end);
  float2 stats;
  if (d <= int64_t(kRowRegs) * blockDim.x) {
    float v[kRowRegs];
    stats = row_mean_rstd_regs(xr, int(d), eps, red, v);
  } else {
    stats = row_mean_rstd(xr, d, eps, red);
  }
  float* out_row[NMIX];
#pragma unroll
  for (int j = 0; j < NMIX; ++j) out_row[j] = mix.out[j] + int64_t(sg.start) * d;
  for (;;) {
#pragma unroll
    for (int k = 0; k < kColBatch; ++k) {
      const int64_t c = c0 + k * step;
      if (c >= c_end) break;
      const float xl = (in.x[k] - stats.x) * stats.y * in.w[k] + in.b[k];
      st[c] = xl;
#pragma unroll
      for (int j = 0; j < NMIX; ++j) out_row[j][c] = xl * in.mu[j][k] + in.prev[k] * (1.0f - in.mu[j][k]);
    }
    c0 += step * kColBatch;
    if (c0 >= c_end) break;
    in.load_params(w, b, mix, c0, step, c_end);
    in.load_data(xr, st, c0, step, c_end);
  }
}

}  // namespace

void norm_shift_mix_decode(const float* x, const float* w, const float* b, float eps, int64_t d,
                           const Segment* segs, int64_t n_segs, float* state, int64_t stride,
                           int64_t off, const MixOut& mix, int nmix, cudaStream_t s) {
  if (n_segs == 0 || d == 0) return;
  if (nmix < 1 || nmix > 6) fail_msg("norm_shift_mix: 1 to 6 mixes");
  constexpr decltype(&norm_shift_mix_kernel<1>) kernels[] = {
      norm_shift_mix_kernel<1>, norm_shift_mix_kernel<2>, norm_shift_mix_kernel<3>,
      norm_shift_mix_kernel<4>, norm_shift_mix_kernel<5>, norm_shift_mix_kernel<6>};
  const auto kernel = kernels[nmix - 1];
  const int threads = int(std::min<int64_t>(256, (d + 31) / 32 * 32));
  // Slices per token: enough blocks for the card when tokens are few, one per token otherwise.
  const int64_t max_slices = (d + kMinSliceCols - 1) / kMinSliceCols;
  const int64_t slices = std::clamp<int64_t>((kTargetBlocks + n_segs - 1) / n_segs, 1, max_slices);
  const int64_t slice = (d + slices - 1) / slices;
  for (int64_t s0 = 0; s0 < n_segs; s0 += 65535) {
    const dim3 g(unsigned(slices), unsigned(std::min<int64_t>(n_segs - s0, 65535)));
    launch(kernel, g, threads, 0, s, x, w, b, eps, d, segs + s0, state, stride, off, mix, slice);
    RWKVPP_CUDA_LAUNCHED("norm_shift_mix_kernel");
  }
}

void token_shift(const float* x, int64_t d, const Segment* segs, int64_t n_segs, int32_t max_len,
                 float* state, int64_t stride, int64_t off, float* prev, cudaStream_t s) {
  if (n_segs == 0 || max_len == 0 || d == 0) return;
  const unsigned gx = std::min<unsigned>(grid_for(int64_t(max_len) * d, kThreads), 1024);
  for (int64_t s0 = 0; s0 < n_segs; s0 += 65535) {
    const unsigned gy = unsigned(std::min<int64_t>(n_segs - s0, 65535));
    launch(token_shift_kernel, dim3(gx, gy), kThreads, 0, s, x, d, segs + s0, state, stride, off,
           prev);
    RWKVPP_CUDA_LAUNCHED("token_shift_kernel");
  }
}

}  // namespace rwkvpp::cuda
