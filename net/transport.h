// The transport seam: how ranks exchange byte messages. The step protocol (worker/, coordinator/)
// is written once on top of this; MPI (net/mpi/), UCX (net/ucx/) and an in-process loopback
// (net/local/) implement it, and a TCP (net/asio/) one can follow.
//
// Contract, for every implementation:
// - Every call is non-blocking ("must not block") except wait_some(), which blocks up to its
//   timeout, and abort(), which does not return.
// - post_send/post_recv return a request id; the buffer must stay valid and untouched until
//   test() has reported that request complete (or it was cancelled).
// - Messages between one pair of ranks with the same tag arrive in the order they were posted.
// - A rank may send to itself.
// - Failure of a peer (process gone, connection closed, or no sign of life within the liveness
//   timeout while a request to or from it is pending) is reported by test() throwing PeerLost,
//   which names the peer; the transport then stays usable only for shutdown: report the error
//   and call abort(). Exception (UCX only): requests to and from the other peers go on working,
//   which is what recovery builds on (docs/cluster.md); a request to or from the lost peer
//   keeps throwing, and cancel() retires it.
// - Liveness (MPI, UCX): a message or a transport heartbeat received from a peer is its sign of
//   life. Every rank sends heartbeats to every other rank while it drives its transport
//   (test(), wait_some()), every timeout/4, so a peer that is alive but has nothing to say is
//   not taken for lost; a stopped or stuck one is. The clock runs only while this rank waits
//   on the transport (inside wait_some(), or polling with test() at short intervals), so time
//   spent computing is not held against a silent peer. The timeout is RWKVPP_PEER_TIMEOUT_S
//   (default 20 s, 0 disables); see net/liveness.h. A rank that computes for longer than the
//   timeout without calling the transport looks stuck to peers waiting for it: keep each
//   step's compute below the timeout, or raise it.
// - A receive from kAnyPeer is never declared lost (there is no one to name): the caller
//   keeps its own deadline for it and decides whom to blame.
// - One thread drives a transport object at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/error.h"

namespace rwkvpp {

class PeerLost : public Error {
 public:
  PeerLost(int peer, const std::string& why)
      : Error("rank " + std::to_string(peer) + " was lost: " + why), peer_(peer) {}
  int peer() const { return peer_; }

 private:
  int peer_;
};

using RequestId = uint64_t;
inline constexpr int kAnyPeer = -1;

struct Completion {
  int peer = -1;  // the sender (for receives) or receiver (for sends)
  int tag = 0;
  size_t bytes = 0;  // bytes received (for receives); bytes sent (for sends)
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "mpi(ob1)", "mpi(ucx)", "ucx(tcp)", "local"
  // True when buffers may be device (GPU) memory (a CUDA-aware MPI).
  virtual bool device_memory() const = 0;

  virtual RequestId post_send(int peer, int tag, const void* buf, size_t bytes) = 0;
  // Tags are 0..32767 (the least MPI guarantees). A message over 2 GiB is an error.
  // Receives a message of at most `capacity` bytes from `peer` (or kAnyPeer) with `tag`. A
  // larger message is an error that test() throws as rwkvpp::Error (not PeerLost): the
  // message is consumed (the protocol sizes its buffers from negotiated limits).
  virtual RequestId post_recv(int peer, int tag, void* buf, size_t capacity) = 0;
  // True (and fills *c when given) when the request has completed; the id is then retired
  // (also when it throws because the request failed). Throws PeerLost when the peer is gone.
  // Testing an unknown or retired id is a programming error.
  virtual bool test(RequestId id, Completion* c = nullptr) = 0;
  // Cancels a pending receive (used at shutdown) and retires its id; the buffer is free on
  // return. On a send it only retires the id: the send may still complete, so its buffer must
  // stay valid until the transport is destroyed.
  virtual void cancel(RequestId id) = 0;
  // Drives progress and blocks until some request may have completed, or `timeout` passes, or
  // a pending request has outlived the liveness timeout (so that test() can report it).
  // Returns at once when no request is pending. Does not spin a core at 100% while waiting.
  virtual void wait_some(std::chrono::milliseconds timeout) = 0;
  // How long wait_some() polls (yielding the core, never sleeping) before it starts to nap:
  // short by default, so that ranks sharing cores stay polite; long on a rank that owns its
  // cores and whose stage hop latency matters (a GPU rank). Transports without naps ignore it.
  virtual void set_spin(std::chrono::microseconds) {}
  // True once the transport knows `peer` is gone (UCX: its endpoint's error handler ran),
  // whether or not a request to or from it is pending: how a coordinator learns of a lost rank
  // it exchanges nothing with. Transports that cannot tell say false (the liveness rule and
  // PeerLost still apply).
  virtual bool peer_failed(int /*peer*/) const { return false; }
  // Tells every other rank to stop (best effort) and ends the job with `code`: the way out of
  // an unrecoverable error under mpirun, so that no rank hangs.
  [[noreturn]] virtual void abort(int code) = 0;
};

// The transport for this process: the one RWKVPP_TRANSPORT names (ucx, mpi, local); unset, MPI
// when launched under mpirun/srun (initialising MPI), otherwise a single-rank local transport.
// (net/transports.h has one constructor per transport.)
std::unique_ptr<Transport> make_transport(int* argc, char*** argv);
// A single-rank in-process transport (rank 0 of 1; sends go to itself).
std::unique_ptr<Transport> make_local_transport();
// True when the environment says we were started by mpirun or srun.
bool launched_by_mpi();

}  // namespace rwkvpp
