// The CPU backend: the reference every other backend is tested against. Matrix products go
// through OpenBLAS (sgemm); fp16/bf16 weights stay in their stored dtype and are widened to fp32
// a block of rows at a time, so memory matches the file. Everything else is plain loops in
// the order DESIGN.md writes the math, chosen for clarity.
#ifdef RWKVPP_HAVE_OPENBLAS
#include <cblas.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/posix_shared.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quantize.h"

namespace rwkvpp {
namespace {

using cpu::ThreadPool;

#ifndef RWKVPP_HAVE_OPENBLAS
// Fallback for builds without OpenBLAS: y[n, R] = x[n, K] * W[R, K]^T (row-major, ldy = ldy).
void sgemm_nt(int n, int R, int K, const float* x, const float* W, float* y, int ldy) {
  for (int i = 0; i < n; ++i)
    for (int r = 0; r < R; ++r) {
      float acc = 0;
      for (int k = 0; k < K; ++k) acc += x[size_t(i) * K + k] * W[size_t(r) * K + k];
      y[size_t(i) * ldy + r] = acc;
    }
}
#else
void sgemm_nt(int n, int R, int K, const float* x, const float* W, float* y, int ldy) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, R, K, 1.0f, x, K, W, K, 0.0f, y, ldy);
}
#endif

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()))) {
#ifdef RWKVPP_HAVE_OPENBLAS
    openblas_set_num_threads(1);  // we split the work ourselves (see matmul)
#endif
  }
  std::string name() const override { return "cpu"; }
  bool host_memory() const override { return true; }

  void* alloc(size_t bytes) override {
    void* p = std::calloc(1, std::max<size_t>(bytes, 1));
    if (!p) fail("out of host memory allocating {} bytes", bytes);
    return p;
  }
  void free(void* p) noexcept override { std::free(p); }
  void upload(void* dst, const void* src, size_t n) override { std::memcpy(dst, src, n); }
  void download(void* dst, const void* src, size_t n) override { std::memcpy(dst, src, n); }
  void copy(void* dst, const void* src, size_t n) override { std::memmove(dst, src, n); }
  std::string share_kind() const override { return "posix-shm"; }
  std::unique_ptr<SharedBuffer> share_alloc(size_t bytes) override { return cpu::posix_share_alloc(bytes); }
  std::unique_ptr<SharedBuffer> share_open(std::span<const uint8_t> h, size_t bytes) override {
    return cpu::posix_share_open(h, bytes);
  }
  std::unique_ptr<SharedSignal> signal_create() override { return cpu::host_signal(); }
  std::unique_ptr<SharedSignal> signal_open(std::span<const uint8_t>) override { return cpu::host_signal(); }
  void synchronize() override {}
  size_t free_memory() const override {
    // MemAvailable from /proc/meminfo; falls back to physical pages.
    std::ifstream f("/proc/meminfo");
    std::string key;
    size_t kb;
    std::string unit;
    while (f >> key >> kb >> unit)
      if (key == "MemAvailable:") return kb * 1024;
    return size_t(sysconf(_SC_AVPHYS_PAGES)) * size_t(sysconf(_SC_PAGESIZE));
  }

  SegTable stage_segments(std::span<const Segment> segs) override {
    SegTable t;
    t.host = segs;
    t.device = segs.data();
    for (const auto& s : segs) {
      t.n_tokens += s.len;
      t.max_len = std::max(t.max_len, s.len);
    }
    return t;
  }

  void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t d,
                  float eps) override {
    cpu::layer_norm(x, w, b, y, n, d, eps);
  }
  void group_norm(const float* x, const float* w, const float* b, float* y, int64_t n,
                  int64_t H, int64_t N, float eps) override {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < H; ++h) {
        int64_t o = i * H * N + h * N;
        cpu::layer_norm(x + o, w + h * N, b + h * N, y + o, 1, N, eps);
      }
  }

  // The output rows are cut into fixed blocks of kRowBlock rows, each computed by one
  // single-threaded sgemm, and the blocks are shared among threads. The blocking does not depend
  // on the thread count, so results are bit-identical for any --threads and any number of ranks
  // (a multi-threaded sgemm changes its summation order with the thread count). fp16/bf16 rows
  // are widened to fp32 a block at a time, so weights stay in their stored dtype; int8 rows are
  // dequantised (q * scale, kernels/quantize.h) the same way, so the product is exactly the fp32
  // product with the dequantised weights.
  void matmul(const WeightView& W, const float* x, float* y, int64_t n) override {
    const int64_t R = W.rows, K = W.cols;
    const int64_t blocks = (R + kRowBlock - 1) / kRowBlock;
    const bool wide = W.dtype == DType::F32;
    auto block = [&](int64_t b) {
      // One widening buffer per thread, kept between calls (a fresh 100+ KiB allocation per
      // call costs page faults on every step).
      thread_local std::vector<float> scratch;
      const int64_t r0 = b * kRowBlock, rb = std::min(kRowBlock, R - r0);
      const float* wb;
      if (wide) {
        wb = static_cast<const float*>(W.data) + r0 * K;
      } else if (W.dtype == DType::I8) {
        if (scratch.size() < size_t(kRowBlock * K)) scratch.resize(size_t(kRowBlock * K));
        dequantize_rows_i8(static_cast<const int8_t*>(W.data) + r0 * K, W.scales + r0, rb, K,
                           scratch.data());
        wb = scratch.data();
      } else {
        if (scratch.size() < size_t(kRowBlock * K)) scratch.resize(size_t(kRowBlock * K));
        to_f32(W.dtype, static_cast<const uint16_t*>(W.data) + r0 * K, scratch.data(), size_t(rb * K));
        wb = scratch.data();
      }
      sgemm_nt(int(n), int(rb), int(K), x, wb, y + r0, int(R));
    };
    if (R * K * std::max<int64_t>(n, 1) < (int64_t(1) << 20)) {
      for (int64_t b = 0; b < blocks; ++b) block(b);  // too small to be worth waking threads
    } else {
      pool_.parallel_for(blocks, block);
    }
  }



  void embedding(const WeightView& E, const int32_t* ids, int64_t n, float* y) override {
    const int64_t C = E.cols;
    if (E.dtype == DType::I8) fail("embedding: int8 tables are not supported (the embedding stays fp16)");
    for (int64_t i = 0; i < n; ++i) {
      RWKVPP_CHECK(ids[i] >= 0 && ids[i] < E.rows, "token id out of range");
      const auto* row = static_cast<const uint8_t*>(E.data) + size_t(ids[i]) * C * dtype_size(E.dtype);
      to_f32(E.dtype, row, y + i * C, size_t(C));
    }
  }

  void gather_rows(const float* x, const int32_t* rows, int64_t m, int64_t d, float* y) override {
    for (int64_t j = 0; j < m; ++j) std::memcpy(y + j * d, x + int64_t(rows[j]) * d, d * 4);
  }

  void token_shift(const float* x, int64_t d, const SegTable& segs, float* state, int64_t stride,
                   int64_t off, float* prev) override {
    cpu::token_shift(x, d, segs.host, state, stride, off, prev);
  }

  void mix(const float* x, const float* prev, const float* mu, float* y, int64_t n,
           int64_t d) override {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < d; ++c) {
        int64_t o = i * d + c;
        y[o] = x[o] * mu[c] + prev[o] * (1.0f - mu[c]);
      }
  }

  void unary(Unary op, const float* x, float* y, int64_t count) override {
    cpu::unary(op, x, y, count);
  }
  void binary(Binary op, const float* a, const float* b, float* y, int64_t count) override {
    for (int64_t i = 0; i < count; ++i) y[i] = cpu::apply(op, a[i], b[i]);
  }
  void binary_row(Binary op, const float* a, const float* v, float* y, int64_t n,
                  int64_t d) override {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < d; ++c) y[i * d + c] = cpu::apply(op, a[i * d + c], v[c]);
  }

  void wkv4(const float* k, const float* v, const float* w, const float* u, const SegTable& segs,
            float* state, int64_t stride, int64_t off_aa, float* out, int64_t d) override {
    cpu::wkv4(k, v, w, u, segs.host, state, stride, off_aa, out, d);
  }
  void wkv5(const float* r, const float* k, const float* v, const float* w, bool w_per_token,
            const float* u, const SegTable& segs, float* state, int64_t stride, int64_t off,
            float* out, int64_t H, int64_t N) override {
    cpu::wkv5(r, k, v, w, w_per_token, u, segs.host, state, stride, off, out, H, N);
  }
  void wkv7(const float* r, const float* w, const float* k, const float* v, const float* a,
            const float* b, const SegTable& segs, float* state, int64_t stride, int64_t off,
            float* out, int64_t H, int64_t N) override {
    cpu::wkv7(r, w, k, v, a, b, segs.host, state, stride, off, out, H, N);
  }
  void lerp(const float* a, const float* b, const float* m, float* y, int64_t count) override {
    cpu::lerp(a, b, m, y, count);
  }
  void head_l2_normalize(const float* x, float* y, int64_t n, int64_t H, int64_t N,
                         float eps) override {
    cpu::head_l2_normalize(x, y, n, H, N, eps);
  }
  void head_dot_add(const float* a, const float* b, const float* w, const float* c, float* y,
                    int64_t n, int64_t H, int64_t N) override {
    cpu::head_dot_add(a, b, w, c, y, n, H, N);
  }

 private:
  static constexpr int64_t kRowBlock = 128;
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace rwkvpp
