// Peer liveness bookkeeping for transports that cannot see a stuck peer by themselves (MPI: a
// peer that dies ends the job through mpirun, but one that is stopped or stuck just stays
// silent). Kept apart from MPI so that the rule can be unit tested with synthetic clocks.
//
// The rule: a request to or from peer p is declared lost when, for longer than the timeout,
// this rank has been *waiting* while nothing was heard from p since the request was posted.
// "Heard" means a message or a transport heartbeat from p arrived (the MPI transport makes
// every rank beat to every other while it drives its transport).
// Only waiting counts: the time inside wait_some(), and short gaps (< kBusyGap) between
// consecutive test()/wait_some() calls, as in a polling loop. A long gap means this rank was
// busy computing, and a peer that is silent meanwhile may simply be waiting for us, so that
// gap is not held against it.
#pragma once

#include <chrono>
#include <vector>

namespace rwkvpp {

// The liveness timeout: env_options().net.peer_timeout_s, i.e. RWKVPP_PEER_TIMEOUT_S (seconds,
// fractional allowed; default 20; 1.5x on a stage rank, stretch_worker_timeout). "0" disables
// liveness checks. A malformed value is an Error naming the variable (common/env_options.h).
std::chrono::milliseconds peer_timeout_from_env();

class Liveness {
 public:
  using Clock = std::chrono::steady_clock;
  // A point on the waiting clock (time spent waiting since construction).
  using Stamp = Clock::duration;
  // Gaps between transport calls shorter than this count as waiting.
  static constexpr std::chrono::milliseconds kBusyGap{200};

  // `timeout` <= 0 disables expiry.
  Liveness(int n_peers, std::chrono::milliseconds timeout, Clock::time_point now);

  // Accounts for the time since the previous call: counted as waiting when `waiting` (the
  // caller slept or polled all along) or when the gap is short.
  void advance(Clock::time_point now, bool waiting);
  Stamp stamp() const { return waited_; }
  void heard_from(int peer) { heard_[peer] = waited_; }
  // How long this rank has waited without news from `peer` since `posted`.
  Stamp silence(int peer, Stamp posted) const;
  bool expired(int peer, Stamp posted) const;
  std::chrono::milliseconds timeout() const { return timeout_; }

 private:
  std::chrono::milliseconds timeout_;
  Clock::time_point last_;
  Stamp waited_{0};
  std::vector<Stamp> heard_;  // per peer: the waiting clock when we last heard from it
};

}  // namespace rwkvpp
