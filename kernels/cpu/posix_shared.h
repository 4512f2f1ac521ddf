// Shared memory between processes of one host for the CPU backend (Backend::share_alloc and
// share_open): POSIX shared memory objects named /rwkvpp-PID-N, mapped read-write. The creator
// removes the name once its peer has opened it (SharedBuffer::unlink) or when destroyed; the
// mapping stays valid in both processes until each lets go.
#pragma once

#include <memory>
#include <span>

#include "kernels/backend.h"

namespace rwkvpp::cpu {

std::unique_ptr<SharedBuffer> posix_share_alloc(size_t bytes);
std::unique_ptr<SharedBuffer> posix_share_open(std::span<const uint8_t> handle, size_t bytes);
// Signals that order nothing: a CPU backend has finished its work when its call returns.
std::unique_ptr<SharedSignal> host_signal();

}  // namespace rwkvpp::cpu
