// Placeholder: the rwkv.cpp .bin reader lands in its own change.
#include "common/error.h"
#include "shards/checkpoint.h"

namespace rwkvpp {
Checkpoint read_rwkvcpp(const std::string& path) { fail("'{}': rwkv.cpp reading is not implemented yet", path); }
}  // namespace rwkvpp
