// This process's resident memory, for the figures `rwkvpp bench` reports per stage.
#pragma once

#include <cstdint>

namespace rwkvpp {

uint64_t resident_bytes();       // now (VmRSS of /proc/self/status); 0 where unknown
uint64_t peak_resident_bytes();  // the peak so far (getrusage's ru_maxrss); 0 where unknown

}  // namespace rwkvpp
