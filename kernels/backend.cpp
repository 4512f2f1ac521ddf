#include "kernels/backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <utility>
#include <vector>

#include "common/error.h"
#include "kernels/quantize.h"

namespace rwkvpp {

DeviceBuffer::DeviceBuffer(Backend* be, size_t bytes) : be_(be), p_(be->alloc(bytes)), n_(bytes) {}
DeviceBuffer::~DeviceBuffer() {
  if (p_) be_->free(p_);
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : be_(o.be_), p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) be_->free(p_);
    be_ = o.be_;
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

HostBuffer::HostBuffer(Backend* be, size_t bytes) : be_(be), p_(be->alloc_host(bytes)), n_(bytes) {}
HostBuffer::~HostBuffer() {
  if (p_) be_->free_host(p_);
}
HostBuffer::HostBuffer(HostBuffer&& o) noexcept
    : be_(o.be_), p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) be_->free_host(p_);
    be_ = o.be_;
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

void* Backend::alloc_host(size_t bytes) {
  void* p = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t(64), std::nothrow);
  if (!p) fail("out of host memory: cannot allocate {} bytes for message buffers", bytes);
  std::memset(p, 0, bytes);
  return p;
}
void Backend::free_host(void* p) noexcept { ::operator delete(p, std::align_val_t(64)); }
void Backend::upload_async(void* dst, const void* src, size_t bytes) { upload(dst, src, bytes); }
void Backend::download_async(void* dst, const void* src, size_t bytes) { download(dst, src, bytes); }
uint64_t Backend::fence() { return 0; }
bool Backend::fence_done(uint64_t) { return true; }
void Backend::fence_wait(uint64_t) {}
uint64_t Backend::timer_mark() { return 0; }
double Backend::seconds_between(uint64_t, uint64_t) { return 0; }
void Backend::timer_release(uint64_t) {}
uint64_t Backend::upload_side(void* dst, const void* src, size_t bytes, uint64_t) {
  upload_async(dst, src, bytes);
  return timer_mark();
}
uint64_t Backend::download_side(void* dst, const void* src, size_t bytes) {
  download_async(dst, src, bytes);
  return timer_mark();
}
void Backend::wait_mark(uint64_t) {}
bool Backend::mark_done(uint64_t) { return true; }  // the default copies have completed
void Backend::mark_wait(uint64_t) {}

WeightView Backend::load_weight(const HostTensor& t, DType want,
                                std::unique_ptr<DeviceBuffer>& owner) {
  RWKVPP_CHECK(t.shape.size() == 2, "weight must be 2-D");
  if (want == DType::I4)
    fail("backend {}: int4 weights are computed on the CPU backend only so far (use --compute-dtype "
         "int8 or fp16 here)",
         name());
  if (want == DType::I8) {
    const int64_t R = t.shape[0], K = t.shape[1];
    RWKVPP_CHECK(t.nbytes() == size_t(R * K) * dtype_size(t.dtype), "weight data size does not match its shape");
    const size_t off = i8_scales_offset(R, K), bytes = i8_weight_bytes(R, K);
    owner = std::make_unique<DeviceBuffer>(this, bytes);
    auto* base = static_cast<uint8_t*>(owner->get());
    if (host_memory()) {
      quantize_rows_i8(t.dtype, t.data.data(), R, K, reinterpret_cast<int8_t*>(base),
                       reinterpret_cast<float*>(base + off));
    } else {
      std::vector<uint8_t> h(bytes);
      quantize_rows_i8(t.dtype, t.data.data(), R, K, reinterpret_cast<int8_t*>(h.data()),
                       reinterpret_cast<float*>(h.data() + off));
      upload(base, h.data(), bytes);
    }
    return WeightView{base, DType::I8, R, K, reinterpret_cast<const float*>(base + off)};
  }
  HostTensor c = t.converted(want);
  owner = std::make_unique<DeviceBuffer>(this, c.nbytes());
  upload(owner->get(), c.data.data(), c.nbytes());
  return WeightView{owner->get(), want, t.shape[0], t.shape[1], nullptr};
}

