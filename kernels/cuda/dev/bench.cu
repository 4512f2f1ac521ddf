// Kernel lab: times the GEMV variants of kernels/cuda/gemv.cuh (fp16, bf16, int8 with row
// scales) at 1..8 tokens on 14B-like layer shapes against a device-to-device copy measured in
// the same run, plus cuBLAS at the same token counts (not for int8), and the WKV kernels (wkv4,
// wkv5, wkv7) in decode and prefill shapes. Outside the default build; README.md beside this
// says how to build and run it, docs/perf.md holds results.
//
// Every variant's output is checked against the scalar kernel (one warp per row, plain loads)
// before it is timed; timings are medians over repeated launches measured with CUDA events.
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/wkv4.cuh"
#include "kernels/cuda/wkv5.cuh"
#include "kernels/cuda/wkv7.cuh"

// The backend raises rwkvpp::Error through cuda_check.cpp (which needs fmt); the lab stands alone.
namespace rwkvpp::cuda {
void fail_cuda(int code, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string(cudaGetErrorString(cudaError_t(code))) + " in " + what +
                           " at " + file + ":" + std::to_string(line));
}
void fail_cublas(int status, const char* what, const char*, int) {
  throw std::runtime_error("cuBLAS status " + std::to_string(status) + " in " + what);
}
void fail_msg(const std::string& msg) { throw std::runtime_error(msg); }
}  // namespace rwkvpp::cuda

using namespace rwkvpp;
using namespace rwkvpp::cuda;

