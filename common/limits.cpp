// Checked size arithmetic and JSON nesting depth (common/limits.h).
#include "common/limits.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"

namespace rwkvpp {

int64_t checked_numel(const std::vector<int64_t>& shape, std::string_view what) {
  int64_t n = 1;
  for (int64_t s : shape)
    if (s < 0) fail("{}: shape [{}] has a negative dimension", what, fmt::join(shape, ", "));
  for (int64_t s : shape)
    if (s == 0) return 0;  // whatever the other dimensions are, in any order
  for (int64_t s : shape)
    if (__builtin_mul_overflow(n, s, &n))
      fail("{}: shape [{}] has more than 2^63 elements", what, fmt::join(shape, ", "));
  return n;
}

uint64_t checked_nbytes(const std::vector<int64_t>& shape, size_t elem_bytes,
                        std::string_view what) {
  uint64_t b = 0;
  if (__builtin_mul_overflow(uint64_t(checked_numel(shape, what)), uint64_t(elem_bytes), &b))
    fail("{}: shape [{}] of {}-byte elements has more than 2^64 bytes", what,
         fmt::join(shape, ", "), elem_bytes);
  return b;
}

size_t json_depth(std::string_view s) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;  // the escaped character, whatever it is
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

void check_json_depth(std::string_view s, std::string_view what) {
  const size_t d = json_depth(s);
  if (d > kMaxJsonDepth)
    fail("{}: JSON nested {} deep, over the limit of {}", what, d, kMaxJsonDepth);
}

}  // namespace rwkvpp