namespace {

// Median of `reps` timings of f() in seconds, after one warm-up run.
template <typename F>
double median_seconds(Backend& be, int reps, F&& f) {
  f();
  be.synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    be.synchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

double Backend::measure_copy_GBps() {
  // Large enough to leave every cache: 1 GiB on a device with room, else an eighth of free.
  size_t bytes = std::min<size_t>(size_t(1) << 30, free_memory() / 8);
  bytes = std::max<size_t>(bytes, size_t(64) << 20) & ~size_t(4095);
  DeviceBuffer a(this, bytes), b(this, bytes);
  std::vector<uint8_t> init(1 << 20);
  for (size_t i = 0; i < init.size(); ++i) init[i] = uint8_t(i * 131 + 7);  // not zeros
  for (size_t o = 0; o < bytes; o += init.size()) upload(static_cast<uint8_t*>(a.get()) + o, init.data(), std::min(init.size(), bytes - o));
  double s = median_seconds(*this, 5, [&] { copy(b.get(), a.get(), bytes); });
  return 2.0 * double(bytes) / s / 1e9;
}

double Backend::measure_read_GBps() { return measure_copy_GBps(); }

double Backend::measure_gemm_TFLOPs(DType dtype) {
  const int64_t R = 4096, K = 4096, n = host_memory() ? 256 : 4096;
  HostTensor w;
  w.dtype = DType::F32;
  w.shape = {R, K};
  std::vector<float> v(size_t(R * K));
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(int(i * 2654435761u % 2001) - 1000) * 1e-3f;
  w = HostTensor::from_f32(v, {R, K});
  std::unique_ptr<DeviceBuffer> own;
  WeightView W = load_weight(w, dtype, own);
  DeviceBuffer x(this, size_t(n * K) * 4), y(this, size_t(n * R) * 4);
  std::vector<float> xs(size_t(n * K));
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = float(int(i * 40503u % 997) - 498) * 1e-3f;
  upload(x.get(), xs.data(), xs.size() * 4);
  double s = median_seconds(*this, 3, [&] { matmul(W, x.f32(), y.f32(), n); });
  return 2.0 * double(n) * double(R) * double(K) / s / 1e12;
}

float* Workspace::get(int id, size_t floats) {
  if (size_t(id) >= bufs_.size()) bufs_.resize(size_t(id) + 1);
  auto& b = bufs_[size_t(id)];
  if (!b || b->bytes() < floats * sizeof(float)) {
    b.reset();
    // Grow by 1.5x so that slowly growing batches do not reallocate every step.
    size_t want = floats * sizeof(float);
    b = std::make_unique<DeviceBuffer>(&be_, want + want / 2 + 64);
  }
  return b->f32();
}

#ifndef RWKVPP_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int) {
  fail("this rwkvpp was built without CUDA (configure with -DRWKVPP_CUDA=ON on a machine with nvcc)");
}
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
#endif

void Backend::argmax_rows(const float* logits, int64_t m, int64_t vocab, int32_t* host_ids,
                          float* host_logprobs) {
  RWKVPP_CHECK(m >= 0 && vocab > 0, "argmax_rows: bad shape");
  if (m == 0) return;
  std::vector<float> h(static_cast<size_t>(m * vocab));
  download(h.data(), logits, h.size() * sizeof(float));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < m; ++r) {
    const float* z = h.data() + r * vocab;
    int32_t best = -1;
    float top = kNegInf;
    for (int64_t i = 0; i < vocab; ++i) {
      const float v = z[i];  // NaN never compares greater, so it counts as -inf
      if (v > top) {
        top = v;
        best = int32_t(i);
      }
    }
    host_ids[r] = best;
    if (!host_logprobs) continue;
    if (best < 0) {
      host_logprobs[r] = kNegInf;
      continue;
    }
    double s = 0;  // the same sum, in the same order, as sample_token's log_sum_exp
    for (int64_t i = 0; i < vocab; ++i)
      if (!std::isnan(z[i])) s += std::exp(double(z[i]) - double(top));
    host_logprobs[r] = float(double(top) - (double(top) + std::log(s)));
  }
}

void Backend::norm_shift_mix(const float* x, const float* w, const float* b, float eps, int64_t n,
                             int64_t d, const SegTable& segs, float* state, int64_t stride, int64_t off,
                             const float* const* mu, float* const* out, int nmix, float* xln, float* prev) {
  RWKVPP_CHECK(nmix >= 1 && nmix <= kMaxMixes, "norm_shift_mix: 1 to 6 mixes");
  layer_norm(x, w, b, xln, n, d, eps);
  token_shift(xln, d, segs, state, stride, off, prev);
  for (int j = 0; j < nmix; ++j) mix(xln, prev, mu[j], out[j], n, d);
}

void Backend::matmul_ex(const WeightView& W, const float* x, float* y, int64_t n, const Epilogue& ep,
                        float* scratch) {
  RWKVPP_CHECK(!ep.accumulate || scratch, "matmul_ex: accumulate needs scratch");
  float* v = ep.accumulate ? scratch : y;
  const int64_t count = n * W.rows;
  matmul(W, x, v, n);
  if (ep.has_act) unary(ep.act, v, v, count);
  if (ep.gate) binary(Binary::Mul, ep.gate, v, v, count);
  if (ep.accumulate) binary(Binary::Add, y, v, y, count);
}

void Backend::matmul_ex_relu_square_x(const WeightView& W, float* x, float* y, int64_t n,
                                      const Epilogue& ep, float* scratch) {
  unary(Unary::ReluSquare, x, x, n * W.cols);
  matmul_ex(W, x, y, n, ep, scratch);
}

