#include <cudaTypedefs.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/env_options.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/ipc.cuh"

namespace rwkvpp::cuda {
namespace {

std::vector<uint8_t> bytes_of(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  return std::vector<uint8_t>(b, b + n);
}

class IpcBuffer final : public SharedBuffer {
 public:
  IpcBuffer(int device, void* p, size_t bytes, bool owner, std::vector<uint8_t> handle)
      : device_(device), p_(p), bytes_(bytes), owner_(owner), handle_(std::move(handle)) {}
  ~IpcBuffer() override {
    cudaSetDevice(device_);
    if (owner_) cudaFree(p_);
    else cudaIpcCloseMemHandle(p_);
  }
  void* data() const override { return p_; }
  size_t bytes() const override { return bytes_; }
  const std::vector<uint8_t>& handle() const override { return handle_; }

 private:
  int device_;
  void* p_;
  size_t bytes_;
  bool owner_;
  std::vector<uint8_t> handle_;
};

// The first byte of a signal's handle says its kind; the rest is the kind's IPC handle.
constexpr uint8_t kEventSignal = 'E', kFlagSignal = 'F';

// An interprocess event: record() records it on the stream, wait() makes the stream wait for
// its last recording (the count is implied).
class IpcSignal final : public SharedSignal {
 public:
  IpcSignal(int device, cudaEvent_t e, cudaStream_t s, std::vector<uint8_t> handle)
      : device_(device), ev_(e), s_(s), handle_(std::move(handle)) {}
  ~IpcSignal() override {
    cudaSetDevice(device_);
    cudaEventDestroy(ev_);
  }
  void record() override { RWKVPP_CUDA_CHECK(cudaEventRecord(ev_, s_)); }
  void wait(uint64_t count) override {
    if (count > 0) RWKVPP_CUDA_CHECK(cudaStreamWaitEvent(s_, ev_, 0));
  }
  const std::vector<uint8_t>& handle() const override { return handle_; }

 private:
  int device_;
  cudaEvent_t ev_;
  cudaStream_t s_;
  std::vector<uint8_t> handle_;
};

// Stream memory operations of the driver (cuStreamWriteValue32 / cuStreamWaitValue32), found
// through the runtime so that nothing links libcuda directly; null where the driver lacks them.
struct MemOps {
  PFN_cuStreamWriteValue32_v11070 write = nullptr;
  PFN_cuStreamWaitValue32_v11070 wait = nullptr;
};
const MemOps& memops() {
  static const MemOps m = [] {
    MemOps r;
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuStreamWriteValue32", &p, 12000, cudaEnableDefault, &q) ==
            cudaSuccess && q == cudaDriverEntryPointSuccess)
      r.write = reinterpret_cast<PFN_cuStreamWriteValue32_v11070>(p);
    if (cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &p, 12000, cudaEnableDefault, &q) ==
            cudaSuccess && q == cudaDriverEntryPointSuccess)
      r.wait = reinterpret_cast<PFN_cuStreamWaitValue32_v11070>(p);
    cudaGetLastError();
    if (!r.write || !r.wait) r = MemOps{};
    return r;
  }();
  return m;
}

