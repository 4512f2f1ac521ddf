#include "kernels/cpu/host_memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace rwkvpp::cpu {
namespace {

// Each buffer is preceded by a 64-byte header: its mapped size, or 0 for a heap block.
constexpr size_t kHeader = 64;
constexpr size_t kMapAt = size_t(1) << 20;  // buffers from 1 MiB up get pages of their own
constexpr size_t kHugePage = size_t(2) << 20;

}  // namespace

void* host_alloc(size_t bytes) {
  const size_t total = bytes + kHeader;
  uint8_t* base;
  size_t mapped = 0;
  if (total >= kMapAt) {
    mapped = (total + 4095) / 4096 * 4096;
    void* m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) fail("out of host memory: cannot map {} bytes", bytes);
    if (mapped >= kHugePage) madvise(m, mapped, MADV_HUGEPAGE);  // advice only: may be refused
    base = static_cast<uint8_t*>(m);
  } else {
    base = static_cast<uint8_t*>(std::aligned_alloc(kHeader, (total + kHeader - 1) / kHeader * kHeader));
    if (!base) fail("out of host memory allocating {} bytes", bytes);
    std::memset(base, 0, total);
  }
  std::memcpy(base, &mapped, sizeof mapped);
  return base + kHeader;
}

void host_free(void* p) noexcept {
  if (!p) return;
  uint8_t* base = static_cast<uint8_t*>(p) - kHeader;
  size_t mapped;
  std::memcpy(&mapped, base, sizeof mapped);
  if (mapped) munmap(base, mapped);
  else std::free(base);
}

}  // namespace rwkvpp::cpu
