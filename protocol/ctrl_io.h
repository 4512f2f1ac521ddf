// Blocking control-message exchanges of the start-up and shutdown handshakes (both sides:
// coordinator/cluster.cpp, worker/stage_rank.cpp, protocol/trace_session.cpp), on the
// transport's control tag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "net/transport.h"
#include "protocol/protocol.h"

namespace rwkvpp {

inline constexpr size_t kCtrlCap = 1 << 20;  // bytes of the largest ordinary control message

// Receives one control message of at most `cap` bytes from `peer`; throws PeerLost (naming
// `waiting_for`) after timeout_s seconds.
std::vector<uint8_t> recv_ctrl(Transport& t, int peer, size_t cap, int timeout_s, const std::string& waiting_for,
                               Completion* c = nullptr);
// Sends `m` and waits until the transport has taken it.
void send_blocking(Transport& t, int peer, int tag, const std::vector<uint8_t>& m);

}  // namespace rwkvpp
