// Peer liveness bookkeeping (see liveness.h for the rule).
#include "net/liveness.h"

#include <algorithm>
#include <cmath>

#include "common/env_options.h"

namespace rwkvpp {

std::chrono::milliseconds peer_timeout_from_env() {
  return std::chrono::milliseconds(int64_t(std::llround(env_options().net.peer_timeout_s * 1000)));
}

Liveness::Liveness(int n_peers, std::chrono::milliseconds timeout, Clock::time_point now)
    : timeout_(timeout), last_(now), heard_(size_t(std::max(n_peers, 0)), Stamp{0}) {}

void Liveness::advance(Clock::time_point now, bool waiting) {
  Clock::duration gap = now - last_;
  if (gap > Clock::duration::zero() && (waiting || gap < kBusyGap)) waited_ += gap;
  last_ = std::max(last_, now);
}

Liveness::Stamp Liveness::silence(int peer, Stamp posted) const {
  return waited_ - std::max(posted, heard_[size_t(peer)]);
}

bool Liveness::expired(int peer, Stamp posted) const {
  return timeout_.count() > 0 && silence(peer, posted) > timeout_;
}

}  // namespace rwkvpp
