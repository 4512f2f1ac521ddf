// make_transport(): which transport this process uses. RWKVPP_TRANSPORT names one; unset, the
// launcher decides (MPI under mpirun/srun, else the single-rank local transport), as before
// the UCX transport existed.
#include <cstdlib>
#include <string>

#include "net/transports.h"

namespace rwkvpp {

#if !defined(RWKVPP_HAVE_UCX)
bool have_ucx_transport() { return false; }
std::unique_ptr<Transport> make_ucx_transport() {
  fail("RWKVPP_TRANSPORT=ucx: this rwkvpp was built without UCX (install libucx-dev and "
       "rebuild)");
}
std::unique_ptr<Transport> make_ucx_transport(const RendezvousConfig&, std::vector<uint8_t>*) {
  fail("a cluster without a launcher (--listen, rwkvpp worker --join) needs the UCX transport: "
       "this rwkvpp was built without UCX (install libucx-dev and rebuild)");
}
#else
bool have_ucx_transport() { return true; }
#endif

std::unique_ptr<Transport> make_transport(int* argc, char*** argv) {
  const char* e = std::getenv("RWKVPP_TRANSPORT");
  std::string kind = e ? e : "";
  if (kind.empty()) {
    if (launched_by_mpi()) return make_mpi_transport(argc, argv);
    return make_local_transport();
  }
  if (kind == "ucx") return make_ucx_transport();
  if (kind == "mpi") return make_mpi_transport(argc, argv);
  if (kind == "local") return make_local_transport();
  fail("RWKVPP_TRANSPORT='{}' is not a transport: ucx, mpi or local (unset: MPI under mpirun or "
       "srun, else local)",
       kind);
}

}  // namespace rwkvpp
