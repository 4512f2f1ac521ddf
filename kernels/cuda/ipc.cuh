// Memory and events shared with another process on the same host (Backend::share_alloc,
// share_open, signal_create, signal_open for CUDA): IPC memory handles, opened with peer
// access enabled (the peer's GPU is reached over NVLink or PCIe, not through the host), and
// interprocess events that one process records on its stream and the other's stream waits for.
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
