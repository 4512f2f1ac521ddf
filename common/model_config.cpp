#include "common/model_config.h"

#include "common/error.h"

namespace rwkvpp {

const char* version_name(RwkvVersion v) {
  switch (v) {
    case RwkvVersion::V4: return "4";
    case RwkvVersion::V5_1: return "5.1";
    case RwkvVersion::V5_2: return "5.2";
    case RwkvVersion::V6: return "6";
    case RwkvVersion::V7: return "7";
  }
  return "?";
}

RwkvVersion parse_version(std::string_view s) {
  if (s == "4") return RwkvVersion::V4;
  if (s == "5.1") return RwkvVersion::V5_1;
  if (s == "5.2" || s == "5") return RwkvVersion::V5_2;
  if (s == "6") return RwkvVersion::V6;
  if (s == "7") return RwkvVersion::V7;
  fail("unknown RWKV version '{}' (expected 4, 5.1, 5.2, 6 or 7)", s);
}

}  // namespace rwkvpp
