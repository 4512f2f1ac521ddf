// A run of consecutive tokens of one sequence inside a batch: the unit in which a Step carries
// its tokens (protocol/protocol.h) and in which the device runs the recurrences
// (kernels/backend.h). Here so that both sides of the wire, and the kernels, share one type
// without the coordinator including kernels/. Sent as is (packed int32s, 12 bytes).
#pragma once

#include <cstdint>

namespace rwkvpp {

// Tokens [start, start + len) of the batch belong to the sequence in state slot `slot`.
struct Segment {
  int32_t slot;
  int32_t start;
  int32_t len;
};
static_assert(sizeof(Segment) == 12, "Segment travels in Step messages as three int32s");

}  // namespace rwkvpp
