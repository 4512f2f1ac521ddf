// The weights of one run, on every rank: a converted model (ModelReader: its attributes at
// once, each stage's layers once it knows them), or random weights of a named shape generated
// on each rank (SyntheticSource: benchmarks without a file). Rank 0 plans from its config and
// checks every stage's fingerprint against its own; a stage loads its layers from it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "shards/model_reader.h"
#include "shards/tensor_source.h"

namespace rwkvpp {

struct ModelSource {
  std::unique_ptr<ModelReader> reader;     // a converted model, or null
  std::unique_ptr<TensorSource> synthetic;  // random weights, or null
  uint64_t fingerprint = 0;                // the same on every rank that sees the same weights
  TensorSource& get() const { return reader ? static_cast<TensorSource&>(*reader) : *synthetic; }
};

// `synthetic` (a shape name of shards/synthetic.h) wins over `model` (a model directory or its
// model.h5); `dtype` is the compute dtype asked for ("" for as stored: fp16 for synthetic
// weights, which are stored unquantised). Throws Error naming the file or the shape.
ModelSource open_model_source(const std::string& model, const std::string& synthetic,
                              uint64_t synthetic_seed, const std::string& dtype);

}  // namespace rwkvpp
