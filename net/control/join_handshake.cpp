// The Join messages of the cluster-key handshake (see join_handshake.h).
#include "net/control/join_handshake.h"

#include <cstring>

#include "common/error.h"
#include "net/wire.h"

namespace rwkvpp {

namespace {

enum class Step : uint8_t { Offer = 1, Challenge = 2, Hello = 3, Table = 4 };

std::span<const uint8_t> label(const char* s) {
  return {reinterpret_cast<const uint8_t*>(s), std::strlen(s)};
}

const char* step_name(Step s) {
  switch (s) {
    case Step::Offer: return "Offer";
    case Step::Challenge: return "Challenge";
    case Step::Hello: return "Hello";
    case Step::Table: return "Table";
  }
  return "?";
}

// The payload of a Join message of step `want`, after its step byte; JoinRefused otherwise.
std::span<const uint8_t> join_payload(std::span<const uint8_t> msg, Step want) {
  Message m;
  try {
    m = decode_message(msg, kMaxJoinMessage);
  } catch (const Error& e) {
    throw JoinRefused(fmt::format("not a Join {} message: {}", step_name(want), e.what()));
  }
  if (m.header.msg_type() != MsgType::Join)
    throw JoinRefused(fmt::format("a {} message where the cluster-key handshake expects Join {} "
                                  "(a process without --cluster-key, or another protocol)",
                                  msg_type_name(m.header.type), step_name(want)));
  if (m.payload.empty() || m.payload[0] != uint8_t(want))
    throw JoinRefused(fmt::format("Join step {} where step {} ({}) was expected",
                                  m.payload.empty() ? 0 : int(m.payload[0]), int(want),
                                  step_name(want)));
  return m.payload.subspan(1);
}

// Splits `body` into the bytes the MAC covers and the MAC at its end, and checks it.
std::span<const uint8_t> check_tail_mac(std::span<const uint8_t> body, const ClusterKey& key,
                                        const char* what, const Nonce& nw, const Nonce& nc,
                                        const char* refusal) {
  if (body.size() < kMacBytes) throw JoinRefused(fmt::format("Join {} without its MAC", what));
  auto covered = body.first(body.size() - kMacBytes);
  Mac want = hmac_sha256(key, {label(what), nw, nc, covered});
  if (!macs_equal(want, body.last(kMacBytes))) throw JoinRefused(refusal);
  return covered;
}

template <typename Fn>
auto reading(const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    throw JoinRefused(fmt::format("malformed Join {}: {}", what, e.what()));
  }
}

SessionId derive_session(const ClusterKey& key, const Nonce& nw, const Nonce& nc) {
  Mac m = hmac_sha256(key, {label("rwkvpp session"), nw, nc});
  SessionId s{};
  std::memcpy(s.data(), m.data(), s.size());
  return s;
}

// A Join message of `step` whose payload ends with the MAC of the bytes before it.
std::vector<uint8_t> with_tail_mac(Step step, const ByteWriter& body, const ClusterKey& key,
                                   const char* what, const Nonce& nw, const Nonce& nc) {
  MessageWriter w(MsgType::Join, 0);
  w.put_u8(uint8_t(step));
  w.put_raw(body.bytes().data(), body.size());
  Mac mac = hmac_sha256(key, {label(what), nw, nc, body.bytes()});
  w.put_raw(mac.data(), mac.size());
  return w.finish();
}

}  // namespace

JoinWorker::JoinWorker(const ClusterKey& key) : key_(key), nw_(random_nonce()) {}

std::vector<uint8_t> JoinWorker::offer() {
  MessageWriter w(MsgType::Join, 0);
  w.put_u8(uint8_t(Step::Offer));
  w.put_raw(nw_.data(), nw_.size());
  return w.finish();
}

