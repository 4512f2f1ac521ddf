// Read-only whole-file memory maps with bounds-checked access (see mapped_file.h).
#include "shards/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace rwkvpp {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail("cannot stat '{}': {}", path, std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("'{}' is not a regular file", path);
  }
  size_ = uint64_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail("cannot map '{}' ({} bytes): {}", path, size_, std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
    mapped_ = true;
    ::madvise(p, size_, MADV_SEQUENTIAL);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::MappedFile(std::span<const uint8_t> bytes, std::string name)
    : path_(std::move(name)), data_(bytes.data()), size_(bytes.size()) {}

MappedFile::~MappedFile() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::span<const uint8_t> MappedFile::bytes(uint64_t offset, uint64_t n,
                                           std::string_view what) const {
  if (!contains(offset, n))
    fail(
        "'{}': {} at offset {} ({} bytes) runs past the end of the file ({} bytes); "
        "truncated or corrupt?",
        path_, what, offset, n, size_);
  return {data_ + offset, size_t(n)};
}

void MappedFile::release(uint64_t offset, uint64_t n) const {
  if (!mapped_ || !contains(offset, n) || n == 0) return;
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  uint64_t begin = (offset + page - 1) / page * page, end = (offset + n) / page * page;
  if (end > begin) ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

}  // namespace rwkvpp