// A counter in GPU memory (the creator's, mapped by the other side through CUDA IPC: the
// SharedBuffer of ipc_alloc / ipc_open): record() writes the number of recordings so far from
// the stream, after every write queued before it (the driver's default memory barrier);
// wait(count) makes the stream wait until the counter reaches count (compared modulo 2^32).
// Waiting is done by the GPU's front end, not a kernel.
class FlagSignal final : public SharedSignal {
 public:
  FlagSignal(int device, std::unique_ptr<SharedBuffer> mem, cudaStream_t s,
             std::vector<uint8_t> handle, bool own)
      : device_(device), mem_(std::move(mem)), s_(s), handle_(std::move(handle)), own_(own) {}
  // A flag in this process's memory is waited for here and recorded by the peer: if the peer
  // is gone, a wait still queued would hold the device forever, and with it the frees and
  // synchronisations of teardown. So release_waits() (and the destructor) moves the flag past
  // every count waited for (from another queue, which the waiting one does not block); the
  // waits end, their copies run on and nothing is lost that was not already lost with the peer.
  ~FlagSignal() override { release_waits(); }
  void release_waits() override {
    if (!own_ || waited_ == 0) return;
    cudaSetDevice(device_);
    const uint32_t past = waited_ + (1u << 30);
    cudaStream_t q;
    if (cudaStreamCreateWithFlags(&q, cudaStreamNonBlocking) != cudaSuccess) return;
    cudaMemcpyAsync(word(), &past, sizeof past, cudaMemcpyHostToDevice, q);
    cudaStreamSynchronize(q);
    cudaStreamDestroy(q);
  }
  void record() override {
    check(memops().write(s_, flag(), ++count_, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32");
  }
  void wait(uint64_t count) override {
    if (count == 0) return;
    check(memops().wait(s_, flag(), note_wait(count), CU_STREAM_WAIT_VALUE_GEQ),
          "cuStreamWaitValue32");
  }
  const std::vector<uint8_t>& handle() const override { return handle_; }
  // For a kernel that records it: counts the recording and returns the value to store.
  uint32_t next_count() { return ++count_; }
  // For a kernel that waits for it: the count as the kernel compares it (modulo 2^32).
  uint32_t note_wait(uint64_t count) {
    if (int32_t(uint32_t(count) - waited_) > 0) waited_ = uint32_t(count);
    return uint32_t(count);
  }
  uint32_t* word() const { return static_cast<uint32_t*>(mem_->data()); }
  void device_waited(uint64_t count) override { note_wait(count); }
  void device_recorded() override { ++count_; }

 private:
  CUdeviceptr flag() const { return reinterpret_cast<CUdeviceptr>(mem_->data()); }
  void check(CUresult r, const char* what) const {
    if (r != CUDA_SUCCESS)
      fail_msg("cuda:" + std::to_string(device_) + ": " + what + " on a shared signal failed (driver error " +
               std::to_string(int(r)) + ")");
  }
  int device_;
  std::unique_ptr<SharedBuffer> mem_;
  cudaStream_t s_;
  std::vector<uint8_t> handle_;
  bool own_;             // created here, so waited for here
  uint32_t count_ = 0;   // recordings made here
  uint32_t waited_ = 0;  // the highest count waited for here
};

// Flags where the driver has the memory operations (measured ~14 us faster per hop than IPC
// events on 2 H200s, docs/perf.md), unless RWKVPP_SHARE_SIGNAL=event. The opening side follows
// the kind the creating side chose (the handle's first byte).
bool use_flags() {
  static const bool on = !env_options().cuda.share_events && memops().wait != nullptr;
  return on;
}

std::vector<uint8_t> tagged(uint8_t kind, const void* p, size_t n) {
  std::vector<uint8_t> v(1 + n);
  v[0] = kind;
  std::memcpy(v.data() + 1, p, n);
  return v;
}

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

constexpr int kShareThreads = 1024;

// The pieces of a hop kernel (one block): thread 0 polls a counter the peer writes until it
// reaches `want` (0: nothing to wait for); the block copies n words, 16 bytes at a time where
// both pointers allow, through L2 only (.cg: a slot's lines may sit in this SM's L1 from its
// last use), and fences them system-wide; then thread 0 stores the done counter.
__device__ __forceinline__ void spin_until(const uint32_t* word, uint32_t want) {
  if (want != 0)
    while (int32_t(load_acquire_sys(word) - want) < 0) {
    }
}

__device__ __forceinline__ void block_copy(uint32_t* __restrict__ dst,
                                           const uint32_t* __restrict__ src, unsigned n) {
  unsigned i = threadIdx.x;
  if (((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0) {
    const unsigned n4 = n / 4;
#pragma unroll 4
    for (; i < n4; i += kShareThreads)
      __stcg(reinterpret_cast<uint4*>(dst) + i, __ldcg(reinterpret_cast<const uint4*>(src) + i));
    i = n4 * 4 + threadIdx.x;
  }
  for (; i < n; i += kShareThreads) __stcg(dst + i, __ldcg(src + i));
  __threadfence_system();
  __syncthreads();
}

__global__ void __launch_bounds__(kShareThreads)
    share_copy_kernel(uint32_t* __restrict__ dst, const uint32_t* __restrict__ src, unsigned n,
                      const uint32_t* after, uint32_t count, uint32_t* done, uint32_t done_value) {
  if (threadIdx.x == 0) spin_until(after, count);
  __syncthreads();
  pdl_begin();
  block_copy(dst, src, n);
  if (threadIdx.x == 0) store_release_sys(done, done_value);
}

size_t share_fused_max() { return env_options().cuda.share_kernel ? size_t(64) << 10 : size_t(0); }

// A ring's hop (SharedRing): which slot, and how many hops each slot has seen, are read from
// `state` in device memory ([0] next slot, [1 + i] hops through slot i) and advanced by the hop
// itself, so that one launch, recorded once, serves every step. The state is read before
// griddepcontrol.wait: the ring's previous operation wrote it, and it ran at least two launches
// earlier on this stream (a stage's layers lie between two hops of a ring), so it has completed
// (a kernel starts only once its predecessor passed its own wait, i.e. once the kernel before
// that one completed). One block, as share_copy_kernel: hops of up to share_fused_max() bytes.
constexpr int kRingMax = 4;
struct RingArgs {
  uint32_t* slots[kRingMax];
  const uint32_t* waits[kRingMax];
  uint32_t* dones[kRingMax];
  uint32_t* state;
  unsigned n_slots;
  unsigned receive;  // 1: slot -> local, after the (u + 1)-th write; 0: local -> slot, after the
                     // u-th read
};

// Element `i` of a parameter array without indexing it by a variable (which would copy the
// whole parameter block to each thread's stack).
template <typename T>
__device__ __forceinline__ T pick(const T (&a)[kRingMax], unsigned i) {
  static_assert(kRingMax == 4);
  return i == 0 ? a[0] : i == 1 ? a[1] : i == 2 ? a[2] : a[3];
}

__global__ void __launch_bounds__(kShareThreads)
    ring_hop_kernel(RingArgs r, uint32_t* local, unsigned n) {
  __shared__ unsigned s_slot, s_u;
  __shared__ uint32_t* s_shared;
  if (threadIdx.x == 0) {
    const auto* st = static_cast<volatile uint32_t*>(r.state);
    const unsigned slot = st[0];
    const uint32_t u = st[1 + slot];
    spin_until(pick(r.waits, slot), u + r.receive);
    s_slot = slot;
    s_u = u;
    s_shared = pick(r.slots, slot);
  }
  __syncthreads();
  pdl_begin();
  const unsigned slot = s_slot;
  if (r.receive)
    block_copy(local, s_shared, n);
  else
    block_copy(s_shared, local, n);
  if (threadIdx.x == 0) {
    r.state[1 + slot] = s_u + 1;
    r.state[0] = (slot + 1) % r.n_slots;
    store_release_sys(pick(r.dones, slot), s_u + 1);
  }
}

// The host did a hop of the ring itself (a large copy through share_copy): the device's sequence
// moves past it.
__global__ void ring_advance_kernel(uint32_t* state, unsigned slot, uint32_t count,
                                    unsigned n_slots) {
  pdl_begin();
  state[1 + slot] = count;
  state[0] = (slot + 1) % n_slots;
}

class CudaRing final : public SharedRing {
 public:
  CudaRing(int device, cudaStream_t s, const RingArgs& a) : device_(device), s_(s), args_(a) {}
  ~CudaRing() override {
    cudaSetDevice(device_);
    cudaFree(args_.state);
  }
  bool takes(size_t bytes) const override { return bytes % 4 == 0 && bytes <= share_fused_max(); }
  void hop(void* local, size_t bytes) override {
    if (!takes(bytes))
      fail_msg("cuda:" + std::to_string(device_) + ": a shared ring's hop of " +
               std::to_string(bytes) + " bytes (the kernel takes multiples of 4 up to " +
               std::to_string(share_fused_max()) + ")");
    launch(ring_hop_kernel, dim3(1), dim3(kShareThreads), 0, s_, args_,
           static_cast<uint32_t*>(local), unsigned(bytes / 4));
  }
  void advance(int slot, uint64_t count) override {
    launch(ring_advance_kernel, dim3(1), dim3(1), 0, s_, args_.state, unsigned(slot),
           uint32_t(count), args_.n_slots);
  }

 private:
  int device_;
  cudaStream_t s_;
  RingArgs args_;
};

}  // namespace

std::unique_ptr<SharedRing> ipc_ring(int device, cudaStream_t s, bool receive,
                                     std::span<SharedBuffer* const> slots,
                                     std::span<SharedSignal* const> waits,
                                     std::span<SharedSignal* const> dones) {
  if (share_fused_max() == 0 || slots.empty() || slots.size() > size_t(kRingMax) ||
      waits.size() != slots.size() || dones.size() != slots.size())
    return nullptr;
  RingArgs a = {};
  for (size_t i = 0; i < slots.size(); ++i) {
    auto* w = dynamic_cast<FlagSignal*>(waits[i]);
    auto* d = dynamic_cast<FlagSignal*>(dones[i]);
    if (!w || !d) return nullptr;
    a.slots[i] = static_cast<uint32_t*>(slots[i]->data());
    a.waits[i] = w->word();
    a.dones[i] = d->word();
  }
  a.n_slots = unsigned(slots.size());
  a.receive = receive ? 1 : 0;
  RWKVPP_CUDA_CHECK(cudaSetDevice(device));
  RWKVPP_CUDA_CHECK(cudaMalloc(&a.state, (1 + kRingMax) * sizeof(uint32_t)));
  RWKVPP_CUDA_CHECK(cudaMemsetAsync(a.state, 0, (1 + kRingMax) * sizeof(uint32_t), s));
  RWKVPP_CUDA_CHECK(cudaStreamSynchronize(s));
  return std::make_unique<CudaRing>(device, s, a);
}

bool share_copy_fused(cudaStream_t s, void* dst, const void* src, size_t bytes, SharedSignal& after,
                      uint64_t count, SharedSignal& done) {
  auto* a = dynamic_cast<FlagSignal*>(&after);
  auto* d = dynamic_cast<FlagSignal*>(&done);
  if (!a || !d || bytes % 4 != 0 || bytes > share_fused_max()) return false;
  launch(share_copy_kernel, dim3(1), dim3(kShareThreads), 0, s, static_cast<uint32_t*>(dst),
         static_cast<const uint32_t*>(src), unsigned(bytes / 4), a->word(), a->note_wait(count),
         d->word(), d->next_count());
  return true;
}

std::unique_ptr<SharedBuffer> ipc_alloc(int device, size_t bytes, cudaStream_t s) {
  RWKVPP_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  RWKVPP_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  cudaIpcMemHandle_t h;
  const cudaError_t e = cudaIpcGetMemHandle(&h, p);
  if (e != cudaSuccess) {
    cudaFree(p);
    fail_msg("cuda:" + std::to_string(device) + ": no IPC handle for device memory: " + cudaGetErrorString(e));
  }
  RWKVPP_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s));
  RWKVPP_CUDA_CHECK(cudaStreamSynchronize(s));
  return std::make_unique<IpcBuffer>(device, p, bytes, true, bytes_of(&h, sizeof h));
}

std::unique_ptr<SharedBuffer> ipc_open(int device, std::span<const uint8_t> handle, size_t bytes) {
  cudaIpcMemHandle_t h;
  if (handle.size() != sizeof h) fail_msg("cuda:" + std::to_string(device) + ": an IPC memory handle has " + std::to_string(handle.size()) + " bytes, not " + std::to_string(sizeof h));
  std::memcpy(&h, handle.data(), sizeof h);
  RWKVPP_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  const cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
  if (e != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    fail_msg("cuda:" + std::to_string(device) + ": cannot open the peer's IPC memory: " + cudaGetErrorString(e));
  }
  return std::make_unique<IpcBuffer>(device, p, bytes, false, std::vector<uint8_t>(handle.begin(), handle.end()));
}

std::unique_ptr<SharedSignal> ipc_signal_create(int device, cudaStream_t s) {
  RWKVPP_CUDA_CHECK(cudaSetDevice(device));
  if (use_flags()) {
    auto mem = ipc_alloc(device, sizeof(uint32_t), s);  // zero-filled
    std::vector<uint8_t> h = tagged(kFlagSignal, mem->handle().data(), mem->handle().size());
    return std::make_unique<FlagSignal>(device, std::move(mem), s, std::move(h), true);
  }
  cudaEvent_t e;
  RWKVPP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventInterprocess));
  cudaIpcEventHandle_t h;
  const cudaError_t err = cudaIpcGetEventHandle(&h, e);
  if (err != cudaSuccess) {
    cudaEventDestroy(e);
    fail_msg("cuda:" + std::to_string(device) + ": no IPC handle for an event: " + cudaGetErrorString(err));
  }
  return std::make_unique<IpcSignal>(device, e, s, tagged(kEventSignal, &h, sizeof h));
}

