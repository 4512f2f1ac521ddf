// Zip archive reading for PyTorch checkpoints (see zip_reader.h). Layout facts used here,
// from PKWARE's APPNOTE.TXT:
//   end of central directory (EOCD): sig 0x06054b50, 22 bytes + comment, at the file's end;
//   ZIP64 EOCD locator: sig 0x07064b50, 20 bytes, right before the EOCD, pointing at the
//   ZIP64 EOCD (sig 0x06064b50, 56 bytes) whose 64-bit counts replace saturated EOCD fields;
//   central directory header: sig 0x02014b50, 46 bytes + name + extra + comment; 32-bit sizes
//   or offset of 0xffffffff are found in the ZIP64 extra field (id 0x0001), in the order
//   size, compressed size, local header offset;
//   local header: sig 0x04034b50, 30 bytes + name + extra, then the data. torch sets flag
//   bit 3 (sizes in a data descriptor after the data), so sizes come from the central
//   directory only.
#include "shards/zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <climits>

#include "common/error.h"

namespace rwkvpp {
namespace {

constexpr uint32_t kEocdSig = 0x06054b50u, kEocd64Sig = 0x06064b50u, kLocatorSig = 0x07064b50u,
                   kCentralSig = 0x02014b50u, kLocalSig = 0x04034b50u;
constexpr uint64_t kEocdSize = 22, kLocatorSize = 20, kEocd64Size = 56, kCentralSize = 46,
                   kLocalSize = 30;

struct Directory {
  uint64_t entries = 0, size = 0, offset = 0;
};

Directory find_directory(const MappedFile& f) {
  const std::string& path = f.path();
  if (f.size() < kEocdSize) fail("'{}': not a zip archive ({} bytes; truncated?)", path, f.size());
  // The EOCD is the last record, followed only by a comment of at most 65535 bytes.
  const uint64_t lowest = f.size() > kEocdSize + 0xffff ? f.size() - kEocdSize - 0xffff : 0;
  auto tail = f.bytes(lowest, f.size() - lowest, "the end of the archive");
  uint64_t eocd = UINT64_MAX;
  for (uint64_t i = tail.size() - kEocdSize + 1; i-- > 0;) {
    const uint8_t* p = tail.data() + i;
    if (load_u32(p) == kEocdSig && i + kEocdSize + load_u16(p + 20) <= tail.size()) {
      eocd = lowest + i;
      break;
    }
  }
  if (eocd == UINT64_MAX)
    fail(
        "'{}': no zip end-of-central-directory record: truncated, or not a zip archive "
        "(legacy pre-1.6 torch.save files are not supported)",
        path);
  const uint8_t* e = f.bytes(eocd, kEocdSize, "the end of central directory").data();
  if (load_u16(e + 4) != 0 || load_u16(e + 6) != 0)
    fail("'{}': multi-disk zip archives are not supported", path);
  Directory d{load_u16(e + 10), load_u32(e + 12), load_u32(e + 16)};
  if (eocd >= kLocatorSize) {
    const uint8_t* loc = f.bytes(eocd - kLocatorSize, kLocatorSize, "the ZIP64 locator").data();
    if (load_u32(loc) == kLocatorSig) {
      const uint64_t at = load_u64(loc + 8);
      const uint8_t* z = f.bytes(at, kEocd64Size, "the ZIP64 end of central directory").data();
      if (load_u32(z) != kEocd64Sig)
        fail("'{}': corrupt ZIP64 end of central directory (bad signature)", path);
      if (load_u32(z + 16) != 0 || load_u32(z + 20) != 0)
        fail("'{}': multi-disk zip archives are not supported", path);
      d = {load_u64(z + 32), load_u64(z + 40), load_u64(z + 48)};
    }
  }
  if (!f.contains(d.offset, d.size))
    fail(
        "'{}': the zip central directory (offset {}, {} bytes) lies outside the file "
        "({} bytes); truncated?",
        path, d.offset, d.size, f.size());
  if (d.entries > d.size / kCentralSize)
    fail("'{}': the zip central directory claims {} entries in {} bytes; corrupt?", path, d.entries,
         d.size);
  return d;
}

// Replaces saturated 32-bit fields by their ZIP64 extra-field values.
void apply_zip64_extra(const std::string& path, ZipEntry& e, std::span<const uint8_t> extra,
                       uint64_t& local, bool need_size, bool need_csize, bool need_local) {
  size_t i = 0;
  while (i + 4 <= extra.size()) {
    const uint16_t id = load_u16(extra.data() + i), len = load_u16(extra.data() + i + 2);
    if (i + 4 + len > extra.size()) break;
    if (id == 0x0001) {
      const uint8_t* p = extra.data() + i + 4;
      size_t left = len;
      auto take = [&](uint64_t& v) {
        if (left < 8) fail("'{}': entry '{}' has a short ZIP64 extra field", path, e.name);
        v = load_u64(p);
        p += 8;
        left -= 8;
      };
      if (need_size) take(e.size);
      if (need_csize) take(e.compressed_size);
      if (need_local) take(local);
      return;
    }
    i += 4 + size_t(len);
  }
  if (need_size || need_csize || need_local)
    fail("'{}': entry '{}' needs a ZIP64 extra field but has none; corrupt?", path, e.name);
}

uint32_t crc32_of(std::span<const uint8_t> b) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t i = 0; i < b.size();) {
    const size_t n = std::min<size_t>(b.size() - i, size_t(1) << 30);
    crc = crc32(crc, b.data() + i, uInt(n));
    i += n;
  }
  return uint32_t(crc);
}

}  // namespace

