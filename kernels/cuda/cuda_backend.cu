// The CUDA backend: kernels/backend.h on one NVIDIA GPU. One backend owns one device, one
// stream (every op, copy and upload is queued on it, in call order) and one cuBLAS handle.
// Memory comes from cudaMalloc (never managed memory); ops are asynchronous, and download()
// and synchronize() are the points where the host waits. Errors throw rwkvpp::Error carrying
// the CUDA error string (cuda_check.h); errors of a kernel that already ran surface at the next
// synchronising call.
//
// Host-side arguments that ops take (token ids, row indices, the segment table) are copied
// into device scratch buffers on the stream; the stream orders those copies against the kernels
// that read the previous contents, so a scratch buffer is reused only after its readers ran.
#include "kernels/cuda/cublas_lazy.h"
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/env_options.h"
#include "kernels/backend.h"
#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/head_ops.cuh"
#include "kernels/cuda/ipc.cuh"
#include "kernels/cuda/layer_norm.cuh"
#include "kernels/cuda/imma.cuh"
#include "kernels/cuda/matmul.cuh"
#include "kernels/cuda/token_shift.cuh"
#include "kernels/cuda/wkv4.cuh"
#include "kernels/cuda/wkv5.cuh"
#include "kernels/cuda/wkv7.cuh"

