// Running a whole model in one process for tests: one Stage holding every layer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "shards/tensor_source.h"
#include "worker/stage.h"

namespace rwkvpp::test {

struct LocalModel {
  std::unique_ptr<Backend> be;
  std::unique_ptr<Stage> stage;
  int64_t vocab = 0;

  // All layers of `src` on `be` (the CPU backend when null).
  LocalModel(TensorSource& src, DType dtype, int max_slots = 1, std::unique_ptr<Backend> be = nullptr);

  // Feeds tokens to slot `slot` in chunks of `chunk` tokens (token by token when 1) and
  // returns the logits after every token, [T, vocab] row-major.
  std::vector<float> run(int slot, const std::vector<int32_t>& tokens, int chunk);

  // One batched step: sequence i feeds tokens[i] into slot i; returns logits of every token,
  // per sequence.
  std::vector<std::vector<float>> run_batch(const std::vector<std::vector<int32_t>>& tokens);
};

// CUDA device 0 with the fast products (GEMV, cuBLAS: Backend::set_batch_invariant(false)), for
// the tests of those paths; the batch-invariant ones are tested in test_cuda_invariance.cpp.
std::unique_ptr<Backend> fast_cuda_backend();

}  // namespace rwkvpp::test
