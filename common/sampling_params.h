// A request's sampling parameters: set by the coordinator (CLI, batch lines, the HTTP API),
// carried to the last stage in SetSampling slot operations (protocol/protocol.h), and applied
// there by sample_token (kernels/sampling.h, which documents their order and meaning).
#pragma once

#include <cstdint>

namespace rwkvpp {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy argmax; > 0 divides the logits
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // in (0, 1]; 1 = off
  float min_p = 0.0f;        // in [0, 1); 0 = off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  float penalty_decay = 0.996f;     // in [0, 1]
  uint64_t seed = 0;
};

// Throws rwkvpp::Error naming the first bad field.
void validate(const SamplingParams& p);

}  // namespace rwkvpp
