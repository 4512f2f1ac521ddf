// Memory and signals shared with another process on the same host (Backend::share_alloc,
// share_open, signal_create, signal_open for CUDA): IPC memory handles, opened with peer
// access enabled (the peer's GPU is reached over NVLink or PCIe, not through the host), and
// signals that one process records on its stream and the other's stream waits for: a counter
// in the creator's GPU memory (worker/shared_ring creates each on the side that waits for it),
// written with cuStreamWriteValue32 and waited for with cuStreamWaitValue32 by the GPU's front
// end (where the driver has stream memory operations), else an interprocess event
// (RWKVPP_SHARE_SIGNAL=event forces events). share_copy_fused() does a hop's wait, copy and
// record in one kernel that polls and stores the counters itself.
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

// Backend::share_copy in one kernel on `s`, where `after` and `done` are memory flags, bytes is
// a multiple of 4 and at most share_fused_max() (RWKVPP_SHARE_KERNEL=0: never): one thread polls
// `after`'s counter until it reaches `count` (before griddepcontrol.wait: the peer writes it,
// not a kernel of this stream), the block copies, fences, and one thread stores `done`'s next
// count (st.release.sys). Returns false, queueing nothing, where it does not apply.
bool share_copy_fused(cudaStream_t s, void* dst, const void* src, size_t bytes, SharedSignal& after,
                      uint64_t count, SharedSignal& done);

// Backend::share_ring: a ring whose hops of up to 64 KiB are one kernel each, sequenced by the
// device (kernels/cuda/ipc.cu); null unless every signal is a memory flag and
// RWKVPP_SHARE_KERNEL is not 0.
std::unique_ptr<SharedRing> ipc_ring(int device, cudaStream_t s, bool receive,
                                     std::span<SharedBuffer* const> slots,
                                     std::span<SharedSignal* const> waits,
                                     std::span<SharedSignal* const> dones);

}  // namespace rwkvpp::cuda
