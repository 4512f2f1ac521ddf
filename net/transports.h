// The constructors behind make_transport() (net/transport.h), one per transport folder; for
// make_transport() and for tests that want one transport by name.
#pragma once

#include <memory>

#include "net/transport.h"
#include "net/ucx/rendezvous.h"

namespace rwkvpp {

// MPI (net/mpi/): initialises MPI; under mpirun/srun, or a singleton otherwise.
std::unique_ptr<Transport> make_mpi_transport(int* argc, char*** argv);
// UCX (net/ucx/): the ranks meet through the TCP rendezvous that the environment names
// (RWKVPP_RANK, RWKVPP_SIZE, RWKVPP_RENDEZVOUS; net/ucx/rendezvous.h). Throws Error where this
// build has no UCX.
std::unique_ptr<Transport> make_ucx_transport();
// The same from an explicit rendezvous (a worker daemon, a coordinator's --listen); `job`, when
// given, receives what rank 0 sent every rank (with a cluster key).
std::unique_ptr<Transport> make_ucx_transport(const RendezvousConfig& cfg,
                                              std::vector<uint8_t>* job = nullptr);
// True when this build has the UCX transport.
bool have_ucx_transport();

}  // namespace rwkvpp