namespace {

#define CK(x) RWKVPP_CUDA_CHECK(x)

// Median time in microseconds of `reps` back-to-back launches of f, over 7 rounds, after warm-up.
double time_us(const std::function<void()>& f, int reps) {
  for (int i = 0; i < 3; ++i) f();
  CK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int round = 0; round < 7; ++round) {
    CK(cudaEventRecord(a));
    for (int i = 0; i < reps; ++i) f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(1e3 * ms / reps);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <typename T>
T* dev_random(size_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<T> h(n);
  for (auto& v : h) v = T(d(g));
  T* p = nullptr;
  CK(cudaMalloc(&p, n * sizeof(T)));
  CK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

std::vector<float> host(const float* d, size_t n) {
  std::vector<float> h(n);
  CK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
  return h;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Device-to-device copy bandwidth (bytes read + written), the floor for a streaming kernel.
double copy_bandwidth_gbs() {
  const size_t bytes = size_t(1) << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  const double us = time_us([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 10);
  CK(cudaFree(a));
  CK(cudaFree(b));
  return 2.0 * double(bytes) / (us * 1e3);
}

// Row scales for int8 W (the kernels ignore them for the other dtypes); set by bench_gemv.
const float* g_scales = nullptr;

struct GemvVariant {
  const char* name;
  std::function<void(const void* W, const float* x, float* y, int R, int K, int n)> run;
};

template <typename T, int RPW, int U, int WPR = 1, bool PIPE = false>
void run_vec(const void* W, const float* x, float* y, int R, int K, int n) {
  using Launch =
      void (*)(const T*, const float*, float*, int, int, cudaStream_t, const float*, GemvEpilogue);
  static constexpr Launch by_n[] = {
      launch_gemv_vec<T, 1, RPW, U, WPR, PIPE>, launch_gemv_vec<T, 2, RPW, U, WPR, PIPE>,
      launch_gemv_vec<T, 3, RPW, U, WPR, PIPE>, launch_gemv_vec<T, 4, RPW, U, WPR, PIPE>,
      launch_gemv_vec<T, 5, RPW, U, WPR, PIPE>, launch_gemv_vec<T, 6, RPW, U, WPR, PIPE>,
      launch_gemv_vec<T, 7, RPW, U, WPR, PIPE>, launch_gemv_vec<T, 8, RPW, U, WPR, PIPE>};
  by_n[n - 1](static_cast<const T*>(W), x, y, R, K, 0, g_scales, GemvEpilogue{});
}

template <typename T>
void run_scalar(const void* W, const float* x, float* y, int R, int K, int n) {
  const T* w = static_cast<const T*>(W);
  switch (n) {
    case 1: launch_gemv_scalar<T, 1>(w, x, y, R, K, 0, g_scales); break;
    case 2: launch_gemv_scalar<T, 2>(w, x, y, R, K, 0, g_scales); break;
    case 3: launch_gemv_scalar<T, 3>(w, x, y, R, K, 0, g_scales); break;
    case 4: launch_gemv_scalar<T, 4>(w, x, y, R, K, 0, g_scales); break;
    case 5: launch_gemv_scalar<T, 5>(w, x, y, R, K, 0, g_scales); break;
    case 6: launch_gemv_scalar<T, 6>(w, x, y, R, K, 0, g_scales); break;
    case 7: launch_gemv_scalar<T, 7>(w, x, y, R, K, 0, g_scales); break;
    case 8: launch_gemv_scalar<T, 8>(w, x, y, R, K, 0, g_scales); break;
  }
}

template <typename T>
std::vector<GemvVariant> variants() {
  if (std::getenv("LAB_PIPE")) {  // next round's loads issued before the current one is used
    if constexpr (std::is_same_v<T, int8_t>)
      return {{"v0 scalar", run_scalar<T>},
              {"rpw4 u2 w2", run_vec<T, 4, 2, 2>},
              {"P rpw4 u1 w2", run_vec<T, 4, 1, 2, true>},
              {"P rpw4 u2 w2", run_vec<T, 4, 2, 2, true>},
              {"P rpw4 u1 w4", run_vec<T, 4, 1, 4, true>},
              {"P rpw4 u1", run_vec<T, 4, 1, 1, true>},
              {"P rpw2 u2 w2", run_vec<T, 2, 2, 2, true>},
              {"P rpw2 u1 w4", run_vec<T, 2, 1, 4, true>}};
    else
      return {{"v0 scalar", run_scalar<T>},
              {"rpw1 u2", run_vec<T, 1, 2>},
              {"rpw1 u2 w4", run_vec<T, 1, 2, 4>},
              {"P rpw1 u1", run_vec<T, 1, 1, 1, true>},
              {"P rpw1 u2", run_vec<T, 1, 2, 1, true>},
              {"P rpw1 u1 w4", run_vec<T, 1, 1, 4, true>},
              {"P rpw1 u2 w4", run_vec<T, 1, 2, 4, true>},
              {"P rpw2 u1 w2", run_vec<T, 2, 1, 2, true>}};
  }
  if (std::getenv("LAB_WPR")) {  // K split over warps (WPR) at one and two tokens
    if constexpr (std::is_same_v<T, int8_t>)
      return {{"v0 scalar", run_scalar<T>},         {"rpw4 u2", run_vec<T, 4, 2>},
              {"rpw4 u2 w2", run_vec<T, 4, 2, 2>},  {"rpw4 u2 w4", run_vec<T, 4, 2, 4>},
              {"rpw4 u2 w8", run_vec<T, 4, 2, 8>},  {"rpw4 u1 w4", run_vec<T, 4, 1, 4>},
              {"rpw2 u2 w4", run_vec<T, 2, 2, 4>},  {"rpw1 u2 w8", run_vec<T, 1, 2, 8>}};
    else
      return {{"v0 scalar", run_scalar<T>},         {"rpw1 u2", run_vec<T, 1, 2>},
              {"rpw1 u4", run_vec<T, 1, 4>},        {"rpw1 u2 w2", run_vec<T, 1, 2, 2>},
              {"rpw1 u2 w4", run_vec<T, 1, 2, 4>},  {"rpw1 u2 w8", run_vec<T, 1, 2, 8>},
              {"rpw1 u1 w8", run_vec<T, 1, 1, 8>},  {"rpw2 u1 w4", run_vec<T, 2, 1, 4>}};
  }
  return {{"v0 scalar", run_scalar<T>},       {"v1 rpw1 u1", run_vec<T, 1, 1>},
          {"v2 rpw1 u2", run_vec<T, 1, 2>},   {"v3 rpw2 u1", run_vec<T, 2, 1>},
          {"v4 rpw2 u2", run_vec<T, 2, 2>},   {"v5 rpw4 u1", run_vec<T, 4, 1>},
          {"v6 rpw4 u2", run_vec<T, 4, 2>},   {"v7 rpw8 u1", run_vec<T, 8, 1>}};
}

template <typename T>
void bench_gemv(const char* dtname, cudaDataType_t cublas_t, int R, int K, double copy_gbs,
                cublasHandle_t blas, FILE* csv) {
  const float a = std::sqrt(3.0f / float(K));
  constexpr bool i8 = std::is_same_v<T, int8_t>;
  T* W = i8 ? dev_random<T>(size_t(R) * K, -127.4f, 127.4f, 11) : dev_random<T>(size_t(R) * K, -a, a, 11);
  // Timed launches rotate over copies of W adding up to >= 200 MB, so that W comes from memory
  // and not from the 50 MB L2 (a decode step reads each matrix once).
  const size_t wbytes = size_t(R) * K * sizeof(T);
  const int copies = int(std::min<size_t>(64, (size_t(200) << 20) / wbytes + 1));
  std::vector<T*> Ws(size_t(copies), W);
  for (int c = 1; c < copies; ++c) {
    CK(cudaMalloc(&Ws[size_t(c)], wbytes));
    CK(cudaMemcpy(Ws[size_t(c)], W, wbytes, cudaMemcpyDeviceToDevice));
  }
  size_t turn = 0;
  auto next_w = [&] { return static_cast<const void*>(Ws[turn++ % Ws.size()]); };
  const int max_n = std::getenv("LAB_MAXN") ? std::atoi(std::getenv("LAB_MAXN")) : 8;
  float* scales = dev_random<float>(size_t(R), 0.5f * a / 127, a / 127, 14);
  g_scales = scales;
  float* x = dev_random<float>(size_t(8) * K, -1, 1, 12);
  T* x16 = dev_random<T>(size_t(8) * K, -1, 1, 13);
  float *y, *y0;
  CK(cudaMalloc(&y, size_t(8) * R * 4));
  CK(cudaMalloc(&y0, size_t(8) * R * 4));
  const auto vs = variants<T>();
  std::printf("\nGEMV %s W[%d, %d] (%.1f MB): GB/s (%% of copy %.0f GB/s)\n", dtname, R, K,
              double(R) * K * sizeof(T) / 1e6, copy_gbs);
  std::printf("%-12s", "n");
  for (auto& v : vs) std::printf("%13s", v.name);
  std::printf("%13s\n", "cublas16");
  for (int n = 1; n <= max_n; ++n) {
    std::printf("%-12d", n);
    const double bytes = double(R) * K * sizeof(T) + double(n) * K * 4 + double(n) * R * 4 +
                         (i8 ? double(R) * 4 : 0.0);
    vs[0].run(W, x, y0, R, K, n);
    const auto ref = host(y0, size_t(n) * R);
    for (auto& v : vs) {
      CK(cudaMemset(y, 0xff, size_t(8) * R * 4));  // NaN poison
      v.run(W, x, y, R, K, n);
      const double err = rel_err(host(y, size_t(n) * R), ref);
      const double us = time_us([&] { v.run(next_w(), x, y, R, K, n); }, 20);
      const double gbs = bytes / (us * 1e3);
      std::printf("%7.0f (%2.0f%%)%s", gbs, 100 * gbs / copy_gbs, err > 1e-5 ? "!" : " ");
      if (csv) std::fprintf(csv, "gemv,%s,%d,%d,%d,%s,%.3f,%.1f,%.3g\n", dtname, R, K, n, v.name, us, gbs, err);
    }
    if (i8) {  // no cuBLAS counterpart (int8 x int8 -> int32 is another computation)
      std::printf("\n");
      continue;
    }
    // cuBLAS with x already in the weight dtype (the conversion kernel is not counted).
    const float one = 1, zero = 0;
    const double us = time_us([&] {
      cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, R, n, K, &one, next_w(), cublas_t, K, x16, cublas_t, K,
                   &zero, y, CUDA_R_32F, R, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }, 20);
    const double gbs = bytes / (us * 1e3);
    std::printf("%7.0f (%2.0f%%)\n", gbs, 100 * gbs / copy_gbs);
    if (csv) std::fprintf(csv, "gemv,%s,%d,%d,%d,cublas,%.3f,%.1f,0\n", dtname, R, K, n, us, gbs);
  }
  for (int c = 1; c < copies; ++c) CK(cudaFree(Ws[size_t(c)]));
  for (void* p : {static_cast<void*>(W), static_cast<void*>(x), static_cast<void*>(x16),
                  static_cast<void*>(y), static_cast<void*>(y0), static_cast<void*>(scales)})
    CK(cudaFree(p));
  g_scales = nullptr;
}

// WKV timings: `segs` segments of `len` tokens each, C = H * N channels.
void bench_wkv(int H, int N, int segs, int len, double copy_gbs, FILE* csv) {
  const int C = H * N;
  const int64_t n = int64_t(segs) * len;
  std::vector<Segment> hs;
  for (int s = 0; s < segs; ++s) hs.push_back({s, s * len, len});
  Segment* ds;
  CK(cudaMalloc(&ds, hs.size() * sizeof(Segment)));
  CK(cudaMemcpy(ds, hs.data(), hs.size() * sizeof(Segment), cudaMemcpyHostToDevice));
  const size_t act = size_t(n) * C;
  float *r = dev_random<float>(act, -1, 1, 1), *k = dev_random<float>(act, -1, 1, 2);
  float *v = dev_random<float>(act, -1, 1, 3), *w = dev_random<float>(act, 0.6f, 0.99f, 4);
  float *a = dev_random<float>(act, -0.1f, 0.1f, 5), *b = dev_random<float>(act, -0.1f, 0.1f, 6);
  float* u = dev_random<float>(size_t(C), -0.5f, 0.5f, 7);
  float* out;
  CK(cudaMalloc(&out, act * 4));
  const int64_t s5 = int64_t(H) * N * N, s4 = 3 * int64_t(C);
  float* st = dev_random<float>(size_t(segs) * std::max(s5, s4), -0.1f, 0.1f, 8);
  float* w4 = dev_random<float>(size_t(C), -2, -0.1f, 9);
  struct K { const char* name; std::function<void()> f; double bytes; };
  const double io = double(act) * 4;
  const std::vector<K> ks = {
      {"wkv4", [&] { wkv4(k, v, w4, u, ds, segs, st, s4, 0, out, C, 0); },
       3 * io + 2.0 * segs * s4 * 4},
      {"wkv5", [&] { wkv5(r, k, v, w, false, u, ds, segs, st, s5, 0, out, H, N, 0); },
       4 * io + 2.0 * segs * s5 * 4},
      {"wkv6", [&] { wkv5(r, k, v, w, true, u, ds, segs, st, s5, 0, out, H, N, 0); },
       5 * io + 2.0 * segs * s5 * 4},
      {"wkv7", [&] { wkv7(r, w, k, v, a, b, ds, segs, st, s5, 0, out, H, N, 0); },
       7 * io + 2.0 * segs * s5 * 4},
  };
  for (auto& kk : ks) {
    const double us = time_us(kk.f, 10);
    const double gbs = kk.bytes / (us * 1e3);
    std::printf("%-5s H=%-3d N=%-3d segs=%-4d len=%-5d %10.1f us %8.0f GB/s (%2.0f%% of copy) %8.2f us/token-step\n",
                kk.name, H, N, segs, len, us, gbs, 100 * gbs / copy_gbs, us / len);
    if (csv) std::fprintf(csv, "%s,%d,%d,%d,%d,%.3f,%.1f\n", kk.name, H, N, segs, len, us, gbs);
  }
  for (void* p : {static_cast<void*>(ds), static_cast<void*>(r), static_cast<void*>(k),
                  static_cast<void*>(v), static_cast<void*>(w), static_cast<void*>(a),
                  static_cast<void*>(b), static_cast<void*>(u), static_cast<void*>(out),
                  static_cast<void*>(st), static_cast<void*>(w4)})
    CK(cudaFree(p));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    FILE* csv = argc > 1 ? std::fopen(argv[1], "w") : nullptr;
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    int drv = 0, rt = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    std::printf("device %s, %d SMs, L2 %d MB, driver %d, runtime %d\n", p.name,
                p.multiProcessorCount, p.l2CacheSize >> 20, drv, rt);
    const double copy = copy_bandwidth_gbs();
    std::printf("device-to-device copy: %.0f GB/s (bytes read + written)\n", copy);
    if (csv) std::fprintf(csv, "copy,%.1f\n", copy);
    cublasHandle_t blas;
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate");
    // LAB_ONLY=int8: only the int8 tables (a short run for tuning gemv_rows<int8_t>).
    // LAB_ONLY=small: the 1.5B shapes (C = 2048, ffn 8192) in fp16 and the 14B ones in int8.
    const char* only = std::getenv("LAB_ONLY");
    if (only && std::string(only) == "small") {
      bench_gemv<__half>("fp16", CUDA_R_16F, 2048, 2048, copy, blas, csv);
      bench_gemv<__half>("fp16", CUDA_R_16F, 8192, 2048, copy, blas, csv);
      bench_gemv<__half>("fp16", CUDA_R_16F, 2048, 8192, copy, blas, csv);
      bench_gemv<__half>("fp16", CUDA_R_16F, 5120, 5120, copy, blas, csv);
      bench_gemv<__half>("fp16", CUDA_R_16F, 5120, 20480, copy, blas, csv);
      bench_gemv<int8_t>("int8", CUDA_R_8I, 5120, 5120, copy, blas, csv);
      bench_gemv<int8_t>("int8", CUDA_R_8I, 5120, 20480, copy, blas, csv);
      bench_gemv<int8_t>("int8", CUDA_R_8I, 20480, 5120, copy, blas, csv);
      return 0;
    }
    const bool all = !only || std::string(only) != "int8";
    // 14B-like (C = 5120, ffn = 4C): ffn.key [20480, 5120], ffn.value [5120, 20480], att [5120, 5120].
    if (all) {
    bench_gemv<__half>("fp16", CUDA_R_16F, 20480, 5120, copy, blas, csv);
    bench_gemv<__half>("fp16", CUDA_R_16F, 5120, 20480, copy, blas, csv);
    bench_gemv<__half>("fp16", CUDA_R_16F, 5120, 5120, copy, blas, csv);
    bench_gemv<__nv_bfloat16>("bf16", CUDA_R_16BF, 20480, 5120, copy, blas, csv);
    }
    // int8 with row scales (--compute-dtype int8); cublas_t unused.
    bench_gemv<int8_t>("int8", CUDA_R_8I, 20480, 5120, copy, blas, csv);
    bench_gemv<int8_t>("int8", CUDA_R_8I, 5120, 20480, copy, blas, csv);
    bench_gemv<int8_t>("int8", CUDA_R_8I, 5120, 5120, copy, blas, csv);
    if (!all) return 0;
    std::printf("\nWKV (C = 5120)\n");
    bench_wkv(80, 64, 1, 1, copy, csv);
    bench_wkv(80, 64, 64, 1, copy, csv);
    bench_wkv(80, 64, 1, 512, copy, csv);
    bench_wkv(80, 64, 8, 128, copy, csv);
    cublasDestroy(blas);
    if (csv) std::fclose(csv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
