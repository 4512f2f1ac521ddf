// The device seam: what a backend (kernels/cpu, kernels/cuda) must provide so that the
// per-version block forward (kernels/rwkv*.cpp) can run on it. No device types appear here:
// pointers are plain `float*`/`void*` into the backend's own memory space (host memory for the
// CPU backend, device memory for CUDA); only the backend dereferences them.
//
// Conventions for every op:
// - Activations are fp32, row-major: `x` of shape [n, d] holds n tokens of width d.
// - A batch holds tokens of several sequences, grouped in segments (see Segment): the tokens of
//   one segment are consecutive and in time order, and belong to one state slot.
// - Recurrent state is fp32. A layer's state for all slots is one array [n_slots, state_floats];
//   ops that touch state take that base pointer, the slot stride (in floats), and an offset.
// - Ops are asynchronous with respect to the host on devices that queue work; download() and
//   synchronize() are the points where results are visible to the host.
// - Thread-safety: one backend object is driven by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/segment.h"
#include "common/tensor.h"

namespace rwkvpp {

// The segments of one batch, as the host built them and as the device sees them.
struct SegTable {
  std::span<const Segment> host;     // host copy (always valid)
  const Segment* device = nullptr;   // device copy (== host.data() on the CPU backend)
  int64_t n_tokens = 0;              // sum of len
  int32_t max_len = 0;               // longest segment
};

// A weight matrix W of shape [rows, cols] (rows = outputs, cols = inputs) in backend memory,
// in the backend's own layout (row-major on CUDA; blocks of rows on the CPU, kernels/cpu/gemm.h).
// For int8 weights (DType::I8) `data` holds q [rows, cols] int8 (16-byte aligned) and `scales`
// one fp32 scale per row, W[r, c] = q[r, c] * scales[r] (kernels/quantize.h); `scales` is null
// for the other dtypes. int4 (DType::I4, CPU only so far): 4-bit q, and per row and group of
// `group` columns an fp16 scale d and offset m in `aux`, W[r, c] = q * d + m.
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* scales = nullptr;
  const void* aux = nullptr;  // int4: the groups' fp16 scales and offsets (backend layout)
  int64_t group = 0;          // int4: columns per group (kI4Group)
};

enum class Unary : uint8_t {
  Sigmoid,     // 1 / (1 + exp(-x))
  ReluSquare,  // max(x, 0)^2
  Silu,        // x * sigmoid(x)
  Tanh,
  Exp,
  NegExp,      // -exp(x)
  ExpNegExp,   // exp(-exp(x))
};

enum class Binary : uint8_t {
  Add,  // y = a + b
  Mul,  // y = a * b
  Sub,  // y = a - b
};

class Backend;

// Owning handle of backend memory; move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend* be, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return p_; }
  float* f32() const { return static_cast<float*>(p_); }
  size_t bytes() const { return n_; }

 private:
  Backend* be_ = nullptr;
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Owning handle of host memory from Backend::alloc_host; move-only.
class HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(Backend* be, size_t bytes);
  ~HostBuffer();
  HostBuffer(HostBuffer&& o) noexcept;
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  uint8_t* data() const { return static_cast<uint8_t*>(p_); }
  size_t size() const { return n_; }

 private:
  Backend* be_ = nullptr;
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Memory that another process on the same host maps too (Backend::share_alloc/share_open):
// a stage writes its output hidden vectors straight into its successor's receive slots, so no
// host copies them. handle() is what the other process needs to open it (bytes to send over
// the transport). The creator calls unlink() once the peer has opened it, so that nothing is
// left behind if a process dies later (POSIX shared memory; a no-op elsewhere).
class SharedBuffer {
 public:
  virtual ~SharedBuffer() = default;
  virtual void* data() const = 0;
  virtual size_t bytes() const = 0;
  virtual const std::vector<uint8_t>& handle() const = 0;
  virtual void unlink() {}
};

