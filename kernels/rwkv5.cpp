#include "common/error.h"
#include "kernels/versions.h"

namespace rwkvpp {

std::unique_ptr<Block> make_block_v5(Backend&, const ModelConfig& cfg, int, const TensorMap&, DType) {
  fail("RWKV-{} is not supported yet", version_name(cfg.version));
}
std::unique_ptr<Block> make_block_v6(Backend&, const ModelConfig&, int, const TensorMap&, DType) {
  fail("RWKV-6 is not supported yet");
}
std::unique_ptr<Block> make_block_v7(Backend&, const ModelConfig&, int, const TensorMap&, DType) {
  fail("RWKV-7 is not supported yet");
}

}  // namespace rwkvpp
