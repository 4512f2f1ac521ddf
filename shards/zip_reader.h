// A reader for the zip archives that torch.save writes (and for zip files in general, as far
// as a checkpoint needs): the central directory with its ZIP64 extensions (released
// checkpoints are up to tens of GB), stored and deflated entries, CRC-32 checks. It reads
// through a MappedFile, so a stored entry is a view into the mapping, never a copy.
// Multi-disk archives and encryption are rejected.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shards/mapped_file.h"

namespace rwkvpp {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflated
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;         // uncompressed
  uint64_t data_offset = 0;  // of the (compressed) data in the file, past the local header
};

class ZipReader {
 public:
  // Parses the central directory of `file` (which must outlive the reader) and resolves every
  // entry's data offset. Throws Error naming the file for anything malformed.
  explicit ZipReader(const MappedFile& file);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;  // nullptr when absent (a hash lookup)

  // The entry's uncompressed bytes, checked against its CRC-32 unless `verify` is false:
  // a view into the mapping for a stored entry, or `scratch` filled by inflating a deflated
  // one. Throws Error naming the file and the entry.
  std::span<const uint8_t> contents(const ZipEntry& e, std::vector<uint8_t>& scratch,
                                    bool verify = true) const;

  const MappedFile& file() const { return file_; }

 private:
  const MappedFile& file_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> by_name_;  // the first entry of each name
};

}  // namespace rwkvpp