// Ordering between the queues of two processes' devices (Backend::signal_create/open):
// record() marks the ops queued so far on this side; wait(count) makes the ops queued from now
// on wait until the device has got past the count-th record() (counting from 1; the other
// process's host must have made it first: the protocol sends a message after recording, and
// knows how many it made; count 0 waits for nothing). Synchronous devices order everything on
// the host already: their signals do nothing.
class SharedSignal {
 public:
  virtual ~SharedSignal() = default;
  virtual void record() = 0;
  virtual void wait(uint64_t count) = 0;
  virtual const std::vector<uint8_t>& handle() const = 0;
  // The device waited for `count` or recorded the signal by itself (a SharedRing's hop): keeps
  // this side's counts in step (the next record()'s value; what teardown must release).
  virtual void device_waited(uint64_t count) { (void)count; }
  virtual void device_recorded() {}
  // Teardown: ends every wait queued on this side for this signal, recorded or not (a peer that
  // died will never record it; a wait left queued would hold the device in every later free
  // and synchronisation). The copies behind those waits run on with whatever the slots hold.
  virtual void release_waits() {}
};

// A ring of shared slots whose hops the device sequences itself (Backend::share_ring): the next
// slot and each slot's count live in device memory, so a hop's operation is the same at every
// step and may be part of a recording (graph_begin .. graph_end) that is replayed. Every hop of
// such a ring goes through hop() or advance(); the host keeps its own counts in step
// (SharedSignal::device_*).
class SharedRing {
 public:
  virtual ~SharedRing() = default;
  // Whether hop() takes a copy of `bytes`; larger ones go through Backend::share_copy (with the
  // host's counts), followed by advance().
  virtual bool takes(size_t bytes) const = 0;
  // Queues the ring's next hop. Receiving: wait until the slot is written, copy it to `local`,
  // signal it consumed. Sending: wait until the slot is consumed, copy `local` into it, signal
  // it written.
  virtual void hop(void* local, size_t bytes) = 0;
  // Queues moving the device's sequence past a hop the host did itself: slot `slot` has now
  // seen `count` hops.
  virtual void advance(int slot, uint64_t count) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;       // "cpu", "cuda:0"
  virtual bool host_memory() const = 0;       // true when pointers are host-addressable
  // What decides this backend's arithmetic, for records that must be reproducible (a resumed
  // batch job): two stages that report the same string compute the same layers bit for bit.
  // batch_invariant(): whether a sequence's results also do not depend on what else shares its
  // steps (batch size, position in the batch, prompt chunks); docs/architecture.md.
  virtual std::string numerics() const { return name(); }
  virtual bool batch_invariant() const { return false; }
  // Asks for batch-invariant products (on) or the device's fastest ones (off); returns
  // batch_invariant() afterwards (a backend with only one kind keeps it). Call before loading.
  virtual bool set_batch_invariant(bool on) { (void)on; return batch_invariant(); }
  // The multiple of rows a large product's output (the head) should have for the device's
  // fastest kernels; the caller pads the matrix with zero rows. 1: any count (the default).
  virtual int64_t row_align() const { return 1; }

