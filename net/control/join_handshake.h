// The cluster-key handshake of a process joining a cluster without a launcher (rwkvpp worker
// --join, or a UCX rank with RWKVPP_CLUSTER_KEY). Four Join messages (net/wire.h) over the
// rendezvous connection, each starting with its step:
//
//   1 Offer      worker -> coordinator   nonce_w
//   2 Challenge  coordinator -> worker   nonce_c, HMAC(k, "rwkvpp join challenge" | nonce_w | nonce_c)
//   3 Hello      worker -> coordinator   rank wanted, blob, HMAC(k, "rwkvpp join hello" | nonce_w | nonce_c | its bytes)
//   4 Table      coordinator -> worker   rank given, size, every rank's blob, the job,
//                                        HMAC(k, "rwkvpp join table" | nonce_w | nonce_c | its bytes)
//
// Both sides prove they hold the key (the worker checks step 2 before it says anything about
// itself), the nonces of both sides make every exchange unique (a captured Hello does not
// answer a new Challenge), and the MACs cover everything the other side acts on (rank, worker
// address, address table, job). The session id, HMAC(k, "rwkvpp session" | nonce_w | nonce_c)
// cut to 16 bytes, is the same on both sides and known only to key holders.
//
// Pure functions over message bytes (no sockets): net/ucx/rendezvous.cpp drives them, the
// tests and the wire fuzz target call them directly. Every failure is a JoinRefused naming
// what was wrong (the caller adds the peer's address).
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "net/control/cluster_key.h"

namespace rwkvpp {

// A handshake that failed: bad key, replay, tampering, or a malformed message.
class JoinRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr uint32_t kAnyRank = 0xffffffffu;  // a worker daemon: the coordinator numbers it
inline constexpr uint64_t kMaxJoinMessage = uint64_t(256) << 20;

using SessionId = std::array<uint8_t, 16>;

struct JoinTable {
  int rank = 0;  // the rank this worker is
  int size = 0;
  std::vector<std::vector<uint8_t>> blobs;  // per rank
  std::vector<uint8_t> job;                 // what the coordinator tells every worker to run
};

// The joining side, one per attempt.
class JoinWorker {
 public:
  explicit JoinWorker(const ClusterKey& key);
  std::vector<uint8_t> offer();
  // Checks that the coordinator holds the key; then returns the Hello to send.
  std::vector<uint8_t> answer_challenge(std::span<const uint8_t> challenge_msg, uint32_t rank_wanted,
                                        std::span<const uint8_t> blob);
  JoinTable read_table(std::span<const uint8_t> table_msg) const;
  SessionId session() const;

 private:
  const ClusterKey& key_;
  Nonce nw_{}, nc_{};
  bool challenged_ = false;
};

// The coordinator's side of one connection.
class JoinCoordinator {
 public:
  explicit JoinCoordinator(const ClusterKey& key);
  // An Offer in, the Challenge out.
  std::vector<uint8_t> challenge(std::span<const uint8_t> offer_msg);
  struct Hello {
    uint32_t rank_wanted = kAnyRank;
    std::vector<uint8_t> blob;
  };
  // Checks the Hello's MAC against this connection's nonces.
  Hello read_hello(std::span<const uint8_t> hello_msg) const;
  std::vector<uint8_t> table(const JoinTable& t) const;
  SessionId session() const;

 private:
  const ClusterKey& key_;
  Nonce nw_{}, nc_{};
  bool offered_ = false;
};

}  // namespace rwkvpp