std::unique_ptr<SharedSignal> ipc_signal_open(int device, std::span<const uint8_t> handle, cudaStream_t s) {
  const std::string dev = "cuda:" + std::to_string(device);
  const std::vector<uint8_t> kept(handle.begin(), handle.end());
  RWKVPP_CUDA_CHECK(cudaSetDevice(device));
  if (!handle.empty() && handle[0] == kFlagSignal) {
    if (!memops().wait) fail_msg(dev + ": the peer signals through memory flags, which this driver cannot wait on");
    return std::make_unique<FlagSignal>(
        device, ipc_open(device, handle.subspan(1), sizeof(uint32_t)), s, kept, false);
  }
  cudaIpcEventHandle_t h;
  if (handle.size() != 1 + sizeof h || handle[0] != kEventSignal) fail_msg(dev + ": an IPC event handle has " + std::to_string(handle.size()) + " bytes, not " + std::to_string(1 + sizeof h));
  std::memcpy(&h, handle.data() + 1, sizeof h);
  cudaEvent_t e;
  const cudaError_t err = cudaIpcOpenEventHandle(&e, h);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail_msg(dev + ": cannot open the peer's IPC event: " + cudaGetErrorString(err));
  }
  return std::make_unique<IpcSignal>(device, e, s, kept);
}

}  // namespace rwkvpp::cuda
