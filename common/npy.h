// NumPy .npy files (format 1.0, '<f4', C order): what `rwkvpp logits` writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rwkvpp {

// Writes data (numel(shape) floats) to path; throws Error naming the path on failure.
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

// Reads a '<f4' C-order .npy (for tests and tools); throws Error naming the path.
std::vector<float> read_npy_f32(const std::string& path, std::vector<int64_t>* shape);

}  // namespace rwkvpp