#define RWKVPP_CUBLAS_CHECK(call)                                                          \
  do {                                                                                     \
    cublasStatus_t st_ = (call);                                                           \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                      \
      ::rwkvpp::cuda::fail_cublas(int(st_), #call, __FILE__, __LINE__);                    \
  } while (0)

namespace rwkvpp {
namespace {

using cuda::fail_msg;

// cuBLAS's workspace on Hopper (its documentation recommends 32 MiB there).
constexpr size_t kCublasWorkspace = size_t(32) << 20;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    const int count = cuda_device_count();
    if (device < 0 || device >= count)
      fail_msg("CUDA device " + std::to_string(device) + " requested but " +
               std::to_string(count) + " device(s) are present");
    RWKVPP_CUDA_CHECK(cudaSetDevice(device_));
    RWKVPP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    RWKVPP_CUBLAS_CHECK(cublasCreate(&blas_));
    RWKVPP_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    // Plain fp32 GEMMs (no TF32): the fp32 path is held to the CPU reference at ~1e-5.
    RWKVPP_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
    blas_ws_ = alloc(kCublasWorkspace);
    RWKVPP_CUBLAS_CHECK(cublasSetWorkspace(blas_, blas_ws_, kCublasWorkspace));
    consts_ = static_cast<float*>(alloc(cuda::kMatmulConsts * sizeof(float)));
    cuda::init_matmul_consts(consts_, stream_);
    // Batch-invariant products (imma.cuh) with RWKVPP_INVARIANT=1 (or set_batch_invariant); the
    // fast paths otherwise. Opt-in until the [cuda][invariance] tests and the cost measurement
    // have run on a GPU (docs/perf.md).
    invariant_ = env_options().cuda.invariant;
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    sync_all_streams();
    drop_graphs();
    for (auto& f : fences_) cudaEventDestroy(f.event);
    for (cudaEvent_t e : spare_events_) cudaEventDestroy(e);
    for (cudaEvent_t e : spare_timers_) cudaEventDestroy(e);
    for (auto& [id, e] : marks_) cudaEventDestroy(e);
    for (void* p : {blas_ws_, static_cast<void*>(consts_), segs_.p, ids_.p, scratch_.p, argmax_.p,
                    argmax_parts_.p, group_scratch_.p, imma_tickets_.p})
      if (p) cudaFree(p);
    for (auto& [key, p] : group_ptrs_) cudaFree(p);
    if (blas_) cublasDestroy(blas_);
    for (cudaStream_t s : {stream_, up_, down_})
      if (s) cudaStreamDestroy(s);
  }

  std::string name() const override { return "cuda:" + std::to_string(device_); }
  // The GPU model decides the kernels' arithmetic; the products' reduction order depends on the
  // batch (GEMV splits, cuBLAS's choice of kernel), so results are not batch-invariant yet.
  // With the invariant products (RWKVPP_INVARIANT=1) nothing else depends on the batch: every
  // other op works per row or per sequence, and the decode step's fused kernels compute what
  // the plain ones do (tested: tests/kernels/test_cuda_invariance.cpp).
  std::string numerics() const override {
    cudaDeviceProp p{};
    std::string s = "cuda";
    if (cudaGetDeviceProperties(&p, device_) == cudaSuccess)
      s += std::string(" ") + p.name + " sm_" + std::to_string(p.major * 10 + p.minor);
    return s + (invariant_ ? " invariant" : " fast");
  }
  bool batch_invariant() const override { return invariant_; }
  // The GEMM floor is the fastest product the device has (cuBLAS), whatever the mode.
  double measure_gemm_TFLOPs(DType dtype) override {
    const bool saved = invariant_;
    invariant_ = false;
    const double r = Backend::measure_gemm_TFLOPs(dtype);
    invariant_ = saved;
    return r;
  }
  bool set_batch_invariant(bool on) override {
    invariant_ = on;
    return invariant_;
  }
  bool host_memory() const override { return false; }
  // cuBLAS takes its fast (Hopper) kernels only for row counts that keep fp32 output rows
  // 16-byte aligned; the RWKV vocabulary has 50277 words (the 14B head at 256 tokens ran at
  // 95 TFLOP/s unpadded).
  int64_t row_align() const override { return 8; }

  // ---- memory ---------------------------------------------------------------------------
  void* alloc(size_t bytes) override {
    use_device();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail_msg(name() + ": out of device memory allocating " + std::to_string(bytes) +
               " bytes (" + std::to_string(free_b) + " of " + std::to_string(total_b) +
               " free): " + cudaGetErrorString(e));
    }
    RWKVPP_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    return p;
  }
  void free(void* p) noexcept override {
    if (!p) return;
    cudaSetDevice(device_);
    sync_all_streams();  // queued work or side copies may still use it
    drop_graphs();       // a recording may hold p
    cudaFree(p);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    use_device();
    // From pageable memory the copy is staged before this returns, so src may be reused at once.
    RWKVPP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void download(void* dst, const void* src, size_t bytes) override {
    use_device();
    if (bytes) RWKVPP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    RWKVPP_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // Page-locked host memory, so that the async copies below are DMA that overlaps the host.
  void* alloc_host(size_t bytes) override {
    use_device();
    void* p = nullptr;
    if (cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();
      fail_msg("cannot allocate " + std::to_string(bytes) + " bytes of page-locked host memory");
    }
    std::memset(p, 0, bytes);
    return p;
  }
  void free_host(void* p) noexcept override {
    if (!p) return;
    cudaSetDevice(device_);
    sync_all_streams();  // a queued copy may still use it
    cudaFreeHost(p);
  }
  void upload_async(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    use_device();
    RWKVPP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void download_async(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    use_device();
    RWKVPP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  // Fences are events recorded on the stream, queried in order (a later one done implies
  // every earlier one is), and recycled.
  uint64_t fence() override {
    use_device();
    cudaEvent_t e = nullptr;
    if (!spare_events_.empty()) {
      e = spare_events_.back();
      spare_events_.pop_back();
    } else {
      RWKVPP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    RWKVPP_CUDA_CHECK(cudaEventRecord(e, stream_));
    fences_.push_back({++fence_seq_, e});
    return fence_seq_;
  }
  bool fence_done(uint64_t f) override {
    use_device();
    while (!fences_.empty()) {
      cudaError_t r = cudaEventQuery(fences_.front().event);
      if (r == cudaErrorNotReady) break;
      RWKVPP_CUDA_CHECK(r);
      fence_reached_ = fences_.front().id;
      spare_events_.push_back(fences_.front().event);
      fences_.erase(fences_.begin());
    }
    return f <= fence_reached_;
  }
  void fence_wait(uint64_t f) override {
    if (fence_done(f)) return;
    for (auto& p : fences_)
      if (p.id >= f) {
        RWKVPP_CUDA_CHECK(cudaEventSynchronize(p.event));
        break;
      }
    fence_done(f);
  }
  // Timing marks: events with timing on, recycled.
  uint64_t timer_mark() override {
    use_device();
    return record_mark(stream_);
  }
  uint64_t record_mark(cudaStream_t s) {
    cudaEvent_t e = nullptr;
    if (!spare_timers_.empty()) {
      e = spare_timers_.back();
      spare_timers_.pop_back();
    } else {
      RWKVPP_CUDA_CHECK(cudaEventCreate(&e));
    }
    RWKVPP_CUDA_CHECK(cudaEventRecord(e, s));
    marks_.emplace(++mark_seq_, e);
    return mark_seq_;
  }
  // Side copies: one stream for uploads, one for downloads (the two DMA directions), ordered
  // against the ops through marks (events).
  cudaEvent_t mark_event(uint64_t m) const {
    auto it = marks_.find(m);
    return it == marks_.end() ? nullptr : it->second;
  }
  cudaStream_t side_stream(cudaStream_t& s) {
    if (!s) RWKVPP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
  }
  uint64_t upload_side(void* dst, const void* src, size_t bytes, uint64_t after) override {
    use_device();
    cudaStream_t s = side_stream(up_);
    if (cudaEvent_t e = mark_event(after)) RWKVPP_CUDA_CHECK(cudaStreamWaitEvent(s, e, 0));
    if (bytes) RWKVPP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
    return record_mark(s);
  }
  uint64_t download_side(void* dst, const void* src, size_t bytes) override {
    use_device();
    cudaStream_t s = side_stream(down_);
    const uint64_t ops = record_mark(stream_);
    RWKVPP_CUDA_CHECK(cudaStreamWaitEvent(s, mark_event(ops), 0));
    timer_release(ops);  // the wait took the event's state when it was called
    if (bytes) RWKVPP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
    return record_mark(s);
  }
  void wait_mark(uint64_t m) override {
    use_device();
    if (cudaEvent_t e = mark_event(m)) RWKVPP_CUDA_CHECK(cudaStreamWaitEvent(stream_, e, 0));
  }
  bool mark_done(uint64_t m) override {
    cudaEvent_t e = mark_event(m);
    if (!e) return true;
    use_device();
    const cudaError_t r = cudaEventQuery(e);
    if (r == cudaErrorNotReady) return false;
    RWKVPP_CUDA_CHECK(r);
    return true;
  }
  void mark_wait(uint64_t m) override {
    if (cudaEvent_t e = mark_event(m)) {
      use_device();
      RWKVPP_CUDA_CHECK(cudaEventSynchronize(e));
    }
  }
  double seconds_between(uint64_t from, uint64_t to) override {
    auto a = marks_.find(from), b = marks_.find(to);
    if (a == marks_.end() || b == marks_.end()) return 0;
    float ms = 0;
    use_device();
    return cudaEventElapsedTime(&ms, a->second, b->second) == cudaSuccess ? ms * 1e-3 : 0;
  }
  void timer_release(uint64_t mark) override {
    auto it = marks_.find(mark);
    if (it == marks_.end()) return;
    spare_timers_.push_back(it->second);
    marks_.erase(it);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    use_device();
    RWKVPP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
                 size_t rows) override {
    if (row_bytes == 0 || rows == 0) return;
    use_device();
    RWKVPP_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows, cudaMemcpyDeviceToDevice, stream_));
  }
  std::string share_kind() const override { return "cuda-ipc"; }
  std::unique_ptr<SharedBuffer> share_alloc(size_t bytes) override { return cuda::ipc_alloc(device_, bytes, stream_); }
  std::unique_ptr<SharedBuffer> share_open(std::span<const uint8_t> h, size_t bytes) override {
    return cuda::ipc_open(device_, h, bytes);
  }
  std::unique_ptr<SharedSignal> signal_create() override { return cuda::ipc_signal_create(device_, stream_); }
  std::unique_ptr<SharedSignal> signal_open(std::span<const uint8_t> h) override {
    return cuda::ipc_signal_open(device_, h, stream_);
  }
  std::unique_ptr<SharedRing> share_ring(bool receive, std::span<SharedBuffer* const> slots,
                                         std::span<SharedSignal* const> waits,
                                         std::span<SharedSignal* const> dones) override {
    return cuda::ipc_ring(device_, stream_, receive, slots, waits, dones);
  }
  void share_copy(void* dst, const void* src, size_t bytes, SharedSignal& after, uint64_t count,
                  SharedSignal& done) override {
    if (!cuda::share_copy_fused(stream_, dst, src, bytes, after, count, done))
      Backend::share_copy(dst, src, bytes, after, count, done);
  }
  void synchronize() override {
    use_device();
    for (cudaStream_t s : {stream_, up_, down_})
      if (s) RWKVPP_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  size_t free_memory() const override {
    use_device();
    size_t free_b = 0, total_b = 0;
    RWKVPP_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return free_b;
  }

  SegTable stage_segments(std::span<const Segment> segs) override {
    SegTable t;
    t.host = segs;
    for (const Segment& s : segs) {
      t.n_tokens += s.len;
      t.max_len = std::max(t.max_len, s.len);
    }
    if (!segs.empty()) {
      const size_t had = segs_.bytes;
      auto* d = static_cast<Segment*>(grow(segs_, segs.size_bytes()));
      // Decode steps mostly repeat the last table (the same sequences, one token each). Nothing
      // but this upload writes the device copy, so an equal table is not uploaded again: a
      // pageable host-to-device copy less in the step's path (RWKVPP_SEG_CACHE=0: always).
      const bool same = env_options().cuda.seg_cache && segs_.bytes == had &&
                        segs.size() == segs_last_.size() &&
                        std::memcmp(segs.data(), segs_last_.data(), segs.size_bytes()) == 0;
      if (!same) {
        upload(d, segs.data(), segs.size_bytes());
        segs_last_.assign(segs.begin(), segs.end());
      }
      t.device = d;
    }
    return t;
  }

  // ---- ops --------------------------------------------------------------------------------
  void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t d,
                  float eps) override {
    use_device();
    cuda::norm_rows(x, w, b, y, n, d, 1, eps, stream_);
  }
  void group_norm(const float* x, const float* w, const float* b, float* y, int64_t n,
                  int64_t n_head, int64_t head_size, float eps) override {
    use_device();
    cuda::norm_rows(x, w, b, y, n * n_head, head_size, n_head, eps, stream_);
  }

  void matmul(const WeightView& W, const float* x, float* y, int64_t n) override {
    use_device();
    if (invariant_) return invariant_product(W, x, y, n, false, {});
    product(W, x, y, n, {});
  }

  // Few tokens: the epilogue runs inside the GEMV (one launch); more: see product_ex.
  void matmul_ex(const WeightView& W, const float* x, float* y, int64_t n, const Epilogue& ep,
                 float* scratch) override {
    use_device();
    cuda::GemvEpilogue g;
    if (!gemv_epilogue(ep, g)) return Backend::matmul_ex(W, x, y, n, ep, scratch);
    if (invariant_) return invariant_product(W, x, y, n, false, g);
    if (cuda::gemv_with_epilogue(W, x, y, n, g, stream_)) return;
    product_ex(W, x, y, n, ep, scratch, false);
  }

  bool folds_relu_square_x(const WeightView& W, int64_t n) const override {
    if (invariant_) return true;
    return n > cuda::kGemvMaxTokens && cuda::matmul_folds(W, n, {true, false});
  }
  void matmul_ex_relu_square_x(const WeightView& W, float* x, float* y, int64_t n,
                               const Epilogue& ep, float* scratch) override {
    cuda::GemvEpilogue g;
    if (!folds_relu_square_x(W, n) || !gemv_epilogue(ep, g))
      return Backend::matmul_ex_relu_square_x(W, x, y, n, ep, scratch);
    use_device();
    if (invariant_) return invariant_product(W, x, y, n, true, g);
    product_ex(W, x, y, n, ep, scratch, true);
  }

  // Few tokens: one launch for the group (invariant or fast); else the base, matmul_ex per job.
  void matmul_group(const MatmulJob* jobs, int count, int64_t n) override {
    use_device();
    static_assert(kMaxGroupJobs <= cuda::kGemvMaxJobs, "a full group fits one GEMV launch");
    if (count >= 1 && count <= kMaxGroupJobs) {
      const WeightView* W[kMaxGroupJobs];
      const float* x[kMaxGroupJobs];
      float* y[kMaxGroupJobs];
      cuda::GemvEpilogue ep[kMaxGroupJobs];
      bool ok = true;
      for (int i = 0; i < count; ++i) {
        W[i] = jobs[i].W, x[i] = jobs[i].x, y[i] = jobs[i].y;
        ok = ok && !jobs[i].ep.accumulate && gemv_epilogue(jobs[i].ep, ep[i]);
      }
      if (ok && invariant_ && cuda::imma_group_takes(W, count, n)) return invariant_group(W, x, y, ep, count, n);
      if (ok && !invariant_ && cuda::gemv_group(W, x, y, ep, count, n, stream_)) return;
      // Many tokens: one batched GEMM for products of one shape, else a GEMM per job after one
      // conversion of all inputs; then each job's epilogue.
      if (ok && !invariant_ && count >= 2 &&
          (gemm_group(W, x, y, count, n) ||
           cuda::gemm_jobs_f16(blas_, W, x, y, count, n,
                               grow(group_scratch_, cuda::gemm_jobs_scratch_bytes(W, count, n)),
                               consts_, stream_))) {
        for (int i = 0; i < count; ++i) finish_epilogue(y[i], y[i], n * W[i]->rows, ep[i]);
        return;
      }
    }
    Backend::matmul_group(jobs, count, n);
  }

  // Decode steps (one token per segment): one kernel; otherwise the plain ops.
  void norm_shift_mix(const float* x, const float* w, const float* b, float eps, int64_t n,
                      int64_t d, const SegTable& segs, float* state, int64_t stride, int64_t off,
                      const float* const* mu, float* const* out, int nmix, float* xln,
                      float* prev) override {
    if (segs.max_len == 1 && int64_t(segs.host.size()) == n && nmix >= 1 && nmix <= kMaxMixes) {
      use_device();
      cuda::MixOut m{};
      for (int j = 0; j < nmix; ++j) {
        m.mu[j] = mu[j];
        m.out[j] = out[j];
      }
      cuda::norm_shift_mix_decode(x, w, b, eps, d, segs.device, n, state, stride, off, m, nmix,
                                  stream_);
      return;
    }
    Backend::norm_shift_mix(x, w, b, eps, n, d, segs, state, stride, off, mu, out, nmix, xln, prev);
  }

  void wkv4_gated(const float* k, const float* v, const float* w, const float* u,
                  const SegTable& segs, float* state, int64_t stride, int64_t off_aa, float* out,
                  int64_t d, const float* gate) override {
    use_device();
    cuda::wkv4(k, v, w, u, segs.device, int64_t(segs.host.size()), state, stride, off_aa, out, d,
               stream_, gate);
  }

  void embedding(const WeightView& E, const int32_t* ids, int64_t n, float* y) override {
    if (n == 0) return;
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] < 0 || ids[i] >= E.rows)
        fail_msg("token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                 " is outside the vocabulary [0, " + std::to_string(E.rows) + ")");
    cuda::embedding(E.data, E.dtype, E.cols, indices(ids, n), n, y, stream_);
  }

  void gather_rows(const float* x, const int32_t* rows, int64_t m, int64_t d, float* y) override {
    if (m == 0) return;
    for (int64_t j = 0; j < m; ++j)
      if (rows[j] < 0) fail_msg("gather_rows: negative row index " + std::to_string(rows[j]));
    cuda::gather_rows(x, indices(rows, m), m, d, y, stream_);
  }

  void token_shift(const float* x, int64_t d, const SegTable& segs, float* state, int64_t stride,
                   int64_t off, float* prev) override {
    use_device();
    cuda::token_shift(x, d, segs.device, int64_t(segs.host.size()), segs.max_len, state, stride,
                      off, prev, stream_);
  }

  void mix(const float* x, const float* prev, const float* mu, float* y, int64_t n,
           int64_t d) override {
    use_device();
    cuda::mix(x, prev, mu, y, n, d, stream_);
  }
  void unary(Unary op, const float* x, float* y, int64_t count) override {
    use_device();
    cuda::unary(op, x, y, count, stream_);
  }
  void binary(Binary op, const float* a, const float* b, float* y, int64_t count) override {
    use_device();
    cuda::binary(op, a, b, y, count, stream_);
  }
  void binary_row(Binary op, const float* a, const float* v, float* y, int64_t n,
                  int64_t d) override {
    use_device();
    cuda::binary_row(op, a, v, y, n, d, stream_);
  }

  void wkv4(const float* k, const float* v, const float* w, const float* u, const SegTable& segs,
            float* state, int64_t stride, int64_t off_aa, float* out, int64_t d) override {
    use_device();
    cuda::wkv4(k, v, w, u, segs.device, int64_t(segs.host.size()), state, stride, off_aa, out, d,
               stream_);
  }
  void wkv5(const float* r, const float* k, const float* v, const float* w, bool w_per_token,
            const float* u, const SegTable& segs, float* state, int64_t stride, int64_t off,
            float* out, int64_t n_head, int64_t head_size) override {
    use_device();
    cuda::wkv5(r, k, v, w, w_per_token, u, segs.device, int64_t(segs.host.size()), state, stride,
               off, out, n_head, head_size, stream_);
  }
  void wkv7(const float* r, const float* w, const float* k, const float* v, const float* a,
            const float* b, const SegTable& segs, float* state, int64_t stride, int64_t off,
            float* out, int64_t n_head, int64_t head_size) override {
    use_device();
    cuda::wkv7(r, w, k, v, a, b, segs.device, int64_t(segs.host.size()), state, stride, off, out,
               n_head, head_size, stream_);
  }

  void rwkv7_mix(const Rwkv7Mix& p, const SegTable& segs, float* state, int64_t stride, int64_t off,
                 int64_t n, int64_t n_head, int64_t head_size) override {
    use_device();
    if (cuda::rwkv7_mix(p, segs.device, int64_t(segs.host.size()), segs.max_len, invariant_, state,
                        stride, off, n_head, head_size, stream_))
      return;  // one kernel where it takes the layout (wkv7.cuh), else the plain ops
    Backend::rwkv7_mix(p, segs, state, stride, off, n, n_head, head_size);
  }

  void lerp(const float* a, const float* b, const float* m, float* y, int64_t count) override {
    use_device();
    cuda::lerp(a, b, m, y, count, stream_);
  }
  void head_l2_normalize(const float* x, float* y, int64_t n, int64_t n_head, int64_t head_size,
                         float eps) override {
    use_device();
    cuda::head_l2_normalize(x, y, n, n_head, head_size, eps, stream_);
  }
  void head_dot_add(const float* a, const float* b, const float* w, const float* c, float* y,
                    int64_t n, int64_t n_head, int64_t head_size) override {
    use_device();
    cuda::head_dot_add(a, b, w, c, y, n, n_head, head_size, stream_);
  }

  // ---- CUDA graphs (kernels/backend.h, "recorded op sequences") -------------------------
  bool graph_begin(uint64_t) override {
    use_device();
    RWKVPP_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    return true;
  }
  void graph_end(uint64_t key) override {
    use_device();
    cudaGraph_t g = nullptr;
    RWKVPP_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    cudaGraphExec_t ex = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&ex, g, 0);
    cudaGraphDestroy(g);
    RWKVPP_CUDA_CHECK(e);
    if (graphs_.size() >= kMaxGraphs) drop_graphs();
    graphs_[key] = ex;
    RWKVPP_CUDA_CHECK(cudaGraphLaunch(ex, stream_));  // capturing ran nothing: run it now
  }
  bool graph_launch(uint64_t key) override {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) return false;
    use_device();
    RWKVPP_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
    return true;
  }
  void graph_cancel() override {
    cudaSetDevice(device_);
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && g) cudaGraphDestroy(g);
    cudaGetLastError();  // an invalidated capture leaves its error behind
  }

  void argmax_rows_async(const float* logits, int64_t m, int64_t vocab, void* host_out) override {
    if (m == 0) return;
    use_device();
    const size_t bytes = size_t(m) * 8;  // [m] ids, then [m] logprobs
    auto* d = static_cast<int32_t*>(grow(argmax_, bytes));
    void* parts = grow(argmax_parts_, cuda::argmax_scratch_bytes());  // zeroed once, then kept
    cuda::argmax_rows(logits, m, vocab, d, reinterpret_cast<float*>(d + m), parts, stream_);
    download_async(host_out, d, bytes);
  }

  // The queued form, then a wait: ids and logprobs arrive in one copy.
  void argmax_rows(const float* logits, int64_t m, int64_t vocab, int32_t* host_ids,
                   float* host_logprobs) override {
    if (m == 0) return;
    argmax_host_.resize(size_t(m) * 2);
    argmax_rows_async(logits, m, vocab, argmax_host_.data());
    synchronize();
    std::copy_n(argmax_host_.data(), m, host_ids);
    if (host_logprobs) std::memcpy(host_logprobs, argmax_host_.data() + m, size_t(m) * 4);
  }

 private:
  // A device buffer that only grows (by half again, to avoid reallocating every step).
  struct Scratch {
    void* p = nullptr;
    size_t bytes = 0;
  };

  void* grow(Scratch& s, size_t bytes) {
    if (s.bytes < bytes) {
      if (s.p) free(s.p);  // waits for queued readers first
      s.p = nullptr;
      s.bytes = 0;
      const size_t want = bytes + bytes / 2;
      s.p = alloc(want);
      s.bytes = want;
    }
    return s.p;
  }

  // Many tokens, 2-3 fp16 W of one shape: one batched cuBLAS GEMM (cuda::gemm_group_f16; the
  // caller runs the epilogues). The 9 device pointers it reads are kept per (W, scratch, y)
  // combination, made on the first (uncaptured) step of a shape, so a recorded one finds them.
  bool gemm_group(const WeightView* const* W, const float* const* x, float* const* y, int count,
                  int64_t n) {
    if (count < 2 || count > 3 || n <= cuda::kGemvMaxTokens || W[0]->dtype != DType::F16) return false;
    for (int i = 0; i < count; ++i)
      if (W[i]->rows != W[0]->rows || W[i]->cols != W[0]->cols || W[i]->dtype != DType::F16) return false;
    const int64_t K = W[0]->cols, cnt = n * K;
    void* scratch = grow(group_scratch_, cuda::gemm_group_scratch_bytes(count, n, K));
    const void* host[9] = {};
    for (int i = 0; i < count; ++i) {
      host[i] = W[i]->data;
      host[3 + i] = static_cast<const __half*>(scratch) + i * cnt;
      host[6 + i] = y[i];
    }
    uint64_t key = 1469598103934665603ull;
    for (const void* p : host) key = (key ^ uint64_t(reinterpret_cast<uintptr_t>(p))) * 1099511628211ull;
    key = (key ^ uint64_t(count)) * 1099511628211ull;
    auto it = group_ptrs_.find(key);
    if (it == group_ptrs_.end()) {
      cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      RWKVPP_CUDA_CHECK(cudaStreamIsCapturing(stream_, &cs));
      if (cs != cudaStreamCaptureStatusNone) return false;  // never allocate while recording
      if (group_ptrs_.size() >= 256) {  // stale combinations of grown buffers: start afresh
        for (auto& [k, p] : group_ptrs_) free(p);
        group_ptrs_.clear();
      }
      void* d = alloc(sizeof host);
      upload(d, host, sizeof host);
      it = group_ptrs_.emplace(key, d).first;
    }
    return cuda::gemm_group_f16(blas_, W, x, y, count, n, scratch, consts_,
                                static_cast<const void* const*>(it->second), stream_);
  }

  // The batch-invariant product (imma.cuh) with its epilogue.
  void invariant_product(const WeightView& W, const float* x, float* y, int64_t n, bool relu_square_x,
                         const cuda::GemvEpilogue& g) {
    const cuda::ImmaNeeds need = cuda::imma_needs(W, n);
    void* scratch = need.scratch_bytes ? grow(scratch_, need.scratch_bytes) : nullptr;
    int* tickets = need.tickets ? static_cast<int*>(grow(imma_tickets_, need.tickets * 4)) : nullptr;
    cuda::imma(W, x, y, n, relu_square_x, g, scratch, tickets, stream_);
  }

  // 2-3 invariant products in one launch (imma_group_takes said yes), each as it is alone.
  void invariant_group(const WeightView* const* W, const float* const* x, float* const* y,
                       const cuda::GemvEpilogue* ep, int count, int64_t n) {
    size_t bytes = 0, tickets = 0;
    for (int i = 0; i < count; ++i) {
      const cuda::ImmaNeeds need = cuda::imma_needs(*W[i], n);
      bytes += need.scratch_bytes, tickets += need.tickets;
    }
    void* scratch = bytes ? grow(scratch_, bytes) : nullptr;
    int* t = tickets ? static_cast<int*>(grow(imma_tickets_, tickets * 4)) : nullptr;
    cuda::imma_group(W, x, y, ep, count, n, scratch, t, stream_);
  }

  void product(const WeightView& W, const float* x, float* y, int64_t n, const cuda::MatmulOpts& o) {
    const size_t need = cuda::matmul_scratch_bytes(W, n);
    void* scratch = need ? grow(scratch_, need) : nullptr;
    cuda::matmul(blas_, W, x, y, n, scratch, consts_, stream_, o);
  }

  // What is left of an epilogue after a product into v, in one pass (none when nothing is).
  void finish_epilogue(const float* v, float* y, int64_t count, const cuda::GemvEpilogue& g) {
    if (g.act || g.gate || g.accumulate || v != y) cuda::apply_epilogue(v, y, count, g, stream_);
  }

  // A product the GEMV did not take: a plain accumulation inside cuBLAS (beta = 1) where the
  // path folds it, else the product (into `scratch` when accumulating) and one pass for the
  // activation, gate and accumulation together. relu_square_x: folds_relu_square_x() held.
  void product_ex(const WeightView& W, const float* x, float* y, int64_t n, const Epilogue& ep,
                  float* scratch, bool relu_square_x) {
    cuda::MatmulOpts o;
    o.relu_square_x = relu_square_x;
    cuda::GemvEpilogue g;
    gemv_epilogue(ep, g);  // the callers checked that it converts
    if (ep.accumulate && !ep.has_act && !ep.gate && cuda::matmul_folds(W, n, {relu_square_x, true})) {
      o.accumulate = true;
      return product(W, x, y, n, o);
    }
    float* v = ep.accumulate ? scratch : y;
    if (!v) fail_msg("matmul_ex: accumulate needs scratch");
    product(W, x, v, n, o);
    finish_epilogue(v, y, n * W.rows, g);
  }

  // The GEMV's form of an epilogue; false for an activation it does not fuse.
  static bool gemv_epilogue(const Epilogue& ep, cuda::GemvEpilogue& g) {
    g.act = !ep.has_act                      ? 0
            : ep.act == Unary::Sigmoid    ? 1
            : ep.act == Unary::ReluSquare ? 2
            : ep.act == Unary::Tanh       ? 3
                                          : -1;
    g.gate = ep.gate;
    g.accumulate = ep.accumulate;
    return g.act >= 0;
  }

  void drop_graphs() noexcept {
    for (auto& [key, ex] : graphs_) cudaGraphExecDestroy(ex);
    graphs_.clear();
  }

  // A few indices travel by value in the kernel's parameters (RWKVPP_INLINE_IDS=0: never);
  // more are copied to the device.
  cuda::IdList indices(const int32_t* host, int64_t n) {
    cuda::IdList l;
    if (env_options().cuda.inline_ids && n <= cuda::IdList::kInlineIds) {
      std::copy(host, host + n, l.inl);
      return l;
    }
    auto* d = static_cast<int32_t*>(grow(ids_, size_t(n) * sizeof(int32_t)));
    upload(d, host, size_t(n) * sizeof(int32_t));
    l.dev = d;
    return l;
  }

  // Makes this backend's device current for the calling thread (several backends, one per
  // GPU, may be driven from one thread in turn).
  void sync_all_streams() noexcept {
    for (cudaStream_t s : {stream_, up_, down_})
      if (s) cudaStreamSynchronize(s);
  }
  void use_device() const {
    int cur = -1;
    RWKVPP_CUDA_CHECK(cudaGetDevice(&cur));
    if (cur != device_) RWKVPP_CUDA_CHECK(cudaSetDevice(device_));
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t up_ = nullptr, down_ = nullptr;  // side copies (upload_side, download_side)
  cublasHandle_t blas_ = nullptr;
  void* blas_ws_ = nullptr;
  bool invariant_ = false;    // products by imma.cuh (RWKVPP_INVARIANT=1) or the fast paths
  float* consts_ = nullptr;  // cuda::kMatmulConsts floats for the cuBLAS paths (matmul.cuh)
  Scratch segs_, ids_, scratch_, argmax_, argmax_parts_, group_scratch_;
  // The invariant products' tickets (cuda::imma_needs): zero-filled when allocated, and every
  // launch leaves them 0, so growing drops nothing.
  Scratch imma_tickets_;
  std::vector<Segment> segs_last_;  // what segs_ holds on the device
  std::unordered_map<uint64_t, void*> group_ptrs_;  // gemm_group's device pointer arrays
  // Recorded layer loops by the caller's key; a few per batch size are plenty.
  static constexpr size_t kMaxGraphs = 256;
  std::unordered_map<uint64_t, cudaGraphExec_t> graphs_;
  std::vector<int32_t> argmax_host_;  // argmax_rows: ids and logprob bits, as downloaded
  struct Fence {
    uint64_t id;
    cudaEvent_t event;
  };
  std::vector<Fence> fences_;  // pending, oldest first (a handful at a time)
  std::vector<cudaEvent_t> spare_events_;
  std::unordered_map<uint64_t, cudaEvent_t> marks_;  // timing marks not yet released
  std::vector<cudaEvent_t> spare_timers_;
  uint64_t mark_seq_ = 0;
  uint64_t fence_seq_ = 0, fence_reached_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<CudaBackend>(device);
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return n;
}

bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace rwkvpp
