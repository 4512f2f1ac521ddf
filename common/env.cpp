// Launcher variables from the environment (common/env.h).
#include "common/env.h"

#include <cstdlib>

namespace rwkvpp {

int env_int(std::initializer_list<const char*> names, int dflt) {
  for (const char* n : names)
    if (const char* v = std::getenv(n); v && *v) return std::atoi(v);
  return dflt;
}

}  // namespace rwkvpp
