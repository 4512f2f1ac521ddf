// How the ranks of a job started without MPI find each other: a small exchange over TCP
// (Boost.Asio). Rank 0 listens on HOST:PORT; every other rank connects (retrying until rank 0
// listens), sends its rank and one opaque blob (its UCP worker address); once all have joined,
// rank 0 answers each with the blobs of every rank, and the connections close.
//
// Both directions are wire messages (net/wire.h, type Hello: magic, protocol version, CRC):
//   rank -> 0   u32 rank, u32 size, span<u8> blob
//   0 -> rank   u32 size, then per rank: span<u8> blob
// so that a stray connection, a rank of another rwkvpp build or of another job size is refused
// with an error naming it. Every step is bounded by the timeout; errors name this rank and the
// address.
//
// With a cluster key (RWKVPP_CLUSTER_KEY, or --cluster-key of `rwkvpp worker` and of a
// coordinator's --listen), every connection first runs the challenge-response of
// net/control/join_handshake.h, and rank 0 also sends every rank a job (what to run: a worker
// daemon knows nothing else). A connection that fails it (no key, a wrong key, a replayed or
// changed message) is refused, logged with its address and counted, and rank 0 goes on waiting
// for the real ranks: on an open network, a stranger must not be able to stop a job from
// starting. A joiner may leave its rank to rank 0 (rank = -1: numbered in join order).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "net/control/cluster_key.h"

namespace rwkvpp {

struct RendezvousConfig {
  int rank = 0;      // -1 (with a key only): rank 0 numbers this process
  int size = 1;      // 0 (with rank -1): whatever size rank 0 has
  std::string host;  // rank 0's address (a name or an IP address); rank 0 binds to it
  uint16_t port = 0;
  std::chrono::milliseconds timeout{60000};  // for the whole exchange
  ClusterKey key;                            // empty: no handshake (a trusted network)
  std::vector<uint8_t> job;                  // rank 0, with a key: sent to every rank
};

struct RendezvousResult {
  int rank = 0;
  int size = 1;
  std::vector<std::vector<uint8_t>> blobs;  // every rank's blob, by rank
  std::vector<uint8_t> job;                 // from rank 0 (with a key; else empty)
  int refused = 0;                          // rank 0: connections refused (logged)
};

// The configuration from the environment:
//   RWKVPP_RANK, RWKVPP_SIZE        this rank and the job size (else OMPI_COMM_WORLD_RANK/SIZE,
//                                   else SLURM_PROCID/SLURM_STEP_NUM_TASKS, else 0 of 1)
//   RWKVPP_RENDEZVOUS=HOST:PORT     rank 0's listening address (required when size > 1;
//                                   "[::1]:PORT" for an IPv6 literal)
//   RWKVPP_RENDEZVOUS_TIMEOUT_S     bound on the whole exchange (default 60)
//   RWKVPP_CLUSTER_KEY=FILE         the cluster key (net/control/cluster_key.h); every rank
//                                   must have it when one has
// A malformed or missing value is an Error naming the variable.
RendezvousConfig rendezvous_from_env();

// Parses "HOST:PORT" (or "[V6]:PORT") into cfg.host/cfg.port; `what` names the source in errors.
void parse_host_port(const std::string& s, const std::string& what, RendezvousConfig& cfg);

// Runs the exchange: every rank's blob, indexed by rank (mine at the result's rank). With size 1
// it returns {mine} without touching the network. Throws Error on timeout or a bad peer (with a
// key, rank 0 refuses bad peers and goes on; the joiners throw).
RendezvousResult rendezvous_exchange(const RendezvousConfig& cfg, std::span<const uint8_t> mine);

}  // namespace rwkvpp
