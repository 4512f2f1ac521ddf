// RWKV-7 WKV kernels (see wkv7.cuh). Per head, with state S[j, i] (j = value row, i = key
// column) and, per token, vectors r, w, k, v, a, b of the head's N channels:
//   sa_j = sum_i S[j,i] a_i
//   S[j,i] = S[j,i] * w_i + sa_j * b_i + v_j * k_i
//   out_j = sum_i S[j,i] r_i
//
// Mapping: one block per (head, segment): blockIdx.x is the head, blockIdx.y the segment. Thread
// j owns state row j (N floats) and walks the segment's tokens in time order; both sums are
// over its own row, so the only communication is the per-token staging of r, w, k, a, b in
// shared memory. State layout per slot: S [H, N, N] row-major (row j = value channel) at off.
//
// wkv7_reg<N>: the row lives in registers; the head's N x N state moves between global and
// registers through a padded shared tile so that the global accesses coalesce. The next token's
// inputs are prefetched into registers during the current token, and the dot products use four
// partial sums (so their rounding differs from the CPU's sequential order by ~1e-7).
// wkv7_any: any N; the row stays in global memory (L1/L2-resident), for odd head sizes.
#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/wkv7.cuh"
#include "kernels/cuda/wkv7_row.cuh"

namespace rwkvpp::cuda {
namespace {

template <int N>
__global__ void __launch_bounds__(N) wkv7_reg(const float* __restrict__ r, const float* __restrict__ w,
                                              const float* __restrict__ k, const float* __restrict__ v,
                                              const float* __restrict__ a, const float* __restrict__ b,
                                              const Segment* __restrict__ segs, float* state,
                                              int64_t stride, int64_t off, float* __restrict__ out,
                                              int64_t H) {
  pdl_begin();
  __shared__ float tile[N][N + 1];  // +1: row-wise reads by thread j hit distinct banks
  __shared__ float sr[N], sw[N], sk[N], sa[N], sb[N];
  const int h = blockIdx.x, j = threadIdx.x;
  const Segment sg = segs[blockIdx.y];
  const int64_t C = H * N;
  float* S = state + int64_t(sg.slot) * stride + off + int64_t(h) * N * N;
  float row[N];
  wkv7_load_rows<N>(S, tile, row);
  // Token t + 1's inputs are loaded into registers while token t computes, so the global
  // load latency is paid once per segment rather than once per token.
  const int64_t t_end = int64_t(sg.start) + sg.len;
  float nr = 0, nw = 0, nk = 0, na = 0, nb = 0, nv = 0;
  if (sg.len > 0) {
    const int64_t o = int64_t(sg.start) * C + h * N + j;
    nr = r[o], nw = w[o], nk = k[o], na = a[o], nb = b[o], nv = v[o];
  }
  for (int64_t t = sg.start; t < t_end; ++t) {
    const int64_t o = t * C + h * N;
    __syncthreads();  // everyone is done with the previous token's staging
    sr[j] = nr;
    sw[j] = nw;
    sk[j] = nk;
    sa[j] = na;
    sb[j] = nb;
    const float vj = nv;
    __syncthreads();
    if (t + 1 < t_end) {
      const int64_t q = o + C + j;
      nr = r[q], nw = w[q], nk = k[q], na = a[q], nb = b[q], nv = v[q];
    }
    out[o + j] = wkv7_row_step<N>(row, sr, sw, sk, sa, sb, vj);
  }
  wkv7_store_rows<N>(S, tile, row);
}

// Dynamic shared memory: 5 * N floats. blockDim.x = N rounded up to a warp.
__global__ void wkv7_any(const float* __restrict__ r, const float* __restrict__ w,
                         const float* __restrict__ k, const float* __restrict__ v,
                         const float* __restrict__ a, const float* __restrict__ b,
                         const Segment* __restrict__ segs, float* state, int64_t stride,
                         int64_t off, float* __restrict__ out, int64_t H, int N) {
  pdl_begin();
  extern __shared__ float sh[];
  float *sr = sh, *sw = sh + N, *sk = sh + 2 * N, *sa = sh + 3 * N, *sb = sh + 4 * N;
  const int h = blockIdx.x, j = threadIdx.x;
  const bool active = j < N;
  const Segment sg = segs[blockIdx.y];
  const int64_t C = H * N;
  float* row = state + int64_t(sg.slot) * stride + off + int64_t(h) * N * N + int64_t(j) * N;
  for (int64_t t = sg.start; t < int64_t(sg.start) + sg.len; ++t) {
    const int64_t o = t * C + h * N;
    __syncthreads();
    float vj = 0.0f;
    if (active) {
      sr[j] = r[o + j];
      sw[j] = w[o + j];
      sk[j] = k[o + j];
      sa[j] = a[o + j];
      sb[j] = b[o + j];
      vj = v[o + j];
    }
    __syncthreads();
    if (active) {
      float s_a = 0.0f;
      for (int i = 0; i < N; ++i) s_a += row[i] * sa[i];
      float y = 0.0f;
      for (int i = 0; i < N; ++i) {
        const float s = row[i] * sw[i] + s_a * sb[i] + vj * sk[i];
        row[i] = s;
        y += s * sr[i];
      }
      out[o + j] = y;
    }
  }
}

}  // namespace

void wkv7(const float* r, const float* w, const float* k, const float* v, const float* a,
          const float* b, const Segment* segs, int64_t n_segs, float* state, int64_t stride,
          int64_t off, float* out, int64_t H, int64_t N, cudaStream_t s) {
  if (n_segs == 0 || H == 0 || N == 0) return;
  if (N > 1024) fail_msg("wkv7: head size " + std::to_string(N) + " is larger than 1024");
  for (int64_t s0 = 0; s0 < n_segs; s0 += 65535) {
    const dim3 grid(unsigned(H), unsigned(std::min<int64_t>(n_segs - s0, 65535)));
    const Segment* sg = segs + s0;
    if (N == 64) {
      launch(wkv7_reg<64>, grid, 64, 0, s, r, w, k, v, a, b, sg, state, stride, off, out, H);
    } else if (N == 32) {
      launch(wkv7_reg<32>, grid, 32, 0, s, r, w, k, v, a, b, sg, state, stride, off, out, H);
    } else {
      const int threads = int((N + 31) / 32 * 32);
      launch(wkv7_any, grid, threads, size_t(5 * N) * sizeof(float), s, r, w, k, v, a, b, sg, state,
             stride, off, out, H, int(N));
    }
    RWKVPP_CUDA_LAUNCHED("wkv7_kernel");
  }
}

}  // namespace rwkvpp::cuda
