// rwkvpp_transport_contract: runs the transport contract on every rank of a job, so that the
// MPI transport (with whichever PML mpirun selects) and the UCX one (ranks started as plain
// processes with RWKVPP_TRANSPORT=ucx) are held to the same checks as the local one. Started by
// tests/net/test_mpi_transport.cpp and tests/net/test_ucx_transport.cpp; MPI is initialised
// here, never inside the Catch2 process.
//
//   mpirun -np 3 rwkvpp_transport_contract                  contract checks; exit 0 when all pass
//   mpirun -np 3 rwkvpp_transport_contract --stall-rank 2   liveness: after one round of hellos,
//                                                           rank 2 stops itself (SIGSTOP); rank 0
//                                                           must report PeerLost naming it and
//                                                           abort the job (exit code 3)
//   ... --kill-rank 2                                       the same with SIGKILL (UCX: the
//                                                           endpoint's error handler names it)
//   mpirun -np 3 rwkvpp_transport_contract --quiet-s 3      rank 0 says nothing to the others for
//                                                           3 s; with a shorter liveness timeout
//                                                           they must not take it for lost
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>

#include "net/transport.h"
#include "transport_contract.h"

using namespace rwkvpp;

namespace {

// Round one: every rank sends a hello to rank 0, which answers each (so every link has carried a
// message). Then `victim` raises `sig`; the others send a second hello. Rank 0 waits for them
// all and must see PeerLost naming `victim`; it then aborts the job (exit code 3). The other
// ranks wait for a reply that never comes, until the abort ends them.
int failure_check(Transport& t, int victim, int sig) {
  const int me = t.rank(), n = t.size();
  uint64_t hello = uint64_t(me), go = 0;
  RequestId w1 = t.post_send(0, 6, &hello, sizeof(hello));
  if (me == 0) {
    std::vector<uint64_t> got(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) test::wait_for(t, t.post_recv(i, 6, &got[size_t(i)], 8), "hello 1");
    for (int i = 0; i < n; ++i) test::wait_for(t, t.post_send(i, 5, &hello, 8), "an answer");
  }
  test::wait_for(t, t.post_recv(0, 5, &go, 8), "rank 0's answer");
  test::wait_for(t, w1, "hello 1");
  if (me == victim) {
    std::cout << "rank " << me << ": stopping myself (" << (sig == SIGKILL ? "SIGKILL" : "SIGSTOP")
              << ")" << std::endl;
    raise(sig);
    return 0;
  }
  RequestId w = t.post_send(0, 7, &hello, sizeof(hello));
  if (me == 0) {
    std::vector<uint64_t> got(static_cast<size_t>(n));
    std::vector<RequestId> rs;
    for (int i = 0; i < n; ++i) rs.push_back(t.post_recv(i, 7, &got[size_t(i)], 8));
    auto t0 = std::chrono::steady_clock::now();
    try {
      for (RequestId id : rs) test::wait_for(t, id, "a hello", 120);
      std::cout << "rank 0: every rank answered; expected rank " << victim << " to be lost"
                << std::endl;
      return 1;
    } catch (const PeerLost& e) {
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::cout << "rank 0: PeerLost after " << s << " s: peer " << e.peer() << ": " << e.what()
                << std::endl;
      t.abort(3);
    }
  }
  uint64_t reply = 0;
  RequestId r = t.post_recv(0, 8, &reply, 8);
  test::wait_for(t, r, "a reply from rank 0", 120);
  test::wait_for(t, w, "the hello");
  return 1;
}

// Rank 0 stays silent towards the others for `quiet_s` seconds while it drives its transport
// (waiting on something else); the others wait for a message from it meanwhile. With a
// liveness timeout shorter than the silence, they must still not take it for lost: the
// transport's own heartbeats show that it is alive.
int quiet_check(Transport& t, double quiet_s) {
  const int me = t.rank();
  uint64_t go = 1;
  if (me == 0) {
    uint64_t never = 0;
    RequestId idle = t.post_recv(0, 10, &never, 8);  // something to wait on
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(quiet_s);
    while (std::chrono::steady_clock::now() < until) {
      if (t.test(idle)) return 1;
      t.wait_some(std::chrono::milliseconds(100));
    }
    t.cancel(idle);
    std::vector<RequestId> ws;
    for (int p = 1; p < t.size(); ++p) ws.push_back(t.post_send(p, 9, &go, 8));
    for (RequestId w : ws) test::wait_for(t, w, "a go message");
  } else {
    uint64_t got = 0;
    RequestId r = t.post_recv(0, 9, &got, 8);
    test::wait_for(t, r, "the go message from rank 0", 60);
  }
  // Every rank reports to rank 0, so that none finalises while another still needs it.
  uint64_t done = 1, in = 0;
  RequestId w = t.post_send(0, 11, &done, 8);
  if (me == 0)
    for (int p = 0; p < t.size(); ++p) test::wait_for(t, t.post_recv(p, 11, &in, 8), "done");
  test::wait_for(t, w, "the done message");
  std::cout << "quiet peer: rank " << me << " ok" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<Transport> t;
  try {
    t = make_transport(&argc, &argv);
    int victim = -1, sig = 0;
    double quiet_s = 0;
    for (int i = 1; i < argc; ++i) {
      if (std::strcmp(argv[i], "--stall-rank") == 0 && i + 1 < argc) {
        victim = std::atoi(argv[++i]);
        sig = SIGSTOP;
      } else if (std::strcmp(argv[i], "--kill-rank") == 0 && i + 1 < argc) {
        victim = std::atoi(argv[++i]);
        sig = SIGKILL;
      } else if (std::strcmp(argv[i], "--quiet-s") == 0 && i + 1 < argc) {
        quiet_s = std::atof(argv[++i]);
      } else {
        std::cerr << "usage: rwkvpp_transport_contract [--stall-rank R | --kill-rank R | "
                     "--quiet-s SECONDS]\n";
        return 2;
      }
    }
    if (quiet_s > 0) return quiet_check(*t, quiet_s);
    if (victim >= 0) {
      if (victim == 0 || victim >= t->size()) {
        std::cerr << "--stall-rank/--kill-rank must name a rank in 1.." << t->size() - 1 << "\n";
        return 2;
      }
      return failure_check(*t, victim, sig);
    }
    int failed = test::run_transport_contract(*t, std::cout);
    return failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "rank " << (t ? t->rank() : -1) << ": " << e.what() << std::endl;
    if (t) t->abort(4);
    return 4;
  }
}
