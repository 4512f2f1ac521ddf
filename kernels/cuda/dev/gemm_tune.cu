// The kernel lab's GEMM table: for the fp16 products of a 14B RWKV-4 layer at 256 tokens (the
// decode batch of the speed target) and the bench's 4096^3 floor, the time of the cuBLAS call
// the backend makes (cublasGemmEx, default algorithm) against every algorithm cuBLASLt's
// heuristic offers and against a manual split of K into 2 or 4 parallel parts (a strided
// batched GEMM; the parts' sum is not timed). Tells whether choosing the algorithm per shape, or
// splitting K, would pay before the backend does either. fp16 A and B, fp32 C, fp32 compute, as
// in kernels/cuda/matmul.cu. Usage: gemm_tune [tokens]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                      \
  do {                                                                             \
    cudaError_t ck_e_ = (x);                                                           \
    if (ck_e_ != cudaSuccess) {                                                      \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(ck_e_), __FILE__, __LINE__); \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)
#define CB(x)                                                              \
  do {                                                                     \
    cublasStatus_t cb_s_ = (x);                                                \
    if (cb_s_ != CUBLAS_STATUS_SUCCESS) {                                    \
      std::printf("cuBLAS error %d at %s:%d\n", int(cb_s_), __FILE__, __LINE__); \
      std::exit(1);                                                        \
    }                                                                      \
  } while (0)

namespace {

__global__ void fill(__half* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u + seed;
    h ^= h >> 13;
    p[i] = __float2half(float(h % 2001) / 1000.0f - 1.0f);
  }
}

template <typename F>
double time_ms(F&& f, cudaStream_t s, int reps = 20) {
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < reps; ++i) f();
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / reps;
}

}  // namespace

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 256;
  struct Shape {
    int R, n, K;
    const char* what;
  };
  const Shape shapes[] = {
      {5120, tokens, 5120, "att.key/value/receptance/output, ffn.receptance"},
      {15360, tokens, 5120, "att k,v,r stacked as one"},
      {20480, tokens, 5120, "ffn.key"},
      {5120, tokens, 20480, "ffn.value"},
      {50277, tokens, 5120, "head"},
      {4096, 4096, 4096, "the bench's floor"},
  };
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cublasHandle_t h;
  CB(cublasCreate(&h));
  CB(cublasSetStream(h, s));
  cublasLtHandle_t lt;
  CB(cublasLtCreate(&lt));
  const size_t ws_bytes = size_t(64) << 20;
  void* ws;
  CK(cudaMalloc(&ws, ws_bytes));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs, %d tokens\n", prop.name, prop.multiProcessorCount, tokens);
  const float one = 1.0f, zero = 0.0f;
  for (const Shape& sh : shapes) {
    const int R = sh.R, n = sh.n, K = sh.K;
    __half *W, *x;
    float* y;
    CK(cudaMalloc(&W, size_t(R) * K * 2));
    CK(cudaMalloc(&x, size_t(n) * K * 2));
    CK(cudaMalloc(&y, size_t(R) * n * 4 * 4));  // room for 4 split parts
    fill<<<1024, 256, 0, s>>>(W, size_t(R) * K, 1);
    fill<<<1024, 256, 0, s>>>(x, size_t(n) * K, 2);
    const double flop = 2.0 * R * n * K;
    auto tf = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
    const double base = time_ms([&] {
      CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, R, n, K, &one, W, CUDA_R_16F, K, x, CUDA_R_16F, K, &zero, y,
                      CUDA_R_32F, R, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }, s);
    std::printf("\n[%d x %d] x %d tokens (%s): cublasGemmEx %.4f ms, %.0f TFLOP/s\n", R, K, n, sh.what, base, tf(base));
    for (int parts : {2, 4}) {
      if (K % (parts * 8)) continue;
      const int k = K / parts;
      const double ms = time_ms([&] {
        CB(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, R, n, k, &one, W, CUDA_R_16F, K, k, x, CUDA_R_16F, K,
                                      k, &zero, y, CUDA_R_32F, R, (long long)R * n, parts, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
      }, s);
      std::printf("  K split in %d (strided batch, sum not timed): %.4f ms, %.0f TFLOP/s\n", parts, ms, tf(ms));
    }
    cublasLtMatmulDesc_t desc;
    CB(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CB(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CB(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, lc;
    CB(cublasLtMatrixLayoutCreate(&la, CUDA_R_16F, K, R, K));
    CB(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16F, K, n, K));
    CB(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, R, n, R));
    cublasLtMatmulPreference_t pref;
    CB(cublasLtMatmulPreferenceCreate(&pref));
    CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes));
    cublasLtMatmulHeuristicResult_t res[32];
    int got = 0;
    CB(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 32, res, &got));
    double best = 1e30;
    int best_i = -1;
    for (int i = 0; i < got; ++i) {
      if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
      bool failed = false;
      const double ms = time_ms([&] {
        if (cublasLtMatmul(lt, desc, &one, W, la, x, lb, &zero, y, lc, y, lc, &res[i].algo, ws, ws_bytes, s) !=
            CUBLAS_STATUS_SUCCESS)
          failed = true;
      }, s, 10);
      if (failed) continue;
      int tile = 0, splitk = 0, stages = 0;
      size_t w = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
      std::printf("  Lt algo %2d (tile id %d, split-K %d, stages id %d, workspace %zu): %.4f ms, %.0f TFLOP/s\n", i, tile,
                  splitk, stages, res[i].workspaceSize, ms, tf(ms));
      if (ms < best) {
        best = ms;
        best_i = i;
      }
    }
    if (best_i >= 0)
      std::printf("  best: Lt algo %d, %.4f ms (%.0f TFLOP/s), %.2fx cublasGemmEx\n", best_i, best, tf(best), base / best);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
    cudaFree(W);
    cudaFree(x);
    cudaFree(y);
  }
  return 0;
}
