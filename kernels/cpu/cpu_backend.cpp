// The CPU backend: the reference every other backend is tested against. Matrix products run on
// the own kernels of kernels/cpu/gemm.h (weights packed once when loaded, read in their stored
// dtype, every output element one fma chain in k order, so results do not depend on the
// batch, the threads or the instruction set); everything else is plain loops in the order
// DESIGN.md writes the math, chosen for clarity.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/host_memory.h"
#include "kernels/cpu/posix_shared.h"
#include "kernels/cpu/thread_pool.h"

namespace rwkvpp {
namespace {

using cpu::ThreadPool;

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads)
      : pool_(threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()))) {}
  std::string name() const override { return "cpu"; }
  // Every product is one fma chain per element in k order (kernels/cpu/gemm.h) and every other
  // op works per row or per sequence, so results depend on nothing but the inputs; the
  // instruction sets give the same bits, so the CPU model is not part of it.
  std::string numerics() const override { return "cpu"; }
  bool batch_invariant() const override { return true; }
  bool host_memory() const override { return true; }

  void* alloc(size_t bytes) override { return cpu::host_alloc(bytes); }
  void free(void* p) noexcept override { cpu::host_free(p); }
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

  // Every thread reads its share of a buffer that leaves the caches, median of 5 passes after a
  // warm-up. The reading is memchr's for a byte the buffer does not hold: the C library's
  // vector loop, far faster than memory, so the figure is the memory's.
  double measure_read_GBps() override {
    size_t bytes = std::min<size_t>(size_t(1) << 30, free_memory() / 8);
    bytes = std::max<size_t>(bytes, size_t(64) << 20) & ~size_t(4095);
    DeviceBuffer a(this, bytes);
    auto* b = static_cast<uint8_t*>(a.get());
    for (size_t i = 0; i < bytes; ++i) b[i] = uint8_t(1 + i % 251);  // touched, and no zero byte
    const int64_t parts = pool_.size();
    std::atomic<int> found{0};
    auto read = [&](int64_t p) {
      const size_t s = bytes * size_t(p) / size_t(parts), e = bytes * size_t(p + 1) / size_t(parts);
      if (std::memchr(b + s, 0, e - s)) found.fetch_add(1);
    };
    std::vector<double> t;
    for (int rep = 0; rep < 6; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      pool_.parallel_for(parts, read);
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rep > 0) t.push_back(sec);
    }
    RWKVPP_CHECK(found.load() == 0, "measure_read_GBps: a zero byte in the buffer");
    std::sort(t.begin(), t.end());
    return double(bytes) / t[t.size() / 2] / 1e9;
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

  // Weights are packed once (kernels/cpu/gemm.h): rows in blocks of 128, k-major inside a block,
  // in the requested dtype (int8 quantised per row). Only this backend reads the layout.
  WeightView load_weight(const HostTensor& t, DType want, std::unique_ptr<DeviceBuffer>& owner) override {
    RWKVPP_CHECK(t.shape.size() == 2, "weight must be 2-D");
    const int64_t R = t.shape[0], K = t.shape[1];
    RWKVPP_CHECK(t.nbytes() == size_t(R * K) * dtype_size(t.dtype), "weight data size does not match its shape");
    owner = std::make_unique<DeviceBuffer>(this, cpu::packed_bytes(want, R, K));
    auto* base = static_cast<uint8_t*>(owner->get());
    cpu::pack_weight(t.dtype, t.data.data(), R, K, want, base);
    return cpu::packed_view(base, want, R, K);
  }

  void matmul(const WeightView& W, const float* x, float* y, int64_t n) override {
    const MatmulJob job{&W, x, y, {}};
    run_jobs(&job, 1, n, nullptr);
  }
  void matmul_ex(const WeightView& W, const float* x, float* y, int64_t n, const Epilogue& ep,
                 float* scratch) override {
    RWKVPP_CHECK(!ep.accumulate || scratch, "matmul_ex: accumulate needs scratch");
    const MatmulJob job{&W, x, y, ep};
    run_jobs(&job, 1, n, scratch);
  }
  void matmul_group(const MatmulJob* jobs, int count, int64_t n) override {
    for (int i = 0; i < count; ++i) RWKVPP_CHECK(!jobs[i].ep.accumulate, "matmul_group: jobs do not accumulate");
    run_jobs(jobs, count, n, nullptr);
  }

  void embedding(const WeightView& E, const int32_t* ids, int64_t n, float* y) override {
    const int64_t C = E.cols;
    if (E.dtype == DType::I8 || E.dtype == DType::I4)
      fail("embedding: quantised tables are not supported (the embedding stays fp16)");
    for (int64_t i = 0; i < n; ++i) {
      RWKVPP_CHECK(ids[i] >= 0 && ids[i] < E.rows, "token id out of range");
      cpu::packed_row(E, ids[i], y + i * C);
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
  // The products of `jobs` (all with n tokens), each followed by its epilogue, as one parallel
  // loop over their row blocks: a block's epilogue runs right after its rows, on the same thread,
  // with the per-element operations of Backend::matmul_ex's default sequence (so the results
  // are those of the plain ops, bit for bit). `scratch` holds v for an accumulating job.
  void run_jobs(const MatmulJob* jobs, int count, int64_t n, float* scratch) {
    if (n <= 0) return;
    int64_t first[kMaxGroupJobs + 1] = {}, work = 0;
    RWKVPP_CHECK(count >= 1 && count <= kMaxGroupJobs, "matmul_group: 1 to 8 jobs");
    for (int j = 0; j < count; ++j) {
      first[j + 1] = first[j] + cpu::row_blocks(jobs[j].W->rows);
      work += jobs[j].W->rows * jobs[j].W->cols * n;
    }
    auto item = [&](int64_t i) {
      int j = 0;
      while (i >= first[j + 1]) ++j;
      const MatmulJob& J = jobs[j];
      const int64_t b = i - first[j], R = J.W->rows;
      float* v = J.ep.accumulate ? scratch : J.y;
      cpu::gemm_blocks(*J.W, J.x, v, n, b, b + 1);
      const int64_t r0 = b * cpu::kBlockRows, nr = std::min(cpu::kBlockRows, R - r0);
      for (int64_t t = 0; t < n; ++t) epilogue(J.ep, v + t * R + r0, J.y + t * R + r0, t * R + r0, nr);
    };
    if (work < (int64_t(1) << 18)) {  // too small to be worth waking threads
      for (int64_t i = 0; i < first[count]; ++i) item(i);
    } else {
      pool_.parallel_for(first[count], item);
    }
  }

  // Backend::matmul_ex's epilogue on nr values v of one token (y: the same values' outputs;
  // `at`: their index into [n, R], for the gate).
  static void epilogue(const Epilogue& ep, float* v, float* y, int64_t at, int64_t nr) {
    if (ep.has_act) cpu::unary(ep.act, v, v, nr);
    if (ep.gate)
      for (int64_t c = 0; c < nr; ++c) v[c] = cpu::apply(Binary::Mul, ep.gate[at + c], v[c]);
    if (ep.accumulate)
      for (int64_t c = 0; c < nr; ++c) y[c] = cpu::apply(Binary::Add, y[c], v[c]);
  }

  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace rwkvpp
