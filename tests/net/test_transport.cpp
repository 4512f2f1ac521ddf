// Transport tests that run in-process ([net]): the contract suite against the local
// transport, its own edge cases, the liveness rule with synthetic clocks, and how
// make_transport()/launched_by_mpi() read the environment. No MPI is initialised here.
#include <chrono>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>

#include "catch.h"
#include "common/env_options.h"
#include "net/liveness.h"
#include "net/transport.h"
#include "transport_contract.h"

using namespace rwkvpp;
using namespace std::chrono_literals;

namespace {

// Sets an environment variable for the scope of one test, restoring the old value after. The
// RWKVPP_* switches are parsed once per process (common/env_options.h), so each change is
// followed by reload_env_options(), the hook for tests that set variables in-process.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
    reload_env_options();
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_.c_str(), old_.c_str(), 1);
    else
      unsetenv(name_.c_str());
    reload_env_options();
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

bool throws_containing(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

}  // namespace

TEST_CASE("local transport passes the transport contract", "[net]") {
  auto t = make_local_transport();
  std::ostringstream log;
  int failed = test::run_transport_contract(*t, log);
  INFO(log.str());
  REQUIRE(failed == 0);
  REQUIRE(log.str().find("contract: rank 0/1 local:") != std::string::npos);
}

TEST_CASE("local transport: rank 0 of 1, peers and tags checked", "[net]") {
  auto t = make_local_transport();
  REQUIRE(t->rank() == 0);
  REQUIRE(t->size() == 1);
  REQUIRE(t->name() == "local");
  REQUIRE_FALSE(t->device_memory());
  char b[4] = {};
  REQUIRE(throws_containing([&] { t->post_send(1, 0, b, 4); }, "rank 1"));
  REQUIRE(throws_containing([&] { t->post_recv(2, 0, b, 4); }, "rank 2"));
  REQUIRE(throws_containing([&] { t->post_send(0, -1, b, 4); }, "tag -1"));
  REQUIRE(throws_containing([&] { t->post_send(0, 40000, b, 4); }, "tag 40000"));
  // Unknown ids are a programming error, reported as an internal error.
  REQUIRE(throws_containing([&] { t->test(12345); }, "internal error"));
}

TEST_CASE("local transport: test() is non-blocking and a retired id is gone", "[net]") {
  auto t = make_local_transport();
  uint32_t v = 0;
  RequestId r = t->post_recv(0, 3, &v, 4);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000; ++i) REQUIRE_FALSE(t->test(r));
  REQUIRE(std::chrono::steady_clock::now() - t0 < 1s);
  uint32_t x = 99;
  RequestId w = t->post_send(0, 3, &x, 4);
  x = 0;  // the local transport copies at post time
  REQUIRE(t->test(w));
  Completion c;
  REQUIRE(t->test(r, &c));
  REQUIRE(v == 99);
  REQUIRE(c.peer == 0);
  REQUIRE(c.tag == 3);
  REQUIRE(c.bytes == 4);
  REQUIRE(throws_containing([&] { t->test(r); }, "unknown or retired"));
  // With nothing pending, wait_some returns at once.
  t0 = std::chrono::steady_clock::now();
  t->wait_some(2000ms);
  REQUIRE(std::chrono::steady_clock::now() - t0 < 500ms);
}

TEST_CASE("local transport: several receives of one tag fill in posting order", "[net]") {
  auto t = make_local_transport();
  uint32_t a = 0, b = 0, one = 1, two = 2;
  RequestId ra = t->post_recv(kAnyPeer, 5, &a, 4);
  RequestId rb = t->post_recv(0, 5, &b, 4);
  t->post_send(0, 5, &one, 4);
  t->post_send(0, 5, &two, 4);
  REQUIRE(t->test(rb));
  REQUIRE(t->test(ra));
  REQUIRE(a == 1);
  REQUIRE(b == 2);
}

TEST_CASE("liveness: only waiting time counts against a silent peer", "[net]") {
  using Clock = Liveness::Clock;
  Clock::time_point t0{};
  Liveness l(3, 5000ms, t0);
  Liveness::Stamp posted = l.stamp();
  // Polling in short steps: the waiting clock follows the wall clock.
  for (int i = 1; i <= 40; ++i) l.advance(t0 + i * 100ms, false);
  REQUIRE(l.silence(2, posted) == 4000ms);
  REQUIRE_FALSE(l.expired(2, posted));
  // A long busy gap (computing) does not count...
  l.advance(t0 + 30s, false);
  REQUIRE_FALSE(l.expired(2, posted));
  // ...but time spent inside wait_some does.
  l.advance(t0 + 32s, true);
  REQUIRE(l.expired(2, posted));
  // A message from peer 1 resets its silence, not peer 2's.
  l.heard_from(1);
  REQUIRE_FALSE(l.expired(1, posted));
  REQUIRE(l.expired(2, posted));
  // A request posted now is fresh even for a peer that has been silent.
  REQUIRE_FALSE(l.expired(2, l.stamp()));
  // Timeout 0 disables expiry.
  Liveness off(2, 0ms, t0);
  off.advance(t0 + 1h, true);
  REQUIRE_FALSE(off.expired(1, Liveness::Stamp{0}));
}

TEST_CASE("liveness timeout comes from RWKVPP_PEER_TIMEOUT_S", "[net]") {
  {
    ScopedEnv e("RWKVPP_PEER_TIMEOUT_S", nullptr);
    REQUIRE(peer_timeout_from_env() == 20000ms);
  }
  {
    ScopedEnv e("RWKVPP_PEER_TIMEOUT_S", "2.5");
    REQUIRE(peer_timeout_from_env() == 2500ms);
  }
  {
    ScopedEnv e("RWKVPP_PEER_TIMEOUT_S", "0");
    REQUIRE(peer_timeout_from_env() == 0ms);
  }
  for (const char* bad : {"abc", "5s", "-1"}) {
    ScopedEnv e("RWKVPP_PEER_TIMEOUT_S", bad);
    REQUIRE(throws_containing([] { peer_timeout_from_env(); }, "RWKVPP_PEER_TIMEOUT_S"));
  }
}

TEST_CASE("launched_by_mpi reads the launcher's environment", "[net]") {
  ScopedEnv a("OMPI_COMM_WORLD_SIZE", nullptr), b("PMI_SIZE", nullptr), c("PMI_RANK", nullptr),
      d("PMIX_RANK", nullptr), e("MV2_COMM_WORLD_SIZE", nullptr), f("SLURM_PROCID", nullptr),
      g("SLURM_STEP_NUM_TASKS", nullptr), h("SLURM_NTASKS", nullptr);
  REQUIRE_FALSE(launched_by_mpi());
  {
    // A plain run makes the local transport and never touches MPI.
    auto t = make_transport(nullptr, nullptr);
    REQUIRE(t->name() == "local");
  }
  {
    ScopedEnv x("OMPI_COMM_WORLD_SIZE", "3");
    REQUIRE(launched_by_mpi());
  }
  {
    ScopedEnv x("PMIX_RANK", "0");
    REQUIRE(launched_by_mpi());
  }
  {
    ScopedEnv x("PMI_SIZE", "2");
    REQUIRE(launched_by_mpi());
  }
  {
    // An sbatch script sees SLURM_PROCID and SLURM_NTASKS but is not a multi-task step.
    ScopedEnv x("SLURM_PROCID", "0"), y("SLURM_NTASKS", "4");
    REQUIRE_FALSE(launched_by_mpi());
    ScopedEnv z("SLURM_STEP_NUM_TASKS", "4");
    REQUIRE(launched_by_mpi());
  }
}
