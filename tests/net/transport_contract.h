// The transport contract suite (net/transport.h), written once and run against every
// transport: in-process for the local transport (tests/net/test_transport.cpp) and on every
// rank of a job for MPI (under mpirun) and UCX (plain processes): tests/net/
// transport_contract_main.cpp, driven by tests/net/test_mpi_transport.cpp and
// tests/net/test_ucx_transport.cpp. It uses only the Transport interface, so a TCP transport
// plugs in the same way.
#pragma once

#include <ostream>

#include "net/transport.h"

namespace rwkvpp::test {

// Runs every contract check. Every rank of `t` must call it at the same time (the checks talk
// to each other). Writes one line per failed check to `log`, then a summary line
//   "contract: rank R/N <name>: K checks passed, F failed"
// and returns the number of failed checks on this rank (0: all passed). A check that waits
// for a message gives up after 30 s, so a broken transport fails instead of hanging.
int run_transport_contract(Transport& t, std::ostream& log);

// Waits until request `id` completes (test() + wait_some()), or fails after `timeout_s`.
Completion wait_for(Transport& t, RequestId id, const char* what, double timeout_s = 30);

}  // namespace rwkvpp::test
