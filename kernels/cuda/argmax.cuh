// Greedy sampling on the device: the argmax of each row of logits and its log-softmax, so that
// only ids (and logprobs) travel to the host (Backend::argmax_rows, kernels/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace rwkvpp::cuda {

// For each row r < m of logits [m, vocab] (NaN counted as -inf):
//   ids[r] = argmax (lowest id among equal maxima), -1 when every logit is NaN or -inf;
//   logprobs[r] (when non-null) = float(mx - (mx + log(sum_i exp(double(z_i) - mx)))), in double.
// ids and logprobs are device memory [m]. `scratch` (nullable): argmax_scratch_bytes() of device
// memory, zero when first given and then left to these calls (on one stream), which split rows
// over several blocks when m <= kArgmaxSplitRows.
constexpr int64_t kArgmaxSplitRows = 16;
size_t argmax_scratch_bytes();
void argmax_rows(const float* logits, int64_t m, int64_t vocab, int32_t* ids, float* logprobs,
                 void* scratch, cudaStream_t s);

}  // namespace rwkvpp::cuda
