// Element-wise kernels (see elementwise.cuh). Every kernel is a grid-stride loop with one
// thread per output element (consecutive threads on consecutive elements, so loads and stores
// coalesce); the row-broadcast ones find their column as index % d. All memory-bound.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace rwkvpp::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void mix_kernel(const float* __restrict__ x, const float* __restrict__ prev,
                           const float* __restrict__ mu, float* y, int64_t count, int64_t d) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float m = mu[i % d];
    y[i] = x[i] * m + prev[i] * (1.0f - m);
  }
}

__global__ void lerp_kernel(const float* a, const float* b, const float* m, float* y,
                            int64_t count) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float ai = a[i];
    y[i] = ai + (b[i] - ai) * m[i];
  }
}

template <Unary OP>
__device__ __forceinline__ float apply_unary(float v) {
  if constexpr (OP == Unary::Sigmoid) return 1.0f / (1.0f + expf(-v));
  if constexpr (OP == Unary::ReluSquare) {
    const float r = fmaxf(v, 0.0f);
    return r * r;
  }
  if constexpr (OP == Unary::Silu) return v / (1.0f + expf(-v));
  if constexpr (OP == Unary::Tanh) return tanhf(v);
  if constexpr (OP == Unary::Exp) return expf(v);
  if constexpr (OP == Unary::NegExp) return -expf(v);
  if constexpr (OP == Unary::ExpNegExp) return expf(-expf(v));
  return v;
}

template <Unary OP>
__global__ void unary_kernel(const float* x, float* y, int64_t count) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = apply_unary<OP>(x[i]);
}

template <Binary OP>
__device__ __forceinline__ float apply_binary(float a, float b) {
  if constexpr (OP == Binary::Add) return a + b;
  if constexpr (OP == Binary::Mul) return a * b;
  return a - b;
}

// `d` == 0: b is a full tensor (b[i]); otherwise a row vector of width d (b[i % d]).
template <Binary OP>
__global__ void binary_kernel(const float* a, const float* b, float* y, int64_t count, int64_t d) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = apply_binary<OP>(a[i], b[d ? i % d : i]);
}

// One block-row per output row: blockIdx.y walks rows (grid-stride), threads walk columns.
template <typename T>
__global__ void embedding_kernel(const T* __restrict__ E, int64_t cols, const IdList ids, int64_t n,
                                 float* y) {
  pdl_begin();
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const T* row = E + int64_t(ids.dev ? ids.dev[i] : ids.inl[i]) * cols;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols;
         c += int64_t(gridDim.x) * blockDim.x)
      y[i * cols + c] = to_float(row[c]);
  }
}

dim3 row_grid(int64_t rows, int64_t cols) {
  unsigned gx = unsigned(std::min<int64_t>((cols + kThreads - 1) / kThreads, 64));
  unsigned gy = unsigned(std::min<int64_t>(rows, 65535));
  return dim3(gx < 1 ? 1 : gx, gy < 1 ? 1 : gy);
}

template <Binary OP>
void launch_binary(const float* a, const float* b, float* y, int64_t count, int64_t d,
                   cudaStream_t s) {
  launch(binary_kernel<OP>, grid_for(count, kThreads), kThreads, 0, s, a, b, y, count, d);
}

}  // namespace

void mix(const float* x, const float* prev, const float* mu, float* y, int64_t n, int64_t d,
         cudaStream_t s) {
  const int64_t count = n * d;
  if (count == 0) return;
  launch(mix_kernel, grid_for(count, kThreads), kThreads, 0, s, x, prev, mu, y, count, d);
  RWKVPP_CUDA_LAUNCHED("mix_kernel");
}

void lerp(const float* a, const float* b, const float* m, float* y, int64_t count, cudaStream_t s) {
  if (count == 0) return;
  launch(lerp_kernel, grid_for(count, kThreads), kThreads, 0, s, a, b, m, y, count);
  RWKVPP_CUDA_LAUNCHED("lerp_kernel");
}

void unary(Unary op, const float* x, float* y, int64_t count, cudaStream_t s) {
  if (count == 0) return;
  const unsigned g = grid_for(count, kThreads);
  void (*kernel)(const float*, float*, int64_t) = nullptr;
  switch (op) {
    case Unary::Sigmoid: kernel = unary_kernel<Unary::Sigmoid>; break;
    case Unary::ReluSquare: kernel = unary_kernel<Unary::ReluSquare>; break;
    case Unary::Silu: kernel = unary_kernel<Unary::Silu>; break;
    case Unary::Tanh: kernel = unary_kernel<Unary::Tanh>; break;
    case Unary::Exp: kernel = unary_kernel<Unary::Exp>; break;
    case Unary::NegExp: kernel = unary_kernel<Unary::NegExp>; break;
    case Unary::ExpNegExp: kernel = unary_kernel<Unary::ExpNegExp>; break;
  }
  if (!kernel) fail_msg("unary: unknown op");
  launch(kernel, g, kThreads, 0, s, x, y, count);
  RWKVPP_CUDA_LAUNCHED("unary_kernel");
}

static void binary_any(Binary op, const float* a, const float* b, float* y, int64_t count,
                       int64_t d, cudaStream_t s) {
  if (count == 0) return;
  switch (op) {
    case Binary::Add: launch_binary<Binary::Add>(a, b, y, count, d, s); break;
    case Binary::Mul: launch_binary<Binary::Mul>(a, b, y, count, d, s); break;
    case Binary::Sub: launch_binary<Binary::Sub>(a, b, y, count, d, s); break;
  }
  RWKVPP_CUDA_LAUNCHED("binary_kernel");
}

void binary(Binary op, const float* a, const float* b, float* y, int64_t count, cudaStream_t s) {
  binary_any(op, a, b, y, count, 0, s);
}

void binary_row(Binary op, const float* a, const float* v, float* y, int64_t n, int64_t d,
                cudaStream_t s) {
  binary_any(op, a, v, y, n * d, d, s);
}

void embedding(const void* E, DType dt, int64_t cols, const IdList& ids, int64_t n, float* y,
               cudaStream_t s) {
  if (n == 0 || cols == 0) return;
  const dim3 g = row_grid(n, cols);
  switch (dt) {
    case DType::F32:
      launch(embedding_kernel<float>, g, kThreads, 0, s, static_cast<const float*>(E), cols, ids, n,
             y);
      break;
    case DType::F16:
      launch(embedding_kernel<__half>, g, kThreads, 0, s, static_cast<const __half*>(E), cols, ids,
             n, y);
      break;
    case DType::BF16:
      launch(embedding_kernel<__nv_bfloat16>, g, kThreads, 0, s,
             static_cast<const __nv_bfloat16*>(E), cols, ids, n, y);
      break;
    case DType::I8:
    case DType::I4: fail_msg("embedding: quantised tables are not supported (the embedding stays fp16)");
  }
  RWKVPP_CUDA_LAUNCHED("embedding_kernel");
}

void gather_rows(const float* x, const IdList& rows, int64_t m, int64_t d, float* y,
                 cudaStream_t s) {
  if (m == 0 || d == 0) return;
  // The same kernel as the fp32 embedding: x plays the table.
  launch(embedding_kernel<float>, row_grid(m, d), kThreads, 0, s, x, d, rows, m, y);
  RWKVPP_CUDA_LAUNCHED("gather_rows");
}

}  // namespace rwkvpp::cuda
