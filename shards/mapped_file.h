// A read-only memory map of a whole file, for the checkpoint readers: released checkpoints
// are tens of GB, so tensors are copied straight out of the mapping instead of reading the
// file into memory first. Every access goes through bytes(), which checks the range. It can
// also stand for bytes already in memory, so that every reader has one code path for both.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace rwkvpp {

class MappedFile {
 public:
  // Maps `path` read-only; throws Error naming the path when it cannot be opened or mapped.
  // An empty file maps to size() == 0.
  explicit MappedFile(const std::string& path);
  // A view of bytes already in memory (which must outlive it), called `name` in messages: the
  // readers' from-bytes entry points. Nothing is mapped, and release() does nothing.
  MappedFile(std::span<const uint8_t> bytes, std::string name);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

  // [offset, offset + n) of the file; throws Error naming the file and `what` when the range
  // runs past the end (a truncated or corrupt file).
  std::span<const uint8_t> bytes(uint64_t offset, uint64_t n, std::string_view what) const;
  bool contains(uint64_t offset, uint64_t n) const {
    return offset <= size_ && n <= size_ - offset;
  }

  // Tells the kernel the range will not be read again through this mapping (drops it from
  // this process's resident set after a tensor has been copied out). A hint; never fails.
  void release(uint64_t offset, uint64_t n) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;  // data_ is our mapping (else a view of the caller's bytes)
};

// Little-endian loads from a range already checked by MappedFile::bytes.
inline uint16_t load_u16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint64_t load_u64(const uint8_t* p) {
  return uint64_t(load_u32(p)) | (uint64_t(load_u32(p + 4)) << 32);
}

}  // namespace rwkvpp
