// safetensors: u64 little-endian header length, a JSON header mapping tensor names to
// {dtype, shape, data_offsets}, then the raw data. Every size in the header is checked before it
// is used: the header's length and nesting, each shape's element count and bytes (no overflow),
// each tensor's offsets against the data, and the tensors' total against the data's size (so
// overlapping tensors cannot multiply the memory a small file takes).
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/limits.h"
#include "shards/checkpoint.h"
#include "shards/mapped_file.h"

namespace rwkvpp {

namespace {

// A JSON array of integers in [lo, hi]; nlohmann's get<> would convert floats with undefined
// behaviour when out of range, and wrap integers silently.
template <typename T>
std::vector<T> int_array(const nlohmann::json& j, const std::string& path, const std::string& name,
                         const char* field) {
  if (!j.is_array() || j.size() > 16)
    fail("'{}': tensor '{}': '{}' must be an array of at most 16 integers", path, name, field);
  std::vector<T> v;
  for (const nlohmann::json& e : j) {
    bool ok = e.is_number_unsigned() ? e.get<uint64_t>() <= uint64_t(std::numeric_limits<T>::max())
                                     : e.is_number_integer() && e.get<int64_t>() >= 0;
    if (!ok)
      fail("'{}': tensor '{}': '{}' holds {}, expected integers in [0, {}]", path, name, field,
           e.dump().substr(0, 40), std::numeric_limits<T>::max());
    v.push_back(T(e.get<uint64_t>()));
  }
  return v;
}

HostTensor header_tensor(const std::string& path, const std::string& name,
                         const nlohmann::json& info, std::span<const uint8_t> data,
                         uint64_t& total) {
  if (!info.is_object()) fail("'{}': the header entry of tensor '{}' is not an object", path, name);
  std::string dt = info.at("dtype").get<std::string>();
  HostTensor t;
  if (dt == "F32")
    t.dtype = DType::F32;
  else if (dt == "F16")
    t.dtype = DType::F16;
  else if (dt == "BF16")
    t.dtype = DType::BF16;
  else
    fail("'{}': tensor '{}' has unsupported dtype {}", path, name, dt.substr(0, 32));
  t.shape = int_array<int64_t>(info.at("shape"), path, name, "shape");
  const uint64_t want =
      checked_nbytes(t.shape, dtype_size(t.dtype), fmt::format("'{}': tensor '{}'", path, name));
  auto off = int_array<uint64_t>(info.at("data_offsets"), path, name, "data_offsets");
  if (off.size() != 2 || off[0] > off[1] || off[1] > data.size())
    fail("'{}': tensor '{}' has data offsets outside the file (truncated?)", path, name);
  if (off[1] - off[0] != want)
    fail("'{}': tensor '{}' has {} bytes of data, its shape {} needs {}", path, name,
         off[1] - off[0], t.shape_str(), want);
  total += want;
  if (total > data.size())
    fail(
        "'{}': the tensors up to '{}' need {} bytes, more than the file's {} bytes of data "
        "(overlapping tensors?)",
        path, name, total, data.size());
  t.data.assign(data.begin() + int64_t(off[0]), data.begin() + int64_t(off[1]));
  return t;
}

}  // namespace

Checkpoint read_safetensors_bytes(std::span<const uint8_t> bytes, const std::string& path) {
  if (bytes.size() < 8) fail("'{}': truncated safetensors file ({} bytes)", path, bytes.size());
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  if (hlen > bytes.size() - 8)
    fail("'{}': safetensors header length {} exceeds the file size {} (truncated?)", path, hlen,
         bytes.size());
  if (hlen > kMaxSafetensorsHeader)
    fail("'{}': safetensors header length {} is over the limit of {} bytes", path, hlen,
         kMaxSafetensorsHeader);
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, size_t(hlen));
  check_json_depth(text, fmt::format("'{}': safetensors header", path));
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("'{}': invalid safetensors header: {}", path, e.what());
  }
  if (!h.is_object()) fail("'{}': safetensors header is not a JSON object", path);
  const std::span<const uint8_t> data = bytes.subspan(8 + size_t(hlen));
  Checkpoint ck;
  ck.source = path;
  ck.format = "safetensors";
  uint64_t total = 0;
  for (auto& [name, info] : h.items()) {
    if (name == "__metadata__") continue;
    if (name.size() > kMaxTensorName)
      fail("'{}': a tensor name of {} bytes ('{}...'), over the limit of {}", path, name.size(),
           name.substr(0, 40), kMaxTensorName);
    try {
      ck.tensors.emplace(name, header_tensor(path, name, info, data, total));
    } catch (const nlohmann::json::exception& e) {
      fail("'{}': malformed header entry for tensor '{}': {}", path, name, e.what());
    }
  }
  if (ck.tensors.empty()) fail("'{}': no tensors in safetensors file", path);
  return ck;
}

Checkpoint read_safetensors(const std::string& path) {
  MappedFile f(path);
  return read_safetensors_bytes(f.bytes(0, f.size(), "the safetensors file"), path);
}

}  // namespace rwkvpp
