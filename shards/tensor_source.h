// Where a stage gets its weights from: a converted model (ModelReader) in production, or a
// checkpoint held in memory (tests, `rwkvpp logits` on an unconverted file).
#pragma once

#include <map>
#include <string>

#include "common/model_config.h"
#include "common/tensor.h"
#include "shards/checkpoint.h"

namespace rwkvpp {

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const ModelConfig& config() const = 0;
  // Layer i's tensors keyed by names relative to the block ("att.key.weight", "ln0.weight").
  virtual std::map<std::string, HostTensor> layer(int i) = 0;
  // A top-level tensor by official name ("emb.weight", "ln_out.weight", "head.weight", ...).
  virtual HostTensor tensor(const std::string& name) = 0;
};

// A checkpoint in memory as a source.
class CheckpointSource final : public TensorSource {
 public:
  explicit CheckpointSource(Checkpoint ck);
  const ModelConfig& config() const override { return cfg_; }
  std::map<std::string, HostTensor> layer(int i) override;
  HostTensor tensor(const std::string& name) override;

 private:
  Checkpoint ck_;
  ModelConfig cfg_;
};

}  // namespace rwkvpp
