// Host memory for the CPU backend's buffers (weights, state, activations): zero-filled, 64-byte
// aligned. Large buffers are mapped pages of their own (returned to the system when freed, and
// advised as transparent huge pages: weights are streamed every step, and 2 MiB pages cut the
// TLB misses of that stream), so loading a model leaves no freed conversion buffers behind in
// the allocator's heap and a stage's resident memory stays close to its weight bytes.
#pragma once

#include <cstddef>

namespace rwkvpp::cpu {

void* host_alloc(size_t bytes);      // throws Error when out of memory
void host_free(void* p) noexcept;    // p from host_alloc, or null

}  // namespace rwkvpp::cpu
