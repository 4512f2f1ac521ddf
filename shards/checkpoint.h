// Reading released checkpoints into one in-memory form: a map from the *official* RWKV
// tensor names (`emb.weight`, `blocks.3.att.key.weight`, `blocks.0.ln0.weight`, `head.weight`,
// ...) to tensors in the official shapes and their stored dtype. Each reader undoes whatever
// its file format changed (transformers' names, rwkv.cpp's transforms), so everything after
// this point sees one convention.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "common/model_config.h"
#include "common/tensor.h"

namespace rwkvpp {

struct Checkpoint {
  std::map<std::string, HostTensor> tensors;  // official names
  std::string source;                         // the file it came from
  std::string format;                         // "safetensors", "safetensors-hf", "pth", "rwkv.cpp"
};

enum class CheckpointKind { Safetensors, Pth, RwkvCpp };

// Detects the kind from the file's first bytes (not its name): a zip archive (PK\3\4) is a
// PyTorch checkpoint, rwkv.cpp files start with magic 0x67676d66, safetensors with a
// little-endian u64 header length followed by '{'. Throws Error naming the file otherwise.
CheckpointKind detect_checkpoint_kind(const std::string& path);

// Reads any supported checkpoint (dispatching on detect_checkpoint_kind).
Checkpoint read_checkpoint(const std::string& path);

// The individual readers. Each throws Error naming the file (and the tensor, where one is at
// fault) for truncated or corrupt input; none crashes or reads out of bounds.
Checkpoint read_safetensors(const std::string& path);  // official or transformers' names
Checkpoint read_pth(const std::string& path);          // torch.save zip + pickle
Checkpoint read_rwkvcpp(const std::string& path);      // rwkv.cpp .bin (v100/v101), FP32/FP16
// The same readers on a file's bytes already in memory (the fuzz harnesses, tests/fuzz/);
// `name` stands for the path in every message. The path readers map the file and call these.
Checkpoint read_safetensors_bytes(std::span<const uint8_t> bytes, const std::string& name);
Checkpoint read_pth_bytes(std::span<const uint8_t> bytes, const std::string& name);
Checkpoint read_rwkvcpp_bytes(std::span<const uint8_t> bytes, const std::string& name);

// Maps Hugging Face transformers' RWKV-4 names (`rwkv.blocks.N.attention.key.weight`, ...)
// onto official names, in place. Official names pass through unchanged.
void normalize_hf_names(Checkpoint& ck);

// The layer of a "blocks.<i>.<...>" tensor name: i; -1 for names outside the blocks, -2 when
// i is kMaxLayers (common/limits.h) or more.
int64_t block_index(const std::string& name);

// Infers the model shape and version from tensor names and shapes; throws Error naming the
// tensor that is missing or inconsistent.
ModelConfig infer_config(const Checkpoint& ck);

}  // namespace rwkvpp
