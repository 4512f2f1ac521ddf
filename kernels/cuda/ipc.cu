#include "kernels/cuda/ipc.cuh"

#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_common.cuh"

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

class IpcSignal final : public SharedSignal {
 public:
  IpcSignal(int device, cudaEvent_t e, cudaStream_t s, std::vector<uint8_t> handle)
      : device_(device), ev_(e), s_(s), handle_(std::move(handle)) {}
  ~IpcSignal() override {
    cudaSetDevice(device_);
    cudaEventDestroy(ev_);
  }
  void record() override { RWKVPP_CUDA_CHECK(cudaEventRecord(ev_, s_)); }
  void wait() override { RWKVPP_CUDA_CHECK(cudaStreamWaitEvent(s_, ev_, 0)); }
  const std::vector<uint8_t>& handle() const override { return handle_; }

 private:
  int device_;
  cudaEvent_t ev_;
  cudaStream_t s_;
  std::vector<uint8_t> handle_;
};

}  // namespace

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
  cudaEvent_t e;
  RWKVPP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventInterprocess));
  cudaIpcEventHandle_t h;
  const cudaError_t err = cudaIpcGetEventHandle(&h, e);
  if (err != cudaSuccess) {
    cudaEventDestroy(e);
    fail_msg("cuda:" + std::to_string(device) + ": no IPC handle for an event: " + cudaGetErrorString(err));
  }
  return std::make_unique<IpcSignal>(device, e, s, bytes_of(&h, sizeof h));
}

std::unique_ptr<SharedSignal> ipc_signal_open(int device, std::span<const uint8_t> handle, cudaStream_t s) {
  cudaIpcEventHandle_t h;
  if (handle.size() != sizeof h) fail_msg("cuda:" + std::to_string(device) + ": an IPC event handle has " + std::to_string(handle.size()) + " bytes, not " + std::to_string(sizeof h));
  std::memcpy(&h, handle.data(), sizeof h);
  RWKVPP_CUDA_CHECK(cudaSetDevice(device));
  cudaEvent_t e;
  const cudaError_t err = cudaIpcOpenEventHandle(&e, h);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail_msg("cuda:" + std::to_string(device) + ": cannot open the peer's IPC event: " + cudaGetErrorString(err));
  }
  return std::make_unique<IpcSignal>(device, e, s, std::vector<uint8_t>(handle.begin(), handle.end()));
}

}  // namespace rwkvpp::cuda
