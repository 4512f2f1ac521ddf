// Fuzz harness of the wire protocol (net/wire.h framing, protocol/protocol.h messages): a message
// as it arrives from a rank is framed, decoded by its type, and re-encoded; what decodes must
// encode back to the same payload (so no field is misread or dropped). Seeds are messages of
// every type made by the protocol's own encoders.
#include <cstring>

#include "common/error.h"
#include "fuzz/targets.h"
#include "net/control/join_handshake.h"
#include "net/wire.h"
#include "protocol/protocol.h"

namespace rwkvpp::fuzz {

namespace {

constexpr uint64_t kMaxPayload = uint64_t(1) << 24;

std::span<const uint8_t> payload_of(const std::vector<uint8_t>& msg) {
  return std::span<const uint8_t>(msg).subspan(kHeaderBytes);
}

void same_payload(const Message& m, const std::vector<uint8_t>& again, const char* what) {
  auto p = payload_of(again);
  fuzz_check(p.size() == m.payload.size() && std::memcmp(p.data(), m.payload.data(), p.size()) == 0,
             what);
}

void control(const Message& m) {
  const std::string who = "fuzz rank";
  switch (peek_ctrl(m, who)) {
    case Ctrl::Hello:
      same_payload(m, encode_hello(decode_hello(m, who)), "Hello re-encodes differently");
      break;
    case Ctrl::Assign:
      same_payload(m, encode_assign(decode_assign(m, who)), "Assign re-encodes differently");
      break;
    case Ctrl::Ready:
      same_payload(m, encode_ready(decode_ready(m, who)), "Ready re-encodes differently");
      break;
    case Ctrl::Stats:
      same_payload(m, encode_stats(decode_stats(m, who)), "Stats re-encodes differently");
      break;
    case Ctrl::Error:
      same_payload(m, encode_error(decode_error(m, who)), "Error re-encodes differently");
      break;
    case Ctrl::Clock:
      same_payload(m, encode_clock(decode_clock(m, who)), "Clock re-encodes differently");
      break;
    case Ctrl::Trace:  // its size (variant 0) or its events (variant 1)
      if (m.payload.size() > 1 && m.payload[1] == 0)
        same_payload(m, encode_trace_size(decode_trace_size(m, who)), "Trace size re-encodes differently");
      else
        same_payload(m, encode_trace(decode_trace(m, who, 1 << 20)), "Trace re-encodes differently");
      break;
    case Ctrl::Snapshot:
      same_payload(m, encode_snapshot(decode_snapshot(m, who)), "Snapshot re-encodes differently");
      break;
    case Ctrl::Recover:
      same_payload(m, encode_recover(decode_recover(m, who)), "Recover re-encodes differently");
      break;
    case Ctrl::Restore:
      same_payload(m, encode_restore(decode_restore(m, who)), "Restore re-encodes differently");
      break;
    case Ctrl::Recovered:
      same_payload(m, encode_recovered(decode_recovered(m, who)), "Recovered re-encodes differently");
      break;
    case Ctrl::Shutdown:
      break;
  }
}

void step(const Message& m) {
  std::span<const uint8_t> hidden;
  StepMsg s = decode_step(m, "fuzz Step", &hidden);
  fuzz_check(hidden.size() % 4 == 0, "hidden payload not whole floats");
  std::vector<float> h(hidden.size() / 4);
  if (!h.empty()) std::memcpy(h.data(), hidden.data(), hidden.size());
  same_payload(m, encode_step(s, h.data(), h.size()), "Step re-encodes differently");
  int64_t covered = 0;
  for (const Segment& seg : s.segs) covered += seg.len;
  fuzz_check(covered == s.n_tokens(), "segments do not cover the tokens");
}

// The cluster-key handshake's readers on a message from someone without the key: whatever it
// holds, it must be refused (a MAC cannot be guessed), never accepted, never crash.
void join(std::span<const uint8_t> msg) {
  static const ClusterKey key{std::vector<uint8_t>(32, 0x5a), "fuzz key"};
  bool accepted = false;
  try {
    JoinCoordinator c(key);
    (void)c.challenge(msg);  // an Offer carries no MAC: any well-formed one gets a challenge
    (void)c.read_hello(msg);
    accepted = true;
  } catch (const JoinRefused&) {
  }
  fuzz_check(!accepted, "a Join Hello without the key's MAC was accepted");
  try {
    JoinWorker w(key);
    (void)w.offer();
    (void)w.answer_challenge(msg, kAnyRank, {});
    accepted = true;
  } catch (const JoinRefused&) {
  }
  fuzz_check(!accepted, "a Join Challenge without the key's MAC was accepted");
}

}  // namespace

void run_wire(Bytes b) {
  try {
    const Message m = decode_message(b, kMaxPayload);
    switch (m.header.msg_type()) {
      case MsgType::Hello:
      case MsgType::Shutdown:
      case MsgType::Error:
        control(m);
        break;
      case MsgType::Step:
        step(m);
        break;
      case MsgType::Result:
        same_payload(m, encode_result(decode_result(m, "fuzz Result")),
                     "Result re-encodes differently");
        break;
      case MsgType::Share:
        same_payload(m, encode_share(decode_share(m, "fuzz Share")),
                     "Share re-encodes differently");
        break;
      case MsgType::Heartbeat:
        same_payload(m, encode_heartbeat(0, decode_heartbeat(m, "fuzz Heartbeat")),
                     "Heartbeat re-encodes differently");
        break;
      case MsgType::Join:
        join(b);
        break;
    }
  } catch (const Error&) {
  }
}

namespace {

std::string str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

// A Join message of `step` shaped as the handshake sends it, with fixed bytes where the nonces
// and MACs go (a Hello: rank, a 3-byte worker address, a MAC).
std::vector<uint8_t> join_seed(uint8_t step, size_t fixed_bytes) {
  MessageWriter w(MsgType::Join, 0);
  w.put_u8(step);
  if (step == 3) {
    w.put_u32(kAnyRank);
    w.put_span(std::vector<uint8_t>{1, 2, 3});
    fixed_bytes = kMacBytes;
  }
  for (size_t i = 0; i < fixed_bytes; ++i) w.put_u8(uint8_t(i * 7 + 1));
  return w.finish();
}

}  // namespace

Seeds seeds_wire() {
  HelloMsg hello;
  hello.fingerprint = 0x1234;
  hello.free_memory = 1 << 30;
  hello.backend = "cpu";
  hello.host = "node1";
  AssignMsg assign;
  assign.n_stages = 2;
  assign.last = 3;
  assign.embed = 1;
  assign.max_slots = 8;
  assign.max_tokens = 64;
  ReadyMsg ready;
  ready.files = {"m/model.h5", "m/model-00001-of-00002.h5"};
  ready.load_seconds = 0.5;
  ready.numerics = "cpu";
  ready.backend = "cpu";
  StatsMsg stats;
  stats.compute_s = 1.5;
  stats.tokens = 100;
  stats.backend = "cpu";
  StepMsg st;
  st.step = 7;
  SlotOp reset{SlotOpKind::Reset, 1, 0, {}}, clone{SlotOpKind::Clone, 2, 1, {}}, sampling;
  sampling.kind = SlotOpKind::SetSampling;
  sampling.slot = 2;
  sampling.sampling.temperature = 0.8f;
  st.ops = {reset, clone, sampling};
  st.segs = {{1, 0, 3}, {2, 3, 1}};
  st.want = {kWantNothing, kWantSample};
  st.position = {0, 5};
  st.tokens = {10, 11, 12, 13};
  const std::vector<float> hidden(4 * 2, 0.25f);
  ResultMsg res;
  res.step = 7;
  res.segs = {{42, -0.5f, {}}, {-1, 0, {0.1f, 0.2f, 0.3f}}};
  ShareMsg offer;
  offer.host = "node1";
  offer.share_kind = "posix-shm";
  offer.slot_bytes = 4096;
  offer.buffers = {{1, 2, 3}, {4, 5}};
  offer.signals = {{6}, {7}};
  ShareMsg credit;
  credit.kind = ShareKind::Credit;
  credit.slot = 1;
  SnapshotMsg snap;
  snap.serial = 3;
  snap.stage = 1;
  snap.slot = 2;
  snap.state = {0.5f, -1e30f, 2.0f};
  snap.penalty = {{42, 1.5f}, {7, 0.25f}};
  RecoverMsg recover;
  recover.assign = assign;
  recover.assign.epoch = 1;
  recover.restores = 2;
  recover.body_bytes = 200;
  SlotRestore fresh, kept;
  fresh.slot = 1;
  kept.slot = 2;
  kept.fresh = 0;
  kept.state = {0.5f, 1.0f};
  kept.sampling.temperature = 0.9f;
  kept.penalty = {{5, 2.0f}};
  return {{"hello", str(encode_hello(hello))},
          {"assign", str(encode_assign(assign))},
          {"ready", str(encode_ready(ready))},
          {"stats", str(encode_stats(stats))},
          {"shutdown", str(encode_shutdown())},
          {"error", str(encode_error("stage 1: out of memory"))},
          {"snapshot", str(encode_snapshot(snap))},
          {"recover", str(encode_recover(recover))},
          {"restore", str(encode_restore({fresh, kept}))},
          {"recovered", str(encode_recovered({2, ready}))},
          {"heartbeat", str(encode_heartbeat(3, stats))},
          {"step", str(encode_step(st, hidden.data(), hidden.size()))},
          {"result", str(encode_result(res))},
          {"share-offer", str(encode_share(offer))},
          {"share-credit", str(encode_share(credit))},
          {"join-offer", str(join_seed(1, 32))},
          {"join-challenge", str(join_seed(2, 64))},
          {"join-hello", str(join_seed(3, 0))}};
}

}  // namespace rwkvpp::fuzz