ZipReader::ZipReader(const MappedFile& file) : file_(file) {
  const std::string& path = file.path();
  const Directory d = find_directory(file);
  auto cd = file.bytes(d.offset, d.size, "the zip central directory");
  size_t pos = 0;
  entries_.reserve(size_t(d.entries));
  for (uint64_t n = 0; n < d.entries; ++n) {
    if (cd.size() - pos < kCentralSize)
      fail("'{}': zip central directory entry #{} is truncated", path, n);
    const uint8_t* h = cd.data() + pos;
    if (load_u32(h) != kCentralSig)
      fail("'{}': zip central directory entry #{} has a bad signature; corrupt?", path, n);
    const uint16_t flags = load_u16(h + 8), name_len = load_u16(h + 28),
                   extra_len = load_u16(h + 30), comment_len = load_u16(h + 32);
    if (cd.size() - pos - kCentralSize < uint64_t(name_len) + extra_len + comment_len)
      fail("'{}': zip central directory entry #{} is truncated", path, n);
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(h + kCentralSize), name_len);
    e.method = load_u16(h + 10);
    e.crc32 = load_u32(h + 16);
    e.compressed_size = load_u32(h + 20);
    e.size = load_u32(h + 24);
    uint64_t local = load_u32(h + 42);
    apply_zip64_extra(path, e, {h + kCentralSize + name_len, extra_len}, local,
                      e.size == 0xffffffffu, e.compressed_size == 0xffffffffu,
                      local == 0xffffffffu);
    if (load_u16(h + 34) != 0 && load_u16(h + 34) != 0xffff)
      fail("'{}': entry '{}' is on another disk; multi-disk zip archives are not supported", path,
           e.name);
    if (flags & 1) fail("'{}': entry '{}' is encrypted", path, e.name);
    if (e.method != 0 && e.method != 8)
      fail(
          "'{}': entry '{}' uses zip compression method {} "
          "(only stored and deflated are supported)",
          path, e.name, e.method);
    if (e.method == 0 && e.compressed_size != e.size)
      fail("'{}': stored entry '{}' has compressed size {} but size {}; corrupt?", path, e.name,
           e.compressed_size, e.size);
    // The data follow the local header, whose own name and extra lengths count.
    auto lh = file.bytes(local, kLocalSize, fmt::format("the local header of entry '{}'", e.name));
    if (load_u32(lh.data()) != kLocalSig)
      fail("'{}': entry '{}' has a bad local header signature; corrupt?", path, e.name);
    const uint64_t lname = load_u16(lh.data() + 26), lextra = load_u16(lh.data() + 28);
    auto ln = file.bytes(local + kLocalSize, lname,
                         fmt::format("the local header of entry '{}'", e.name));
    if (std::string_view(reinterpret_cast<const char*>(ln.data()), ln.size()) != e.name)
      fail("'{}': entry '{}' has a different name in its local header; corrupt?", path, e.name);
    e.data_offset = local + kLocalSize + lname + lextra;
    if (!file.contains(e.data_offset, e.compressed_size))
      fail(
          "'{}': the data of entry '{}' (offset {}, {} bytes) run past the end of the file "
          "({} bytes); truncated?",
          path, e.name, e.data_offset, e.compressed_size, file.size());
    pos += kCentralSize + name_len + extra_len + comment_len;
    entries_.push_back(std::move(e));
  }
  for (size_t i = 0; i < entries_.size(); ++i) by_name_.emplace(entries_[i].name, i);
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::span<const uint8_t> ZipReader::contents(const ZipEntry& e, std::vector<uint8_t>& scratch,
                                             bool verify) const {
  const std::string& path = file_.path();
  auto raw =
      file_.bytes(e.data_offset, e.compressed_size, fmt::format("the data of entry '{}'", e.name));
  std::span<const uint8_t> out = raw;
  if (e.method == 8) {
    // Deflate expands at most ~1032:1; a larger claimed size is a corrupt header, not a
    // reason to allocate it.
    if (e.size / 1032 > e.compressed_size + 64)
      fail("'{}': entry '{}' claims {} bytes from {} compressed; corrupt?", path, e.name, e.size,
           e.compressed_size);
    // The buffer grows with what really inflates, so that a header's claim costs no memory
    // until the data back it.
    scratch.resize(size_t(std::min<uint64_t>(e.size, uint64_t(1) << 20)));
    z_stream zs{};
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK)
      fail("'{}': cannot start inflating entry '{}'", path, e.name);
    uint64_t in = 0, produced = 0;
    int rc = Z_OK;
    while (rc == Z_OK) {
      if (produced == scratch.size() && scratch.size() < e.size)
        scratch.resize(size_t(std::min<uint64_t>(e.size, 2 * uint64_t(scratch.size()))));
      zs.next_in = const_cast<Bytef*>(raw.data() + in);
      zs.avail_in = uInt(std::min<uint64_t>(raw.size() - in, UINT_MAX));
      zs.next_out = scratch.data() + produced;
      zs.avail_out = uInt(std::min<uint64_t>(scratch.size() - produced, UINT_MAX));
      const uInt had_in = zs.avail_in, had_out = zs.avail_out;
      rc = inflate(&zs, Z_NO_FLUSH);
      in += had_in - zs.avail_in;
      produced += had_out - zs.avail_out;
      if (rc == Z_BUF_ERROR && (in < raw.size() && produced < e.size)) rc = Z_OK;  // more to do
      if (rc == Z_OK && had_in == zs.avail_in && had_out == zs.avail_out)
        rc = Z_BUF_ERROR;  // no progress
    }
    const std::string why = zs.msg ? zs.msg : rc == Z_STREAM_END ? "wrong size" : "truncated data";
    inflateEnd(&zs);
    if (rc != Z_STREAM_END || produced != e.size)
      fail("'{}': entry '{}' does not inflate to its {} bytes (zlib: {}); corrupt?", path, e.name,
           e.size, why);
    out = {scratch.data(), scratch.size()};
  }
  if (verify) {
    const uint32_t crc = crc32_of(out);
    if (crc != e.crc32)
      fail(
          "'{}': entry '{}' fails its CRC-32 check (stored {:08x}, computed {:08x}); "
          "corrupt file?",
          path, e.name, e.crc32, crc);
  }
  return out;
}

}  // namespace rwkvpp
