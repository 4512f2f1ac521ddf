// One launch for RWKV-4's k, v, r products and WKV at one token (see kvr_wkv4.cuh).
//
// Mapping: the vector GEMV's (gemv.cuh, gemv_dot with J = 3): a group of WPR warps owns one
// channel and reads the three matrices' rows of it, each with its own input, so a lane keeps
// 3 x 2 loads in flight. Lane 0 of the group's first warp then holds k, v and r of the channel,
// applies the sigmoid exactly as the GEMV's epilogue does, advances the channel's state with
// wkv4_step and writes out. Each channel's state is touched by one thread.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/kvr_wkv4.cuh"
#include "kernels/cuda/matmul.cuh"
#include "kernels/cuda/wkv4.cuh"

namespace rwkvpp::cuda {
namespace {

template <typename T>
struct KvrArgs {
  const T* W[3];
  const float* x[3];
  const float* w;
  const float* u;
  const Segment* seg;  // device table: the token's slot (a graph replays with other slots)
  float* state;
  int64_t stride, off_aa;
  float* out;
  int d;
};

// One channel per group of WPR warps (2 or 4; one row per warp did worse, see kvr_wkv4_one),
// two chunks per lane in flight per matrix as the one-token GEMV.
template <typename T, int WPR>
__global__ void __launch_bounds__(kGemvWarps * 32) kvr_wkv4_kernel(KvrArgs<T> a) {
  static_assert(!kRowScaled<T>, "int8 keeps the plain calls (slower fused, docs/perf.md)");
  const int c = blockIdx.x * (kGemvWarps / WPR) + (threadIdx.x >> 5) / WPR;
  float acc[3][1][1];
  if (!gemv_dot<T, 3, 1, 1, 2, WPR>(a.W, a.x, c, a.d, a.d, acc) || (threadIdx.x & 31) != 0) return;
  const float rr = 1.0f / (1.0f + expf(-acc[2][0][0]));  // as GemvEpilogue's sigmoid
  const int d = a.d;
  float* st = a.state + int64_t(a.seg->slot) * a.stride + a.off_aa;
  float aa = st[c], bb = st[d + c], pp = st[2 * d + c];
  const float o = wkv4_step(acc[0][0][0], acc[1][0][0], __ldg(a.w + c), __ldg(a.u + c), aa, bb, pp);
  st[c] = aa;
  st[d + c] = bb;
  st[2 * d + c] = pp;
  a.out[c] = rr * o;
}

template <typename T>
void launch(const KvrArgs<T>& a, int wpr, cudaStream_t s) {
  const unsigned grid = unsigned((a.d + kGemvWarps / wpr - 1) / (kGemvWarps / wpr));
  if (wpr == 2) kvr_wkv4_kernel<T, 2><<<grid, kGemvWarps * 32, 0, s>>>(a);
  else kvr_wkv4_kernel<T, 4><<<grid, kGemvWarps * 32, 0, s>>>(a);
  RWKVPP_CUDA_LAUNCHED("kvr_wkv4_kernel");
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool kvr_wkv4_one(const WeightView* const (&W)[3], const float* const (&x)[3], const float* w,
                  const float* u, const Segment* seg, float* state, int64_t stride,
                  int64_t off_aa, float* out, int64_t d, cudaStream_t s) {
  static const bool off = [] {
    const char* e = std::getenv("RWKVPP_KVR_FUSED");
    return e && std::string(e) == "0";
  }();
  const DType dt = W[0]->dtype;
  if (off || dt == DType::I8) return false;
  const int64_t pack = dt == DType::F32 ? 4 : 8;
  if (d < 1 || d > INT32_MAX || d % pack != 0) return false;
  for (int j = 0; j < 3; ++j) {
    if (W[j]->dtype != dt || W[j]->rows != d || W[j]->cols != d) return false;
    if (!aligned16(W[j]->data) || !aligned16(x[j])) return false;
  }
  // Only where the one-token GEMV splits K over warps (few rows: 1.5B's 2048, WPR 4): there the
  // fused kernel took 13.2 us against 11.0 + 3.1 for the group and the WKV. With one warp per
  // row (14B) its three rows per warp made fewer, longer work units and the step slower
  // (docs/perf.md, fourth session); so also for int8.
  const int wpr = gemv_wpr(1, false, d, int(d), int(pack), 1, 2);
  if (wpr != 2 && wpr != 4) return false;
  const auto a = [&](auto* tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    KvrArgs<T> r{};
    for (int j = 0; j < 3; ++j) r.W[j] = static_cast<const T*>(W[j]->data), r.x[j] = x[j];
    r.w = w, r.u = u, r.seg = seg, r.state = state, r.stride = stride, r.off_aa = off_aa;
    r.out = out, r.d = int(d);
    return r;
  };
  switch (dt) {
    case DType::F32: launch(a(static_cast<float*>(nullptr)), wpr, s); break;
    case DType::F16: launch(a(static_cast<__half*>(nullptr)), wpr, s); break;
    case DType::BF16: launch(a(static_cast<__nv_bfloat16*>(nullptr)), wpr, s); break;
    case DType::I8: return false;
  }
  return true;
}

}  // namespace rwkvpp::cuda
