// Transport::test() for a request id its owner keeps in a member: the id is zeroed once the
// transport has retired the request (completed, or failed with PeerLost), so that a kept id is
// never tested again after a loss. Used by the coordinator's Engine and the stage's StepLoop.
#pragma once

#include "net/transport.h"

namespace rwkvpp {

inline bool test_and_clear(Transport& t, RequestId& id, Completion* c = nullptr) {
  try {
    if (!t.test(id, c)) return false;
  } catch (const PeerLost&) {
    id = 0;  // test() retired it
    throw;
  }
  id = 0;
  return true;
}

}  // namespace rwkvpp
