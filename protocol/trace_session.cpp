#include "protocol/trace_session.h"

#include <fmt/format.h>

#include <chrono>

#include "common/trace.h"
#include "protocol/ctrl_io.h"
#include "protocol/protocol.h"

namespace rwkvpp {

namespace {

// A clock message received by spinning on the transport (no naps: the round trip is the
// offset's error bound).
ClockMsg recv_clock(Transport& t, int peer, uint64_t* arrived_ns) {
  std::vector<uint8_t> buf(4096);
  RequestId r = t.post_recv(peer, kTagCtrl, buf.data(), buf.size());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  Completion c;
  while (!t.test(r, &c)) {
    if (std::chrono::steady_clock::now() > deadline) {
      t.cancel(r);
      throw PeerLost(peer, "no answer to a clock exchange (--trace)");
    }
  }
  *arrived_ns = trace::now_ns();
  const std::string what = fmt::format("Clock from rank {}", peer);
  return decode_clock(decode_message({buf.data(), c.bytes}, buf.size()), what);
}

}  // namespace

void serve_clock(Transport& t, int peer) {
  for (int i = 0; i < kClockRounds; ++i) {
    uint64_t arrived = 0;
    ClockMsg m = recv_clock(t, peer, &arrived);
    m.t1 = trace::now_ns();
    m.base = trace::base_ns();
    send_blocking(t, peer, kTagCtrl, encode_clock(m));
  }
}

uint64_t measure_clock(Transport& t, int coord) {
  uint64_t best_rtt = ~uint64_t(0);
  int64_t offset = 0;
  uint64_t base = 0;
  for (int i = 0; i < kClockRounds; ++i) {
    ClockMsg m;
    m.t0 = trace::now_ns();
    send_blocking(t, coord, kTagCtrl, encode_clock(m));
    uint64_t t3 = 0;
    ClockMsg a = recv_clock(t, coord, &t3);
    if (a.t0 != m.t0) fail("rank {}: a clock answer out of turn from rank {}", t.rank(), coord);
    const uint64_t rtt = t3 - m.t0;
    if (rtt < best_rtt) {
      best_rtt = rtt;
      offset = int64_t(m.t0 / 2 + t3 / 2) - int64_t(a.t1);
      base = a.base;
    }
  }
  trace::set_clock(offset, base);
  return best_rtt;
}

void send_trace(Transport& t, int coord, const std::string& label) {
  const std::string ev = trace::events_json(t.rank(), label);
  const std::vector<uint8_t> m = encode_trace(ev);
  send_blocking(t, coord, kTagCtrl, encode_trace_size(m.size()));
  send_blocking(t, coord, kTagCtrl, m);
}

std::string recv_trace(Transport& t, int peer) {
  const std::string what = fmt::format("Trace from rank {}", peer);
  auto b = recv_ctrl(t, peer, kCtrlCap, 60, "its trace size");
  const uint64_t n = decode_trace_size(decode_message(b, kCtrlCap), what);
  auto ev = recv_ctrl(t, peer, size_t(n), 120, "its trace");
  return decode_trace(decode_message(ev, size_t(n)), what, n);
}

std::string trace_label(int rank, int stage, int first, int last, const std::string& host) {
  if (stage < 0) return fmt::format("rank {} · coordinator · host {}", rank, host);
  return fmt::format("rank {} · stage {} (layers {}-{}) · host {}", rank, stage, first, last - 1,
                     host);
}

}  // namespace rwkvpp
