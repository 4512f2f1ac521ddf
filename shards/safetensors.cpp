// safetensors: u64 little-endian header length, a JSON header mapping tensor names to
// {dtype, shape, data_offsets}, then the raw data. Every offset is checked against the file.
#include <nlohmann/json.hpp>

#include <cstring>

#include "common/error.h"
#include "shards/checkpoint.h"
#include "shards/file_bytes.h"

namespace rwkvpp {

Checkpoint read_safetensors(const std::string& path) {
  std::string bytes = read_whole_file(path);
  if (bytes.size() < 8) fail("'{}': truncated safetensors file ({} bytes)", path, bytes.size());
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  if (hlen > bytes.size() - 8)
    fail("'{}': safetensors header length {} exceeds the file size {} (truncated?)", path, hlen, bytes.size());
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + int64_t(hlen));
  } catch (const std::exception& e) {
    fail("'{}': invalid safetensors header: {}", path, e.what());
  }
  if (!h.is_object()) fail("'{}': safetensors header is not a JSON object", path);
  const uint64_t base = 8 + hlen, data_size = bytes.size() - base;
  Checkpoint ck;
  ck.source = path;
  ck.format = "safetensors";
  for (auto& [name, info] : h.items()) {
    if (name == "__metadata__") continue;
    try {
      std::string dt = info.at("dtype").get<std::string>();
      HostTensor t;
      if (dt == "F32") t.dtype = DType::F32;
      else if (dt == "F16") t.dtype = DType::F16;
      else if (dt == "BF16") t.dtype = DType::BF16;
      else fail("'{}': tensor '{}' has unsupported dtype {}", path, name, dt);
      t.shape = info.at("shape").get<std::vector<int64_t>>();
      for (int64_t s : t.shape)
        if (s < 0) fail("'{}': tensor '{}' has a negative dimension", path, name);
      auto off = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (off.size() != 2 || off[0] > off[1] || off[1] > data_size)
        fail("'{}': tensor '{}' has data offsets outside the file (truncated?)", path, name);
      uint64_t want = uint64_t(t.numel()) * dtype_size(t.dtype);
      if (off[1] - off[0] != want)
        fail("'{}': tensor '{}' has {} bytes of data, its shape {} needs {}", path, name,
             off[1] - off[0], t.shape_str(), want);
      t.data.assign(bytes.begin() + int64_t(base + off[0]), bytes.begin() + int64_t(base + off[1]));
      ck.tensors.emplace(name, std::move(t));
    } catch (const nlohmann::json::exception& e) {
      fail("'{}': malformed header entry for tensor '{}': {}", path, name, e.what());
    }
  }
  if (ck.tensors.empty()) fail("'{}': no tensors in safetensors file", path);
  return ck;
}

}  // namespace rwkvpp
