// Opening a converted model and reading parts of it. A worker opens the model, reads the
// config (attributes of model.h5 only), and then reads just its own layers: following the
// external link /blocks/<i> opens only the shard file that holds layer i. HDF5 stays inside
// shards/.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/tensor.h"
#include "shards/model_format.h"
#include "shards/tensor_source.h"

namespace rwkvpp {

using LayerTensors = std::map<std::string, HostTensor>;

class ModelReader final : public TensorSource {
 public:
  // `path` is a model directory or its model.h5. Throws Error naming the file when it is
  // not an rwkvpp model, has another format version, or its attributes are inconsistent.
  explicit ModelReader(const std::string& path);
  ~ModelReader() override;
  ModelReader(const ModelReader&) = delete;
  ModelReader& operator=(const ModelReader&) = delete;

  const ModelConfig& config() const override { return cfg_; }
  std::map<std::string, HostTensor> layer(int i) override { return read_layer(i); }
  HostTensor tensor(const std::string& name) override { return read_tensor(name); }
  const std::string& dir() const { return dir_; }
  const std::string& file() const { return file_; }  // path of model.h5
  const std::vector<ShardInfo>& shards() const { return shards_; }
  uint64_t fingerprint() const { return fingerprint_; }  // identifies the weights
  int64_t param_count() const { return params_; }
  uint64_t weight_bytes() const { return weight_bytes_; }  // stored bytes of all tensors

  // Layer i's tensors, keyed by names relative to the block ("att.key.weight", ...), in
  // stored dtype. Verifies every checksum; throws Error naming the file and dataset.
  LayerTensors read_layer(int i);
  // A top-level tensor by official name: "emb.weight", "ln_out.weight", "ln_out.bias",
  // "head.weight", or any "blocks.<i>.<...>" name.
  HostTensor read_tensor(const std::string& name);
  // The embedded tokenizer (kind "" when none was embedded).
  TokenizerBlob read_tokenizer();

  // What this reader has read so far: payload bytes and the files it opened.
  uint64_t bytes_read() const { return bytes_read_; }
  const std::set<std::string>& files_opened() const { return opened_; }

 private:
  HostTensor read_dataset(const std::string& h5path, const std::string& what);
  std::string dir_, file_;
  ModelConfig cfg_;
  std::vector<ShardInfo> shards_;
  uint64_t fingerprint_ = 0, weight_bytes_ = 0, bytes_read_ = 0;
  int64_t params_ = 0;
  std::set<std::string> opened_;
  int64_t fid_ = -1;  // hid_t of model.h5
};

// Resolves MODEL (a directory or its model.h5) to the path of model.h5.
std::string resolve_model_file(const std::string& path);

}  // namespace rwkvpp
