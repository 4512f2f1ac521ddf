// Whole-file reads with clear errors, shared by the checkpoint readers.
#pragma once

#include <cstdint>
#include <string>

namespace rwkvpp {

// The whole file; throws Error naming the path when it cannot be read.
std::string read_whole_file(const std::string& path);

}  // namespace rwkvpp
