// RWKV-4 WKV kernel (see wkv4.cuh), the numerically stable form of DESIGN.md:
//   ww = u + k; p = max(pp, ww); e1 = exp(pp - p); e2 = exp(ww - p);
//   out = (e1 * aa + e2 * v) / (e1 * bb + e2);
//   ww = pp + w; p = max(ww, k); e1 = exp(ww - p); e2 = exp(k - p);
//   aa = e1 * aa + e2 * v; bb = e1 * bb + e2; pp = p.
//
// Mapping: one thread per (segment, channel): blockIdx.y is the segment, blockIdx.x * 128 +
// threadIdx.x the channel c. The thread keeps aa, bb, pp of its channel in registers and walks
// the segment's tokens in time order; each token's k, v, out accesses are coalesced across the
// block's channels. State layout per slot: [aa (d) | bb (d) | pp (d)] at off_aa, fp32.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/wkv4.cuh"

namespace rwkvpp::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void wkv4_kernel(const float* __restrict__ k, const float* __restrict__ v,
                            const float* __restrict__ w, const float* __restrict__ u,
                            const Segment* __restrict__ segs, float* state, int64_t stride,
                            int64_t off_aa, float* __restrict__ out, int64_t d,
                            const float* __restrict__ gate) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= d) return;  // reads and writes nothing: needs no pdl_begin()
  // Read before the wait (no kernel writes them): the segment table, w and u.
  const Segment sg = segs[blockIdx.y];
  const float wc = w[c], uc = u[c];
  pdl_begin();
  float* st = state + int64_t(sg.slot) * stride + off_aa;
  float aa = st[c], bb = st[d + c], pp = st[2 * d + c];
  // Token t + 1's k and v are loaded while token t computes, hiding the load latency.
  const int64_t t_end = int64_t(sg.start) + sg.len;
  float nk = 0, nv = 0;
  if (sg.len > 0) nk = k[int64_t(sg.start) * d + c], nv = v[int64_t(sg.start) * d + c];
  for (int64_t t = sg.start; t < t_end; ++t) {
    const float kt = nk, vt = nv;
    if (t + 1 < t_end) nk = k[(t + 1) * d + c], nv = v[(t + 1) * d + c];
    float ww = uc + kt;
    float p = fmaxf(pp, ww);
    float e1 = expf(pp - p), e2 = expf(ww - p);
    const float o = (e1 * aa + e2 * vt) / (e1 * bb + e2);
    out[t * d + c] = gate ? gate[t * d + c] * o : o;
    ww = pp + wc;
    p = fmaxf(ww, kt);
    e1 = expf(ww - p);
    e2 = expf(kt - p);
    aa = e1 * aa + e2 * vt;
    bb = e1 * bb + e2;
    pp = p;
  }
  st[c] = aa;
  st[d + c] = bb;
  st[2 * d + c] = pp;
}

}  // namespace

void wkv4(const float* k, const float* v, const float* w, const float* u, const Segment* segs,
          int64_t n_segs, float* state, int64_t stride, int64_t off_aa, float* out, int64_t d,
          cudaStream_t s, const float* gate) {
  if (n_segs == 0 || d == 0) return;
  const unsigned gx = unsigned((d + kThreads - 1) / kThreads);
  for (int64_t s0 = 0; s0 < n_segs; s0 += 65535) {
    const unsigned gy = unsigned(std::min<int64_t>(n_segs - s0, 65535));
    launch(wkv4_kernel, dim3(gx, gy), kThreads, 0, s, k, v, w, u, segs + s0, state, stride, off_aa,
           out, d, gate);
    RWKVPP_CUDA_LAUNCHED("wkv4_kernel");
  }
}

}  // namespace rwkvpp::cuda
