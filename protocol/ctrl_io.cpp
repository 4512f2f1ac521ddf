#include "protocol/ctrl_io.h"

#include <chrono>

namespace rwkvpp {

std::vector<uint8_t> recv_ctrl(Transport& t, int peer, size_t cap, int timeout_s,
                               const std::string& waiting_for, Completion* c) {
  using Clock = std::chrono::steady_clock;
  std::vector<uint8_t> buf(cap);
  RequestId r = t.post_recv(peer, kTagCtrl, buf.data(), buf.size());
  auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  Completion cc;
  while (!t.test(r, &cc)) {
    if (Clock::now() > deadline) {
      t.cancel(r);
      throw PeerLost(peer, "no answer while waiting for " + waiting_for);
    }
    t.wait_some(std::chrono::milliseconds(2));
  }
  buf.resize(cc.bytes);
  if (c) *c = cc;
  return buf;
}

void send_blocking(Transport& t, int peer, int tag, const std::vector<uint8_t>& m) {
  RequestId r = t.post_send(peer, tag, m.data(), m.size());
  while (!t.test(r)) t.wait_some(std::chrono::milliseconds(1));
}

}  // namespace rwkvpp
