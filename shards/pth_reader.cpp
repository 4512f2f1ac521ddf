// Placeholder: the PyTorch .pth reader lands in its own change.
#include "common/error.h"
#include "shards/checkpoint.h"

namespace rwkvpp {
Checkpoint read_pth(const std::string& path) { fail("'{}': .pth reading is not implemented yet", path); }
}  // namespace rwkvpp
