// The shape of an RWKV model: what model.h5 records and every layer needs to size itself.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/dtype.h"

namespace rwkvpp {

enum class RwkvVersion : uint8_t { V4, V5_1, V5_2, V6, V7 };

const char* version_name(RwkvVersion v);              // "4", "5.1", "5.2", "6", "7"
RwkvVersion parse_version(std::string_view s);        // throws Error on an unknown name

struct ModelConfig {
  RwkvVersion version = RwkvVersion::V4;
  int64_t n_layer = 0;
  int64_t n_embd = 0;    // C
  int64_t n_head = 0;    // v5-7: H (H * head_size == C); v4: 0
  int64_t head_size = 0; // v5-7: N; v4: 0
  int64_t ffn_dim = 0;   // channel-mix hidden size
  int64_t vocab_size = 0;
  DType dtype = DType::F32;  // storage dtype of the weight matrices
  float layer_norm_eps = 1e-5f;

  // Hidden vectors that travel between stages per token: x, plus v_first for RWKV-7.
  int64_t carried() const { return version == RwkvVersion::V7 ? 2 : 1; }
  bool operator==(const ModelConfig&) const = default;
};

}  // namespace rwkvpp