bool Backend::folds_relu_square_x(const WeightView&, int64_t) const { return false; }

void Backend::matmul_group(const MatmulJob* jobs, int count, int64_t n) {
  for (int i = 0; i < count; ++i) {
    RWKVPP_CHECK(!jobs[i].ep.accumulate, "matmul_group: jobs do not accumulate");
    matmul_ex(*jobs[i].W, jobs[i].x, jobs[i].y, n, jobs[i].ep, nullptr);
  }
}

void Backend::rwkv7_mix(const Rwkv7Mix& p, const SegTable& segs, float* state, int64_t stride,
                        int64_t off, int64_t n, int64_t H, int64_t N) {
  const int64_t C = H * N, nc = n * C;
  float *w = p.w_raw, *a = p.a_raw, *v = p.v;
  binary_row(Binary::Add, w, p.w0, w, n, C);
  unary(Unary::Sigmoid, w, w, nc);
  binary_row(Binary::Mul, w, p.neg_decay, w, n, C);
  unary(Unary::Exp, w, w, nc);
  binary_row(Binary::Add, a, p.a0, a, n, C);
  unary(Unary::Sigmoid, a, a, nc);
  binary_row(Binary::Mul, p.k_raw, p.k_k, p.kk, n, C);
  head_l2_normalize(p.kk, p.kk, n, H, N, p.l2_eps);
  if (p.first_layer) {
    copy(p.v_first, v, size_t(nc) * sizeof(float));
  } else {
    binary_row(Binary::Add, p.v_raw, p.v0, p.v_raw, n, C);
    unary(Unary::Sigmoid, p.v_raw, p.v_raw, nc);
    lerp(v, p.v_first, p.v_raw, v, nc);
  }
  // k = k_raw * (1 + (a - 1) * k_a) = mix(k_raw * a, k_raw, k_a), into v_raw's buffer (free now).
  float* k = p.v_raw;
  binary(Binary::Mul, p.k_raw, a, k, nc);
  mix(k, p.k_raw, p.k_a, k, n, C);
  binary(Binary::Mul, p.kk, a, a, nc);           // a := kk * a (the rule's b)
  binary_row(Binary::Mul, p.kk, p.neg_one, p.kk, n, C);  // kk := -kk (the rule's a)
  wkv7(p.r, w, k, v, p.kk, a, segs, state, stride, off, p.out, H, N);
  group_norm(p.out, p.lnx_w, p.lnx_b, p.out, n, H, N, p.gn_eps);
  head_dot_add(p.r, k, p.r_k, v, p.out, n, H, N);
  binary(Binary::Mul, p.out, p.g, p.out, nc);
}

void Backend::wkv4_gated(const float* k, const float* v, const float* w, const float* u, const SegTable& segs,
                         float* state, int64_t stride, int64_t off_aa, float* out, int64_t d,
                         const float* gate) {
  wkv4(k, v, w, u, segs, state, stride, off_aa, out, d);
  binary(Binary::Mul, gate, out, out, segs.n_tokens * d);
}

void Backend::argmax_rows_async(const float* logits, int64_t m, int64_t vocab, void* host_out) {
  auto* ids = static_cast<int32_t*>(host_out);
  argmax_rows(logits, m, vocab, ids, reinterpret_cast<float*>(ids + m));
}

void Backend::copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
                        size_t rows) {
  for (size_t r = 0; r < rows; ++r)
    copy(static_cast<uint8_t*>(dst) + r * dst_pitch, static_cast<const uint8_t*>(src) + r * src_pitch, row_bytes);
}

std::string Backend::share_kind() const { return ""; }
std::unique_ptr<SharedBuffer> Backend::share_alloc(size_t) {
  fail("backend {} shares no memory with other processes", name());
}
std::unique_ptr<SharedBuffer> Backend::share_open(std::span<const uint8_t>, size_t) {
  fail("backend {} shares no memory with other processes", name());
}
std::unique_ptr<SharedSignal> Backend::signal_create() {
  fail("backend {} shares no signals with other processes", name());
}
std::unique_ptr<SharedSignal> Backend::signal_open(std::span<const uint8_t>) {
  fail("backend {} shares no signals with other processes", name());
}
std::unique_ptr<SharedRing> Backend::share_ring(bool, std::span<SharedBuffer* const>,
                                                std::span<SharedSignal* const>,
                                                std::span<SharedSignal* const>) {
  return nullptr;
}
void Backend::share_copy(void* dst, const void* src, size_t bytes, SharedSignal& after,
                         uint64_t count, SharedSignal& done) {
  after.wait(count);
  copy(dst, src, bytes);
  done.record();
}

bool Backend::graph_begin(uint64_t) { return false; }
void Backend::graph_end(uint64_t) {}
bool Backend::graph_launch(uint64_t) { return false; }
void Backend::graph_cancel() {}

}  // namespace rwkvpp