std::vector<uint8_t> JoinWorker::answer_challenge(std::span<const uint8_t> msg, uint32_t rank_wanted,
                                                  std::span<const uint8_t> blob) {
  auto p = join_payload(msg, Step::Challenge);
  if (p.size() != kNonceBytes + kMacBytes)
    throw JoinRefused(fmt::format("Join Challenge of {} bytes, not {}", p.size(), kNonceBytes + kMacBytes));
  std::memcpy(nc_.data(), p.data(), kNonceBytes);
  Mac want = hmac_sha256(key_, {label("rwkvpp join challenge"), nw_, nc_});
  if (!macs_equal(want, p.subspan(kNonceBytes)))
    throw JoinRefused("the coordinator does not hold this cluster key (its challenge's MAC does "
                      "not match; a different key file, or not the coordinator)");
  challenged_ = true;
  ByteWriter b;
  b.put_u32(rank_wanted);
  b.put_span(blob);
  return with_tail_mac(Step::Hello, b, key_, "rwkvpp join hello", nw_, nc_);
}

JoinTable JoinWorker::read_table(std::span<const uint8_t> msg) const {
  RWKVPP_CHECK(challenged_, "JoinWorker::read_table before answer_challenge");
  auto covered = check_tail_mac(join_payload(msg, Step::Table), key_, "rwkvpp join table", nw_, nc_,
                                "the coordinator's address table fails its MAC (changed on the "
                                "way, or not from the coordinator this worker authenticated)");
  return reading("Table", [&] {
    ByteReader r(covered, "Join Table");
    JoinTable t;
    t.rank = int(r.get_u32());
    t.size = int(r.get_u32());
    if (t.size < 1 || t.size > (1 << 20) || t.rank < 1 || t.rank >= t.size)
      fail("rank {} of {} is not a worker's place in a job", t.rank, t.size);
    for (int i = 0; i < t.size; ++i) t.blobs.push_back(r.get_vector<uint8_t>());
    t.job = r.get_vector<uint8_t>();
    r.expect_end();
    return t;
  });
}

SessionId JoinWorker::session() const { return derive_session(key_, nw_, nc_); }

JoinCoordinator::JoinCoordinator(const ClusterKey& key) : key_(key), nc_(random_nonce()) {}

std::vector<uint8_t> JoinCoordinator::challenge(std::span<const uint8_t> msg) {
  auto p = join_payload(msg, Step::Offer);
  if (p.size() != kNonceBytes)
    throw JoinRefused(fmt::format("Join Offer of {} bytes, not {}", p.size(), kNonceBytes));
  std::memcpy(nw_.data(), p.data(), kNonceBytes);
  offered_ = true;
  MessageWriter w(MsgType::Join, 0);
  w.put_u8(uint8_t(Step::Challenge));
  w.put_raw(nc_.data(), nc_.size());
  Mac mac = hmac_sha256(key_, {label("rwkvpp join challenge"), nw_, nc_});
  w.put_raw(mac.data(), mac.size());
  return w.finish();
}

JoinCoordinator::Hello JoinCoordinator::read_hello(std::span<const uint8_t> msg) const {
  if (!offered_) throw JoinRefused("a Join Hello before any Offer");
  auto covered = check_tail_mac(join_payload(msg, Step::Hello), key_, "rwkvpp join hello", nw_, nc_,
                                "its Hello fails the MAC: it does not hold this cluster key, or "
                                "it replays a handshake captured earlier");
  return reading("Hello", [&] {
    ByteReader r(covered, "Join Hello");
    Hello h;
    h.rank_wanted = r.get_u32();
    h.blob = r.get_vector<uint8_t>();
    r.expect_end();
    return h;
  });
}

std::vector<uint8_t> JoinCoordinator::table(const JoinTable& t) const {
  RWKVPP_CHECK(offered_, "JoinCoordinator::table before challenge");
  ByteWriter b;
  b.put_u32(uint32_t(t.rank));
  b.put_u32(uint32_t(t.size));
  for (const auto& blob : t.blobs) b.put_span(blob);
  b.put_span(t.job);
  return with_tail_mac(Step::Table, b, key_, "rwkvpp join table", nw_, nc_);
}

SessionId JoinCoordinator::session() const { return derive_session(key_, nw_, nc_); }

}  // namespace rwkvpp
