// Memory and signals shared with another process on the same host (Backend::share_alloc,
// share_open, signal_create, signal_open for CUDA): IPC memory handles, opened with peer
// access enabled (the peer's GPU is reached over NVLink or PCIe, not through the host), and
// signals that one process records on its stream and the other's stream waits for: a counter
// in the recorder's GPU memory, written with cuStreamWriteValue32 and waited for with
// cuStreamWaitValue32 by the other GPU's front end (where the driver has stream memory
// operations), else an interprocess event (RWKVPP_SHARE_SIGNAL=event forces events).
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <span>

#include "kernels/backend.h"

namespace rwkvpp::cuda {

std::unique_ptr<SharedBuffer> ipc_alloc(int device, size_t bytes, cudaStream_t s);
std::unique_ptr<SharedBuffer> ipc_open(int device, std::span<const uint8_t> handle, size_t bytes);
std::unique_ptr<SharedSignal> ipc_signal_create(int device, cudaStream_t s);
std::unique_ptr<SharedSignal> ipc_signal_open(int device, std::span<const uint8_t> handle, cudaStream_t s);

}  // namespace rwkvpp::cuda
