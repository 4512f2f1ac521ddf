// Backend::rwkv7_mix as one kernel: RWKV-7's time mix from its products to the input of its
// output product. Decoding a 1.5B RWKV-7 ran 3.1x its bandwidth floor with these ~25 ops as
// separate launches (docs/perf.md); here they are one.
//
// Mapping: one block per (head, segment), N threads (N = 32 or 64); thread j owns channel
// c = h * N + j and state row j (in registers, as wkv7_reg in wkv7.cu) and walks the
// segment's tokens in time order. Per token, thread j computes its channel's w, a, k, v and
// k * k_k; three head-wide sums (kk's norm; the group norm's mean with the bonus dot product;
// the group norm's variance) go through warp shuffles and a fixed two-warp order in shared
// memory, so every result depends only on the token's own inputs and the state: batch
// invariant by construction. The next token's inputs are loaded while the current one
// computes.
#include <algorithm>

#include "common/env_options.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/wkv7.cuh"
#include "kernels/cuda/wkv7_row.cuh"

namespace rwkvpp::cuda {
namespace {

struct MixIn {
  float r, w_raw, k_raw, a_raw, v, v_raw, g, v_first;
};

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

template <int N>
__global__ void __launch_bounds__(N) rwkv7_mix_kernel(Backend::Rwkv7Mix p,
                                                      const Segment* __restrict__ segs,
                                                      float* state, int64_t stride, int64_t off,
                                                      int64_t H) {
  constexpr int NW = N / 32;
  __shared__ float tile[N][N + 1];  // +1: row-wise reads by thread j hit distinct banks
  __shared__ float sr[N], sw[N], sk[N], sa[N], sb[N];
  __shared__ float red[3][2][NW];
  const int h = blockIdx.x, j = threadIdx.x, lane = j & 31, warp = j >> 5;
  const int64_t C = H * N, c = int64_t(h) * N + j;
  const bool first = p.first_layer;
  // Weights and the segment table (never written by a kernel) before the wait.
  const Segment sg = segs[blockIdx.y];
  const float w0 = p.w0[c], a0 = p.a0[c], k_k = p.k_k[c], k_a = p.k_a[c];
  const float v0 = first ? 0.0f : p.v0[c], r_k = p.r_k[c], ln_w = p.lnx_w[c], ln_b = p.lnx_b[c];
  const float neg_decay = p.neg_decay[c];
  pdl_begin();
  float* S = state + int64_t(sg.slot) * stride + off + int64_t(h) * N * N;
  float row[N];
  wkv7_load_rows<N>(S, tile, row);

  // Head-wide sums of two values; every thread gets both. Slot `s` is used once per token;
  // the later syncs of the token keep the next token's writes after this token's reads.
  auto sum2 = [&](int s, float x0, float x1) {
    x0 = warp_sum(x0);
    x1 = warp_sum(x1);
    if (lane == 0) red[s][0][warp] = x0, red[s][1][warp] = x1;
    __syncthreads();
    float2 t = make_float2(red[s][0][0], red[s][1][0]);
#pragma unroll
    for (int q = 1; q < NW; ++q) t.x += red[s][0][q], t.y += red[s][1][q];
    return t;
  };
  auto load = [&](int64_t o) {
    MixIn m;
    m.r = p.r[o], m.w_raw = p.w_raw[o], m.k_raw = p.k_raw[o], m.a_raw = p.a_raw[o];
    m.v = p.v[o], m.g = p.g[o];
    m.v_raw = first ? 0.0f : p.v_raw[o];
    m.v_first = first ? 0.0f : p.v_first[o];
    return m;
  };

  const int64_t t_end = int64_t(sg.start) + sg.len;
  MixIn nx{};
  if (sg.len > 0) nx = load(int64_t(sg.start) * C + c);
  for (int64_t t = sg.start; t < t_end; ++t) {
    const int64_t o = t * C + c;
    const MixIn in = nx;
    if (t + 1 < t_end) nx = load(o + C);
    const float w = expf(neg_decay * sigmoidf(w0 + in.w_raw));
    const float a = sigmoidf(a0 + in.a_raw);
    const float kkr = in.k_raw * k_k;
    float v = in.v;
    if (first) p.v_first[o] = v;
    else v = v + (in.v_first - v) * sigmoidf(v0 + in.v_raw);
    const float ka = in.k_raw * a;
    const float k = ka * k_a + in.k_raw * (1.0f - k_a);
    const float kk = kkr / fmaxf(sqrtf(sum2(0, kkr * kkr, 0.0f).x), p.l2_eps);
    sr[j] = in.r;
    sw[j] = w;
    sk[j] = k;
    sa[j] = -kk;
    sb[j] = kk * a;
    __syncthreads();
    // The delta rule on row j (wkv7_row.cuh).
    const float y = wkv7_row_step<N>(row, sr, sw, sk, sa, sb, v);
    // Group norm of the head's outputs (two passes), the bonus (sum r k r_k) v, the gate.
    const float2 mb = sum2(1, y, in.r * k * r_k);
    const float mean = mb.x / float(N), d = y - mean;
    const float var = sum2(2, d * d, 0.0f).x / float(N);
    const float gn = d * rsqrtf(var + p.gn_eps) * ln_w + ln_b;
    p.out[o] = (gn + mb.y * v) * in.g;
  }
  wkv7_store_rows<N>(S, tile, row);
}

}  // namespace

bool rwkv7_mix(const Backend::Rwkv7Mix& p, const Segment* segs, int64_t n_segs, int32_t max_len,
               bool any_length, float* state, int64_t stride, int64_t off, int64_t H, int64_t N,
               cudaStream_t s) {
  constexpr int32_t kMaxLen = 16;
  if (!env_options().cuda.v7_fused || (N != 32 && N != 64) || (!any_length && max_len > kMaxLen))
    return false;
  if (n_segs == 0 || H == 0) return true;
  for (int64_t s0 = 0; s0 < n_segs; s0 += 65535) {
    const dim3 grid(unsigned(H), unsigned(std::min<int64_t>(n_segs - s0, 65535)));
    if (N == 64)
      launch(rwkv7_mix_kernel<64>, grid, 64, 0, s, p, segs + s0, state, stride, off, H);
    else
      launch(rwkv7_mix_kernel<32>, grid, 32, 0, s, p, segs + s0, state, stride, off, H);
    RWKVPP_CUDA_LAUNCHED("rwkv7_mix_kernel");
  }
  return true;
}

}  // namespace rwkvpp::cuda
