// RWKV-5/6 WKV kernels (see wkv5.cuh). Per head h, token t, key channel i, value channel j:
//   out[t, h, j] = sum_i r[t,h,i] * (u[h,i] * k[t,h,i] * v[t,h,j] + S[h,i,j])
//   S[h,i,j]     = S[h,i,j] * w[h,i] + k[t,h,i] * v[t,h,j]
//
// Mapping: one block per (head, segment): blockIdx.x is the head, blockIdx.y the segment. Thread
// j owns value channel j, i.e. column S[h, :, j] of the state (N floats), and walks the
// segment's tokens in time order. Per token the block stages r, k (and w for RWKV-6) of the
// head's N key channels in shared memory; thread j then sums over i in the CPU reference's
// order. State layout per slot: S [H, N, N] row-major (i before j) at off, fp32; thread j's
// loads and stores S[h, i, j] are coalesced across j.
//
// wkv5_reg<N>: the column lives in registers (N a compile-time size: 32 or 64); the next
// token's inputs are prefetched during the current one, and the sum uses two partial sums.
// wkv5_any: any N; the column stays in global memory (L1/L2-resident), for odd head sizes.
#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/wkv5.cuh"

namespace rwkvpp::cuda {
namespace {

template <int N>
__global__ void __launch_bounds__(N) wkv5_reg(const float* __restrict__ r, const float* __restrict__ k,
                                              const float* __restrict__ v, const float* __restrict__ w,
                                              bool w_per_token, const float* __restrict__ u,
                                              const Segment* __restrict__ segs, float* state,
                                              int64_t stride, int64_t off, float* __restrict__ out,
                                              int64_t H) {
  pdl_begin();
  __shared__ float sr[N], sk[N], sw[N], su[N];
  const int h = blockIdx.x, j = threadIdx.x;
  const Segment sg = segs[blockIdx.y];
  const int64_t C = H * N;
  float* S = state + int64_t(sg.slot) * stride + off + int64_t(h) * N * N;
  float col[N];
#pragma unroll
  for (int i = 0; i < N; ++i) col[i] = S[i * N + j];
  su[j] = u[h * N + j];
  if (!w_per_token) sw[j] = w[h * N + j];
  // Token t + 1's inputs are loaded into registers while token t computes (see wkv7.cu).
  const int64_t t_end = int64_t(sg.start) + sg.len;
  float nr = 0, nk = 0, nw = 0, nv = 0;
  if (sg.len > 0) {
    const int64_t o = int64_t(sg.start) * C + h * N + j;
    nr = r[o], nk = k[o], nv = v[o];
    if (w_per_token) nw = w[o];
  }
  for (int64_t t = sg.start; t < t_end; ++t) {
    const int64_t o = t * C + h * N;
    __syncthreads();  // everyone is done with the previous token's staging
    sr[j] = nr;
    sk[j] = nk;
    if (w_per_token) sw[j] = nw;
    const float vj = nv;
    __syncthreads();
    if (t + 1 < t_end) {
      const int64_t q = o + C + j;
      nr = r[q], nk = k[q], nv = v[q];
      if (w_per_token) nw = w[q];
    }
    float y0 = 0, y1 = 0;  // two partial sums: a shorter dependency chain
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const float kv0 = sk[i] * vj, kv1 = sk[i + 1] * vj;
      y0 += sr[i] * (su[i] * kv0 + col[i]);
      y1 += sr[i + 1] * (su[i + 1] * kv1 + col[i + 1]);
      col[i] = col[i] * sw[i] + kv0;
      col[i + 1] = col[i + 1] * sw[i + 1] + kv1;
    }
    out[o + j] = y0 + y1;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) S[i * N + j] = col[i];
}

// Dynamic shared memory: 4 * N floats (r, k, w, u). blockDim.x = N rounded up to a warp.
__global__ void wkv5_any(const float* __restrict__ r, const float* __restrict__ k,
                         const float* __restrict__ v, const float* __restrict__ w, bool w_per_token,
                         const float* __restrict__ u, const Segment* __restrict__ segs,
                         float* state, int64_t stride, int64_t off, float* __restrict__ out,
                         int64_t H, int N) {
  pdl_begin();
  extern __shared__ float sh[];
  float *sr = sh, *sk = sh + N, *sw = sh + 2 * N, *su = sh + 3 * N;
  const int h = blockIdx.x, j = threadIdx.x;
  const bool active = j < N;
  const Segment sg = segs[blockIdx.y];
  const int64_t C = H * N;
  float* S = state + int64_t(sg.slot) * stride + off + int64_t(h) * N * N;
  if (active) {
    su[j] = u[h * N + j];
    if (!w_per_token) sw[j] = w[h * N + j];
  }
  for (int64_t t = sg.start; t < int64_t(sg.start) + sg.len; ++t) {
    const int64_t o = t * C + h * N;
    __syncthreads();
    float vj = 0.0f;
    if (active) {
      sr[j] = r[o + j];
      sk[j] = k[o + j];
      if (w_per_token) sw[j] = w[o + j];
      vj = v[o + j];
    }
    __syncthreads();
    if (active) {
      float y = 0.0f;
      for (int i = 0; i < N; ++i) {
        const float kv = sk[i] * vj;
        const float s_ij = S[int64_t(i) * N + j];
        y += sr[i] * (su[i] * kv + s_ij);
        S[int64_t(i) * N + j] = s_ij * sw[i] + kv;
      }
      out[o + j] = y;
    }
  }
}

}  // namespace

void wkv5(const float* r, const float* k, const float* v, const float* w, bool w_per_token,
          const float* u, const Segment* segs, int64_t n_segs, float* state, int64_t stride,
          int64_t off, float* out, int64_t H, int64_t N, cudaStream_t s) {
  if (n_segs == 0 || H == 0 || N == 0) return;
  if (N > 1024) fail_msg("wkv5: head size " + std::to_string(N) + " is larger than 1024");
  for (int64_t s0 = 0; s0 < n_segs; s0 += 65535) {
    const dim3 grid(unsigned(H), unsigned(std::min<int64_t>(n_segs - s0, 65535)));
    const Segment* sg = segs + s0;
    if (N == 64) {
      launch(wkv5_reg<64>, grid, 64, 0, s, r, k, v, w, w_per_token, u, sg, state, stride, off, out,
             H);
    } else if (N == 32) {
      launch(wkv5_reg<32>, grid, 32, 0, s, r, k, v, w, w_per_token, u, sg, state, stride, off, out,
             H);
    } else {
      const int threads = int((N + 31) / 32 * 32);
      launch(wkv5_any, grid, threads, size_t(4 * N) * sizeof(float), s, r, k, v, w, w_per_token, u,
             sg, state, stride, off, out, H, int(N));
    }
    RWKVPP_CUDA_LAUNCHED("wkv5_kernel");
  }
}

}  // namespace rwkvpp::cuda
