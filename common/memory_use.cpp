#include "common/memory_use.h"

#include <sys/resource.h>

#include <fstream>
#include <string>

namespace rwkvpp {

uint64_t resident_bytes() {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == "VmRSS:") {
      uint64_t kb = 0;
      f >> kb;
      return kb * 1024;
    }
    std::getline(f, key);
  }
  return 0;
}

uint64_t peak_resident_bytes() {
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return uint64_t(u.ru_maxrss) * 1024;  // KiB on Linux
}

}  // namespace rwkvpp