  // ---- memory -----------------------------------------------------------------------------
  virtual void* alloc(size_t bytes) = 0;      // zero-filled; throws Error when out of memory
  virtual void free(void* p) noexcept = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;    // host -> backend
  virtual void download(void* dst, const void* src, size_t bytes) = 0;  // backend -> host; synchronous
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;      // backend -> backend
  // `rows` rows of `row_bytes` each, from src (rows `src_pitch` bytes apart) to dst (`dst_pitch`
  // apart), backend -> backend. The default copies row by row.
  virtual void copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
                         size_t rows);
  virtual void synchronize() = 0;
  virtual size_t free_memory() const = 0;     // bytes available for weights and state

  // ---- asynchronous transfers (optional; the defaults are the synchronous ones) -----------
  // Host memory that devices copy from and to directly (page-locked on CUDA; plain memory
  // elsewhere): stage-to-stage messages live in it, so that their hidden vectors move by DMA
  // while the host goes on. Zero-filled, 64-byte aligned; throws Error when out of memory.
  virtual void* alloc_host(size_t bytes);
  virtual void free_host(void* p) noexcept;
  // Queued copies: they run in order with the ops, and the host buffer (from alloc_host, or
  // any host memory) must stay valid and untouched until a fence() recorded after the copy
  // has completed. The defaults copy at once (the fence is then complete already).
  virtual void upload_async(void* dst, const void* src, size_t bytes);
  virtual void download_async(void* dst, const void* src, size_t bytes);
  // A marker after everything queued so far. fence_done() tells without blocking whether the
  // device has got past it; fence_wait() blocks until it has. Markers are increasing; a later
  // one completing implies every earlier one has. The defaults (synchronous devices) return 0
  // and are always done.
  virtual uint64_t fence();
  virtual bool fence_done(uint64_t f);
  virtual void fence_wait(uint64_t f);
  // Device time of queued work, for statistics: timer_mark() records a mark after what is
  // queued so far; once a fence recorded after the later of two marks has completed,
  // seconds_between() is the device time from one to the other. timer_release() frees a mark.
  // The defaults (synchronous devices: no device time of their own) return 0.
  virtual uint64_t timer_mark();
  virtual double seconds_between(uint64_t from, uint64_t to);
  virtual void timer_release(uint64_t mark);
  // Copies on side queues of the device that overlap the ops (a pipeline stage's hidden
  // vectors, double-buffered). upload_side() starts once the device has got past mark `after`
  // (0: at once) and returns a mark of its completion; download_side() starts once the ops
  // queued so far have run and returns a mark likewise. wait_mark(m): ops queued from now on
  // start after m. mark_done(m): whether the device has got past m (never blocks); mark_wait(m)
  // blocks until it has. A released mark counts as passed: release one only once it has passed
  // or nothing depends on it. The defaults (synchronous devices) copy at once and return
  // timer_mark(); their marks are always passed.
  virtual uint64_t upload_side(void* dst, const void* src, size_t bytes, uint64_t after);
  virtual uint64_t download_side(void* dst, const void* src, size_t bytes);
  virtual void wait_mark(uint64_t m);
  virtual bool mark_done(uint64_t m);
  virtual void mark_wait(uint64_t m);

  // ---- memory and ordering shared with a process on the same host (optional) -------------
  // share_kind(): "" when the backend cannot share; otherwise both sides must report the same
  // kind ("posix-shm" on the CPU, "cuda-ipc" on CUDA) and run on one host. share_alloc():
  // zero-filled backend memory another process can open; share_open(): the other process's,
  // mapped here (`bytes` at most what it allocated). Both throw Error when the system refuses.
  virtual std::string share_kind() const;
  virtual std::unique_ptr<SharedBuffer> share_alloc(size_t bytes);
  virtual std::unique_ptr<SharedBuffer> share_open(std::span<const uint8_t> handle, size_t bytes);
  virtual std::unique_ptr<SharedSignal> signal_create();
  virtual std::unique_ptr<SharedSignal> signal_open(std::span<const uint8_t> handle);
  // One hop through a shared slot: queues a wait until `after` has been recorded `count` times
  // (after.wait(count)), a copy of `bytes` from src to dst (either may be shared memory), then
  // done.record(). The default queues the three; a device may fuse them (CUDA: one kernel that
  // polls and stores the memory flags itself, for small copies).
  virtual void share_copy(void* dst, const void* src, size_t bytes, SharedSignal& after,
                          uint64_t count, SharedSignal& done);
  // A ring over `slots` (waits[i] and dones[i]: slot i's signals, as share_copy's `after` and
  // `done`), or null where the device cannot sequence hops itself (the default; CUDA without
  // memory flags, or RWKVPP_SHARE_KERNEL=0).
  virtual std::unique_ptr<SharedRing> share_ring(bool receive, std::span<SharedBuffer* const> slots,
                                                 std::span<SharedSignal* const> waits,
                                                 std::span<SharedSignal* const> dones);

  // Makes the segment table visible to the device; the returned table stays valid until the
  // next call. `segs` must outlive the returned table (its host span points into it).
  virtual SegTable stage_segments(std::span<const Segment> segs) = 0;

  // Stores a weight matrix [rows, cols] (host tensor of any dtype) in backend memory as
  // `want` (the backend may choose a different internal layout; only this backend reads it).
  // want == I8 quantises on the host (kernels/quantize.h) and stores q, then the row scales,
  // in the one owner buffer.
  virtual WeightView load_weight(const HostTensor& t, DType want, std::unique_ptr<DeviceBuffer>& owner);

  // ---- floors, measured on this device for benchmarks (never datasheet numbers) ------------
  // Copy bandwidth in GB/s, counting bytes read plus bytes written, from a large copy().
  virtual double measure_copy_GBps();
  // Bandwidth in GB/s of reading a large buffer the way a decode step reads its weights: the
  // batch-1 floor. The default is measure_copy_GBps() (on GPUs a streaming copy reaches what a
  // streaming read does); the CPU reads with all of its threads.
  virtual double measure_read_GBps();
  // Dense matrix-product rate in TFLOP/s with `dtype` weights, at a size that fills the device,
  // through the backend's fastest GEMM (the default times matmul()).
  virtual double measure_gemm_TFLOPs(DType dtype);

  // ---- ops (see conventions above) ---------------------------------------------------------
  // y[i, :] = (x[i, :] - mean) / sqrt(var + eps) * w + b, for i < n. y may alias x.
  virtual void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n,
                          int64_t d, float eps) = 0;

  // Group norm over heads: for each token and head h, normalises x[i, h*hs:(h+1)*hs], then
  // scales by w and shifts by b (w, b of width H*hs). y may alias x.
  virtual void group_norm(const float* x, const float* w, const float* b, float* y, int64_t n,
                          int64_t n_head, int64_t head_size, float eps) = 0;

  // y[n, W.rows] = x[n, W.cols] * W^T, accumulated in fp32. y must not alias x. Every weight
  // dtype, int8 included.
  virtual void matmul(const WeightView& W, const float* x, float* y, int64_t n) = 0;

  // y[i, :] = E[ids[i], :] as fp32, for i < n; `ids` is host memory, each < E.rows. E is fp32,
  // fp16 or bf16 (the embedding is never quantised).
  virtual void embedding(const WeightView& E, const int32_t* ids, int64_t n, float* y) = 0;

  // y[j, :] = x[rows[j], :] for j < m; `rows` is host memory.
  virtual void gather_rows(const float* x, const int32_t* rows, int64_t m, int64_t d, float* y) = 0;

  // Token shift. For each segment s and token t of it:
  //   prev[t] = (t == s.start) ? state[s.slot * stride + off .. + d] : x[t - 1]
  // then state[s.slot * stride + off ..] = x[s.start + s.len - 1]. prev must not alias x.
  virtual void token_shift(const float* x, int64_t d, const SegTable& segs, float* state,
                           int64_t stride, int64_t off, float* prev) = 0;

  // y = x * mu + prev * (1 - mu), mu broadcast over the n rows (width d). y may alias x.
  virtual void mix(const float* x, const float* prev, const float* mu, float* y, int64_t n,
                   int64_t d) = 0;

  virtual void unary(Unary op, const float* x, float* y, int64_t count) = 0;  // y may alias x
  virtual void binary(Binary op, const float* a, const float* b, float* y, int64_t count) = 0;
  // y[i, :] = op(a[i, :], v) with v of width d broadcast over the n rows.
  virtual void binary_row(Binary op, const float* a, const float* v, float* y, int64_t n,
                          int64_t d) = 0;

  // RWKV-4 WKV over the batch, per segment in time order (DESIGN.md, Numerics).
  //   k, v, out: [n_tokens, d]; w = -exp(time_decay), u = time_first: [d].
  //   state: per slot, aa, bb, pp at offsets off_aa, off_aa + d, off_aa + 2d (stride floats apart).
  virtual void wkv4(const float* k, const float* v, const float* w, const float* u,
                    const SegTable& segs, float* state, int64_t stride, int64_t off_aa,
                    float* out, int64_t d) = 0;

  // RWKV-5/6 WKV (per head h of size N; i = key channel, j = value channel):
  //   out[t, h, j] = sum_i r[t,h,i] * (u[h,i] * k[t,h,i] * v[t,h,j] + S[h,i,j])
  //   S[h,i,j]     = S[h,i,j] * w[h,i] + k[t,h,i] * v[t,h,j]
  // w is the decay factor in (0, 1) already (exp(-exp(raw))): [H*N] when w_per_token is false,
  // [n_tokens, H*N] when true (RWKV-6). u: [H*N]. S at state + slot*stride + off, [H, N, N].
  virtual void wkv5(const float* r, const float* k, const float* v, const float* w,
                    bool w_per_token, const float* u, const SegTable& segs, float* state,
                    int64_t stride, int64_t off, float* out, int64_t n_head, int64_t head_size) = 0;

  // RWKV-7 WKV, the generalised delta rule (per head; S[j, i], j = value row, i = key column):
  //   S = S * diag(w_t) + (S a_t) b_t^T + v_t k_t^T;  out_t = S r_t
  // r, w, k, v, a, b, out: [n_tokens, H*N]; w is the decay factor in (0, 1).
  virtual void wkv7(const float* r, const float* w, const float* k, const float* v,
                    const float* a, const float* b, const SegTable& segs, float* state,
                    int64_t stride, int64_t off, float* out, int64_t n_head, int64_t head_size) = 0;

  // ---- fused forms of the op sequences every block runs (optional) ------------------------
  // Decoding is bound by kernel count as much as by bytes: these let a device run a sequence
  // of ops as one. The defaults run the plain ops in the documented order, so results on
  // backends that keep them are the plain ops' results, bit for bit.

  // layer_norm(x -> xln), token_shift(xln -> prev, through the state), then for j < nmix:
  //   mix(xln, prev, mu[j] -> out[j]).  nmix is 1..kMaxMixes. xln and prev ([n, d]) are scratch: their
  // contents afterwards are unspecified. out[j] must not alias x, xln or prev.
  static constexpr int kMaxMixes = 6;  // RWKV-7's r, w, k, v, a, g
  virtual void norm_shift_mix(const float* x, const float* w, const float* b, float eps, int64_t n,
                              int64_t d, const SegTable& segs, float* state, int64_t stride,
                              int64_t off, const float* const* mu, float* const* out, int nmix,
                              float* xln, float* prev);

  // What matmul_ex does with v = x W^T, elementwise over [n, W.rows]: v = act(v) when has_act
  // (Sigmoid, Tanh or ReluSquare), v = gate * v when gate is given ([n, W.rows]), then y = y + v
  // when accumulate, else y = v.
  struct Epilogue {
    bool has_act = false;
    Unary act = Unary::Sigmoid;
    const float* gate = nullptr;
    bool accumulate = false;
  };
  // matmul with an epilogue. `scratch` ([n, W.rows] floats of backend memory, not aliasing x,
  // y or gate) is needed when accumulate is set; the default runs matmul, unary, binary(Mul,
  // gate, v), binary(Add, y, v) in that order.
  virtual void matmul_ex(const WeightView& W, const float* x, float* y, int64_t n,
                         const Epilogue& ep, float* scratch);
  // matmul_ex over relu(x)^2 instead of x (the FFN value product of RWKV-4/5/6, whose input is
  // the key product's relu^2): x ([n, W.cols]) may be overwritten. The default squares x in
  // place, then runs matmul_ex; a device may fold the activation into its product instead
  // (folds_relu_square_x tells the callers when, so that the key product leaves it out).
  virtual void matmul_ex_relu_square_x(const WeightView& W, float* x, float* y, int64_t n,
                                       const Epilogue& ep, float* scratch);
  virtual bool folds_relu_square_x(const WeightView& W, int64_t n) const;

  // Up to kMaxGroupJobs independent products with the same token count (any shapes):
  // y[i] = matmul_ex(W[i], x[i], ep[i]) for i < count, none accumulating. The default runs them
  // one after another; a device may run them as one launch (RWKV-4's k, v, r; FFN key and
  // receptance; RWKV-7's seven products of the time mix's input, then its four low-rank
  // second factors).
  struct MatmulJob {
    const WeightView* W;
    const float* x;
    float* y;
    Epilogue ep;
  };
  static constexpr int kMaxGroupJobs = 8;
  virtual void matmul_group(const MatmulJob* jobs, int count, int64_t n);

  // wkv4, then out = gate * out (elementwise over [n_tokens, d]; RWKV-4's sigmoid(r) gate).
  virtual void wkv4_gated(const float* k, const float* v, const float* w, const float* u,
                          const SegTable& segs, float* state, int64_t stride, int64_t off_aa,
                          float* out, int64_t d, const float* gate);

  // RWKV-7's time mix between its products and its output product (kernels/rwkv7.cpp), per
  // token over [n, C] rows (C = H * N), vectors [C]:
  //   w = exp(neg_decay * sigmoid(w0 + w_raw));  a = sigmoid(a0 + a_raw)
  //   kk = head_l2_normalize(k_raw * k_k, l2_eps);  k = mix(k_raw * a, k_raw, k_a)
  //   first layer: v_first = v;  otherwise v = lerp(v, v_first, sigmoid(v0 + v_raw))
  //   wkv7(r, w, k, v, -kk, kk * a) through the state (S at off), then
  //   out = g * (group_norm(wkv, lnx_w, lnx_b, gn_eps) + head_dot(r, k, r_k) v)
  // neg_decay and neg_one are [C] vectors of -exp(-0.5) and -1 (the default composes plain
  // ops, which take vectors). w_raw, k_raw, a_raw, v and v_raw (always [n, C] of backend memory,
  // on the first layer only scratch) are overwritten; kk is scratch. The
  // default runs the plain ops in that order (results bit for bit those of the ops); a device
  // may run it all as one kernel.
  struct Rwkv7Mix {
    const float* r = nullptr;
    float *w_raw = nullptr, *k_raw = nullptr, *a_raw = nullptr, *v = nullptr, *v_raw = nullptr;
    const float* g = nullptr;
    float* v_first = nullptr;  // [n, C]: written on the first layer, read on the others
    bool first_layer = false;  // v_raw and v0 unused when set
    const float *w0 = nullptr, *a0 = nullptr, *k_k = nullptr, *k_a = nullptr, *v0 = nullptr;
    const float *r_k = nullptr, *lnx_w = nullptr, *lnx_b = nullptr;
    const float *neg_decay = nullptr, *neg_one = nullptr;
    float l2_eps = 1e-12f, gn_eps = 64e-5f;
    float* kk = nullptr;  // [n, C] scratch
    float* out = nullptr;  // [n, C]
  };
  virtual void rwkv7_mix(const Rwkv7Mix& p, const SegTable& segs, float* state, int64_t stride,
                         int64_t off, int64_t n, int64_t n_head, int64_t head_size);

  // ---- ops added for RWKV-5/6/7 (kernels/rwkv5.cpp, rwkv6.cpp, rwkv7.cpp) ------------------
  // Elementwise interpolation with a per-element weight, for i < count:
  //   y[i] = a[i] + (b[i] - a[i]) * m[i]
  // y may alias a, b or m. (RWKV-6's data-dependent token shift: a = x, b = prev,
  // m = maa + lora(x); RWKV-7's value residual: a = v, b = v_first, m = sigmoid(...).)
  virtual void lerp(const float* a, const float* b, const float* m, float* y, int64_t count) = 0;

  // Per-head L2 normalisation, for each token i < n and head h < n_head (N = head_size):
  //   y[i, h*N + j] = x[i, h*N + j] / max(sqrt(sum_l x[i, h*N + l]^2), eps)
  // x, y: [n, n_head*N]. y may alias x. (torch.nn.functional.normalize; RWKV-7's
  // kk = normalize(k * k_k) per head with eps = 1e-12.)
  virtual void head_l2_normalize(const float* x, float* y, int64_t n, int64_t n_head,
                                 int64_t head_size, float eps) = 0;

  // Per-head weighted dot product scaling a vector, accumulated into y, for each token i < n,
  // head h < n_head and j < N (N = head_size):
  //   y[i, h*N + j] += (sum_l a[i, h*N + l] * b[i, h*N + l] * w[h*N + l]) * c[i, h*N + j]
  // a, b, c, y: [n, n_head*N]; w: [n_head*N], broadcast over the n rows. y must not alias a,
  // b or c. (RWKV-7's bonus term: a = r, b = k, w = r_k, c = v.)
  virtual void head_dot_add(const float* a, const float* b, const float* w, const float* c,
                            float* y, int64_t n, int64_t n_head, int64_t head_size) = 0;

  // ---- greedy sampling on the device (optional; the default downloads the logits) ----------
  // For each row r < m of logits [m, vocab] (backend memory, fp32), with NaN counted as -inf:
  //   host_ids[r] = argmax, the lowest id among equal maxima; -1 when every logit is NaN or -inf;
  //   host_logprobs[r] (when host_logprobs is non-null) = the log-softmax of that id at
  //     temperature 1, as sample_token (kernels/sampling.h) computes it: in double,
  //     float(m - (m + log(sum_i exp(z_i - m)))) with m the maximum.
  // host_ids and host_logprobs are host memory; the call returns when they are written. Only the
  // m ids (and logprobs) travel to the host on devices that implement it; the default
  // implementation downloads the whole [m, vocab] block and reduces it on the host.
  virtual void argmax_rows(const float* logits, int64_t m, int64_t vocab, int32_t* host_ids,
                           float* host_logprobs);
  // The same, queued: host_out (host memory, best from alloc_host) receives [m] int32 ids then
  // [m] fp32 logprobs once a fence() recorded after this call has completed. The default runs
  // argmax_rows at once.
  virtual void argmax_rows_async(const float* logits, int64_t m, int64_t vocab, void* host_out);

  // ---- recorded op sequences (optional; the default records nothing) -----------------------
  // On devices that queue work (CUDA graphs), the ops issued between graph_begin(key) and
  // graph_end(key) are recorded instead of run; graph_end runs the recording once and keeps it,
  // and graph_launch(key) replays it. A recording bakes in every pointer, size and count its
  // ops were given, so the caller's key must cover them all. Between begin and end the caller
  // must not allocate, free, upload or download; data that changes between replays (the
  // segment table: stage_segments before graph_launch) must sit at the same device address and
  // be staged before the launch. Any free() drops every recording (its pointers may be stale).
  //   graph_begin: false when the backend does not record (run the ops normally, no graph_end).
  //   graph_launch: false when there is no recording for `key`.
  //   graph_cancel: ends a recording that failed part-way (an op threw); keeps nothing.
  virtual bool graph_begin(uint64_t key);
  virtual void graph_end(uint64_t key);
  virtual bool graph_launch(uint64_t key);
  virtual void graph_cancel();
};

// Scratch activations for one forward pass, grown on demand and reused between steps.
class Workspace {
 public:
  explicit Workspace(Backend& be) : be_(be) {}
  // Buffer number `id` with room for at least `floats` fp32 values. Pointers stay valid until
  // the same id is requested larger.
  float* get(int id, size_t floats);

 private:
  Backend& be_;
  std::vector<std::unique_ptr<DeviceBuffer>> bufs_;
};

// The CPU backend (always available). `threads` <= 0 means all cores.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

// The CUDA backend for device `device`; throws Error when CUDA was not built or no GPU exists.
std::unique_ptr<Backend> make_cuda_backend(int device);
bool cuda_available();     // built with CUDA and at least one device present
int cuda_device_count();   // 0 when not built with CUDA

}  // namespace rwkvpp
