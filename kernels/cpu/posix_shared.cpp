#include "kernels/cpu/posix_shared.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "common/error.h"

namespace rwkvpp::cpu {
namespace {

class PosixShared final : public SharedBuffer {
 public:
  PosixShared(std::string name, void* p, size_t bytes, bool owner)
      : name_(std::move(name)), p_(p), bytes_(bytes), owner_(owner), handle_(name_.begin(), name_.end()) {}
  ~PosixShared() override {
    munmap(p_, bytes_);
    unlink();
  }
  void* data() const override { return p_; }
  size_t bytes() const override { return bytes_; }
  const std::vector<uint8_t>& handle() const override { return handle_; }
  void unlink() override {
    if (owner_) shm_unlink(name_.c_str());
    owner_ = false;
  }

 private:
  std::string name_;
  void* p_;
  size_t bytes_;
  bool owner_;
  std::vector<uint8_t> handle_;
};

void* map(int fd, size_t bytes, const std::string& name) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) fail("shared memory {}: mmap of {} bytes failed: {}", name, bytes, std::strerror(err));
  return p;
}

class HostSignal final : public SharedSignal {
 public:
  void record() override {}
  void wait(uint64_t) override {}
  const std::vector<uint8_t>& handle() const override { return handle_; }

 private:
  std::vector<uint8_t> handle_;
};

}  // namespace

std::unique_ptr<SharedBuffer> posix_share_alloc(size_t bytes) {
  static std::atomic<int> counter{0};
  const std::string name = "/rwkvpp-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) fail("shared memory {}: cannot create it: {}", name, std::strerror(errno));
  const size_t n = std::max<size_t>(bytes, 1);
  if (ftruncate(fd, off_t(n)) != 0) {
    const int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    fail("shared memory {}: cannot size it to {} bytes: {}", name, n, std::strerror(err));
  }
  void* p;
  try {
    p = map(fd, n, name);
  } catch (...) {
    shm_unlink(name.c_str());
    throw;
  }
  return std::make_unique<PosixShared>(name, p, n, true);  // ftruncate zero-fills
}

std::unique_ptr<SharedBuffer> posix_share_open(std::span<const uint8_t> handle, size_t bytes) {
  const std::string name(handle.begin(), handle.end());
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos)
    fail("shared memory: '{}' is not a shared memory name", name);
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) fail("shared memory {}: cannot open it: {}", name, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || size_t(st.st_size) < bytes) {
    close(fd);
    fail("shared memory {}: holds {} bytes, {} needed", name, int64_t(st.st_size), bytes);
  }
  const size_t n = std::max<size_t>(bytes, 1);
  return std::make_unique<PosixShared>(name, map(fd, n, name), n, false);
}

std::unique_ptr<SharedSignal> host_signal() { return std::make_unique<HostSignal>(); }

}  // namespace rwkvpp::cpu
