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
// address. This is the seed of the later control channel (issue 20: join, heartbeats, the
// cluster-key handshake), which is why it stays apart from the UCX code.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace rwkvpp {

struct RendezvousConfig {
  int rank = 0;
  int size = 1;
  std::string host;  // rank 0's address (a name or an IP address); rank 0 binds to it
  uint16_t port = 0;
  std::chrono::milliseconds timeout{60000};  // for the whole exchange
};

// The configuration from the environment:
//   RWKVPP_RANK, RWKVPP_SIZE        this rank and the job size (else OMPI_COMM_WORLD_RANK/SIZE,
//                                   else SLURM_PROCID/SLURM_STEP_NUM_TASKS, else 0 of 1)
//   RWKVPP_RENDEZVOUS=HOST:PORT     rank 0's listening address (required when size > 1;
//                                   "[::1]:PORT" for an IPv6 literal)
//   RWKVPP_RENDEZVOUS_TIMEOUT_S     bound on the whole exchange (default 60)
// A malformed or missing value is an Error naming the variable.
RendezvousConfig rendezvous_from_env();

// Parses "HOST:PORT" (or "[V6]:PORT") into cfg.host/cfg.port; `what` names the source in errors.
void parse_host_port(const std::string& s, const std::string& what, RendezvousConfig& cfg);

// Runs the exchange: returns every rank's blob, indexed by rank (mine at cfg.rank). With size 1
// it returns {mine} without touching the network. Throws Error on timeout or a bad peer.
std::vector<std::vector<uint8_t>> rendezvous_exchange(const RendezvousConfig& cfg,
                                                      std::span<const uint8_t> mine);

}  // namespace rwkvpp
