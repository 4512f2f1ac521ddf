#include <cmath>
#include <cstring>

#include "catch.h"
#include "common/dtype.h"

using namespace rwkvpp;

TEST_CASE("fp16 conversion round-trips every finite half exactly", "[common]") {
  int checked = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    uint16_t x = uint16_t(h);
    if ((x & 0x7c00) == 0x7c00) continue;  // inf/nan
    float f = f16_to_f32(x);
    REQUIRE(f32_to_f16(f) == x);
    ++checked;
  }
  REQUIRE(checked == 63488);
  // Known values from IEEE 754 binary16.
  REQUIRE(f16_to_f32(0x3c00) == 1.0f);
  REQUIRE(f16_to_f32(0xc000) == -2.0f);
  REQUIRE(f16_to_f32(0x7bff) == 65504.0f);
  REQUIRE(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
  REQUIRE(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie to even
  REQUIRE(f32_to_f16(1e6f) == 0x7c00);
}

TEST_CASE("bf16 conversion rounds to nearest even", "[common]") {
  REQUIRE(f32_to_bf16(1.0f) == 0x3f80);
  REQUIRE(bf16_to_f32(0x3f80) == 1.0f);
  float x = 1.0f + std::ldexp(1.0f, -8);  // exactly halfway between two bf16 values
  REQUIRE(f32_to_bf16(x) == 0x3f80);
  REQUIRE(f32_to_bf16(std::nextafter(x, 2.0f)) == 0x3f81);
}
