// The rwkvpp model format (docs/format.md): OUTDIR/model.h5 holds the config as attributes,
// the embedding, ln_out, head and the tokenizer, and /blocks/<i> as HDF5 external links into
// shard files model-0000k-of-0000n.h5 that hold contiguous layer ranges. Tensor names map to
// dataset paths by replacing '.' with '/' (blocks.3.att.key.weight -> /blocks/3/att/key/weight).
// Every dataset is chunked with HDF5's Fletcher32 filter and also carries an FNV-1a 64-bit
// checksum attribute over its raw bytes; the reader verifies both.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/tensor.h"
#include "shards/checkpoint.h"

namespace rwkvpp {

inline constexpr int kFormatVersion = 1;

struct ShardInfo {
  std::string file;  // file name relative to the model directory
  int first = 0;     // first layer held
  int last = 0;      // one past the last layer held
};

// An embedded tokenizer: its kind ("world", "20b", "bytes", or "" for none) and the bytes of
// the vocabulary file it was made from (empty for "bytes").
struct TokenizerBlob {
  std::string kind;
  std::string data;
};

struct WriteOptions {
  int shards = 1;
  DType dtype = DType::F32;       // storage dtype of 2-D `.weight` matrices; the rest stay fp32
  bool dtype_from_source = true;  // keep each matrix's source dtype (ignores `dtype`)
  TokenizerBlob tokenizer;
  // Called after each tensor is written: source bytes and tensors written so far, of the totals.
  std::function<void(uint64_t bytes, uint64_t total_bytes, size_t tensors, size_t total_tensors)> on_progress;
};

// Writes a converted model into a new directory `outdir` (which must not exist). The files
// are written into a temporary sibling directory and renamed into place at the end, so a
// failure never leaves a partial model behind.
void write_model(const Checkpoint& ck, const ModelConfig& cfg, const std::string& outdir,
                 const WriteOptions& opt);

// FNV-1a 64 of a byte range: the per-dataset checksum.
uint64_t fnv1a64(const void* data, size_t n, uint64_t seed = 0xcbf29ce484222325ull);

}  // namespace rwkvpp
