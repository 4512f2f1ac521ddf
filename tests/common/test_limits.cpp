// Checked shape arithmetic and the JSON nesting scanner (common/limits.h): the overflows that
// hostile headers reach (a dimension near 2^63) are Errors that name the tensor, never wrapped
// products.
#include <cstdint>
#include <string>

#include "catch.h"
#include "common/error.h"
#include "common/limits.h"
#include "common/tensor.h"
#include "helpers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

TEST_CASE("checked_numel and checked_nbytes refuse negative and overflowing shapes", "[common]") {
  CHECK(checked_numel({}, "t") == 1);
  CHECK(checked_numel({3, 0, 5}, "t") == 0);
  CHECK(checked_numel({int64_t(1) << 31, int64_t(1) << 31}, "t") == int64_t(1) << 62);
  CHECK(checked_nbytes({1024, 1024}, 2, "t") == uint64_t(2) << 20);
  // 2^62 * 2 = 2^63 does not fit int64; neither does a product that wraps past zero.
  auto msg = error_of([] { checked_numel({int64_t(1) << 62, 2}, "'f.safetensors': tensor 'w'"); });
  CHECK(contains(msg, "'f.safetensors': tensor 'w'"));
  CHECK(contains(msg, "2^63"));
  CHECK(contains(error_of([] { checked_numel({INT64_MAX, INT64_MAX}, "x"); }), "2^63"));
  CHECK(contains(error_of([] { checked_numel({0, -1}, "x"); }), "negative"));
  // A zero dimension makes an empty tensor whatever the others are, in any order.
  CHECK(checked_numel({INT64_MAX, 0}, "x") == 0);
  CHECK(checked_numel({INT64_MAX, 2, 0}, "x") == 0);
  // Elements fit, bytes do not.
  msg = error_of([] { checked_nbytes({int64_t(1) << 60, 4}, 4, "'m': tensor 'e'"); });
  CHECK(contains(msg, "'m': tensor 'e'"));
  CHECK(contains(msg, "2^64 bytes"));
  // shape_numel (every HostTensor) goes through the same check.
  CHECK(contains(error_of([] { shape_numel({int64_t(1) << 40, int64_t(1) << 40}); }), "2^63"));
}

TEST_CASE("json_depth counts nesting outside strings in one pass", "[common]") {
  CHECK(json_depth("") == 0);
  CHECK(json_depth("17") == 0);
  CHECK(json_depth(R"({"a": [1, {"b": []}]})") == 4);
  CHECK(json_depth(R"({"s": "[[[[{{{{"})") == 1);
  CHECK(json_depth(R"({"s": "quote \" [[[ still a string"})") == 1);
  CHECK(json_depth(R"(["\\", [[]]])") == 3);  // an escaped backslash ends before the quote
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  CHECK(json_depth(deep) == 100000);
  auto msg = error_of([&] { check_json_depth(deep, "'h.json'"); });
  CHECK(contains(msg, "'h.json'"));
  CHECK(contains(msg, "100000 deep"));
  check_json_depth(std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']'), "ok");
}
