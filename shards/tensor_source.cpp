#include "shards/tensor_source.h"

#include "common/error.h"

namespace rwkvpp {

CheckpointSource::CheckpointSource(Checkpoint ck) : ck_(std::move(ck)), cfg_(infer_config(ck_)) {}

std::map<std::string, HostTensor> CheckpointSource::layer(int i) {
  std::string prefix = "blocks." + std::to_string(i) + ".";
  std::map<std::string, HostTensor> out;
  for (auto& [k, v] : ck_.tensors)
    if (k.rfind(prefix, 0) == 0) out.emplace(k.substr(prefix.size()), v);
  if (out.empty()) fail("'{}': layer {} has no tensors", ck_.source, i);
  return out;
}

HostTensor CheckpointSource::tensor(const std::string& name) {
  auto it = ck_.tensors.find(name);
  if (it == ck_.tensors.end()) fail("'{}': tensor '{}' is missing", ck_.source, name);
  return it->second;
}

}  // namespace rwkvpp
