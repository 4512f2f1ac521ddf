// Per-version block constructors; make_block (block.cpp) dispatches on ModelConfig::version.
#pragma once

#include "kernels/block.h"

namespace rwkvpp {

std::unique_ptr<Block> make_block_v4(Backend& be, const ModelConfig& cfg, int layer,
                                     const TensorMap& t, DType dtype);
// RWKV-5.1 and 5.2 (cfg.version tells which).
std::unique_ptr<Block> make_block_v5(Backend& be, const ModelConfig& cfg, int layer,
                                     const TensorMap& t, DType dtype);
std::unique_ptr<Block> make_block_v6(Backend& be, const ModelConfig& cfg, int layer,
                                     const TensorMap& t, DType dtype);
std::unique_ptr<Block> make_block_v7(Backend& be, const ModelConfig& cfg, int layer,
                                     const TensorMap& t, DType dtype);

}  // namespace rwkvpp
