// A cluster of worker daemons without mpirun ([ucx][cluster-join]): `rwkvpp generate --listen
// --workers 2 --cluster-key K` and two `rwkvpp worker --join` processes on 127.0.0.1 give the
// single-process output byte for byte (the CPU backend is partition-invariant), while a worker
// with another key and a plain UCX rank without any key try to join first: both are refused,
// the coordinator logs each refusal with the peer's address, and the job still starts with the
// real workers. Also the coordinator's refusals of a missing or too-open key.
#include <sys/stat.h>

#include <string>
#include <vector>

#include "catch.h"
#include "helpers.h"
#include "launch_ranks.h"
#include "net/transports.h"
#include "small_model.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::vector<std::string> generate_args() { return small_generate_args(); }
std::string shell(const std::vector<std::string>& a) { return shell_line(a); }

size_t count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t p = s.find(part); p != std::string::npos; p = s.find(part, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("worker daemons joined with the cluster key run the pipeline; strangers are refused",
          "[ucx][cluster-join]") {
  if (!have_ucx_transport()) {
    WARN("SKIPPED: this build has no UCX transport");
    return;
  }
  TempDir d;
  const std::string key = d / "cluster.key", wrong = d / "wrong.key";
  REQUIRE(run(rwkvpp_binary() + " keygen " + key, 30).exit_code == 0);
  REQUIRE(run(rwkvpp_binary() + " keygen " + wrong, 30).exit_code == 0);
  auto single = run(shell(generate_args()), 120);
  INFO(single.err);
  REQUIRE(single.exit_code == 0);
  REQUIRE(single.out.size() > 10);

  const std::string addr = "127.0.0.1:" + std::to_string(free_port());
  std::vector<std::string> coord = generate_args();
  for (const char* a : {"--listen", addr.c_str(), "--workers", "2", "--cluster-key", key.c_str(),
                        "--join-timeout", "60"})
    coord.push_back(a);
  const std::string bin = rwkvpp_binary();
  // The real workers wait 3 s, so that the strangers reach the coordinator first.
  std::string worker = "sleep 3; exec " + bin + " worker --join " + addr + " --cluster-key " + key +
                       " --threads 1 --timeout 60";
  std::vector<std::vector<std::string>> procs = {
      coord,
      {"/bin/sh", "-c", worker},
      {"/bin/sh", "-c", worker},
      {"/bin/sh", "-c", "sleep 1; exec " + bin + " worker --join " + addr + " --cluster-key " + wrong +
                            " --timeout 20"},
      {"/bin/sh", "-c", "sleep 1; RWKVPP_TRANSPORT=ucx RWKVPP_RANK=1 RWKVPP_SIZE=3 RWKVPP_RENDEZVOUS=" +
                            addr + " RWKVPP_RENDEZVOUS_TIMEOUT_S=20 exec " + shell(generate_args())}};
  RankRun r = run_processes(procs, {{}, 180, 30});
  INFO(r.all());
  REQUIRE(r.exit_codes[0] == 0);
  CHECK(r.out[0] == single.out);
  CHECK(r.exit_codes[1] == 0);
  CHECK(r.exit_codes[2] == 0);
  CHECK(contains(r.err[1] + r.err[2], "joined " + addr + " as rank 1 of 3"));
  CHECK(contains(r.err[1] + r.err[2], "joined " + addr + " as rank 2 of 3"));
  // The worker with another key: the coordinator's challenge fails its MAC, it says so and stops.
  CHECK(r.exit_codes[3] != 0);
  CHECK(contains(r.err[3], "the coordinator does not hold this cluster key"));
  // The key-less rank: refused, told nothing.
  CHECK(r.exit_codes[4] != 0);
  CHECK(contains(r.err[4], "rank 0 may have refused this process"));
  CHECK(count(r.err[0], "refused the process at 127.0.0.1:") == 2);
  CHECK(contains(r.err[0], "a Hello message where the cluster-key handshake expects Join Offer"));
}

TEST_CASE("--listen needs a cluster key that only its owner reads", "[ucx][cluster-join]") {
  if (!have_ucx_transport()) {
    WARN("SKIPPED: this build has no UCX transport");
    return;
  }
  TempDir d;
  const std::string addr = " --listen 127.0.0.1:" + std::to_string(free_port()) + " --workers 1";
  auto r = run(shell(generate_args()) + addr, 60);
  CHECK(r.exit_code != 0);
  CHECK(contains(r.err, "needs --cluster-key FILE"));
  const std::string key = d / "k";
  write_file(key, std::string(64, 'z'));
  REQUIRE(::chmod(key.c_str(), 0644) == 0);
  r = run(shell(generate_args()) + addr + " --cluster-key " + key, 60);
  CHECK(r.exit_code != 0);
  CHECK(contains(r.err, "mode 0644 lets others read or change it"));
  r = run(rwkvpp_binary() + " worker --join 127.0.0.1:1 --cluster-key " + key, 60);
  CHECK(r.exit_code != 0);
  CHECK(contains(r.err, "mode 0644"));
}
