// The [slurm] suites' one-node Slurm (local_slurm.h).
#include "cluster/local_slurm.h"

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>

#include "catch.h"
#include "helpers.h"

namespace rwkvpp::test {

std::string repo_root() {
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path().string();
}

LocalSlurm::LocalSlurm(int cpus) {
  // Under /tmp directly: munged wants every directory above its socket to be searchable.
  dir = fmt::format("/tmp/rwkvpp-slurm-test-{}", getpid());
  int port = 20000 + 2 * (getpid() % 5000);
  script = repo_root() + "/cluster/local-slurm.sh";
  env = fmt::format(
      "export RWKVPP_SLURM_DIR={} RWKVPP_SLURM_PORT={} RWKVPP_SLURM_CPUS={} "
      "SLURM_CONF={}/slurm.conf RWKVPP={} OMPI_ALLOW_RUN_AS_ROOT=1 "
      "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; ",
      dir, port, cpus, dir, rwkvpp_binary());
}

LocalSlurm::~LocalSlurm() {
  if (up) run(env + script + " stop", 120);
}

bool LocalSlurm::start() {
  auto r = run(env + script + " start", 180);
  if (r.exit_code == 3) {
    WARN("SKIPPED: slurmctld cannot be started here: " << r.err);
    return false;
  }
  up = true;  // stop (and clean up) even when only part of it came up
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  return true;
}

std::string LocalSlurm::submit(const std::string& args, const std::string& vars) {
  auto r = run(env + vars + " sbatch --parsable " + args, 60);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::string id = r.out.substr(0, r.out.find_first_not_of("0123456789"));
  REQUIRE(!id.empty());
  return id;
}

std::string LocalSlurm::wait(const std::string& id, int timeout_s) {
  auto r = run(
      env + fmt::format("for i in $(seq 1 {}); do s=$(scontrol show job {} -o); "
                        "st=$(echo \"$s\" | sed -n 's/.*JobState=\\([A-Z_]*\\).*/\\1/p'); "
                        "case $st in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) "
                        "echo \"$st $(echo \"$s\" | sed -n 's/.* "
                        "ExitCode=\\([0-9:]*\\).*/\\1/p')\"; exit 0;; esac; "
                        "sleep 0.25; done; echo TIMEOUT-WAITING",
                        timeout_s * 4, id),
      timeout_s + 30);
  std::string s = r.out;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::string LocalSlurm::field(const std::string& id, const std::string& name) {
  auto r = run(
      env + fmt::format("scontrol show job {} -o | tr ' ' '\\n' | sed -n 's/^{}=//p'", id, name),
      30);
  std::string s = r.out;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

bool LocalSlurm::wait_requeued(const std::string& id, int restarts, int timeout_s) {
  auto r = run(env + fmt::format("for i in $(seq 1 {}); do case $(scontrol show job {} -o) in "
                                 "*JobState=PENDING*Restarts={}\\ *) exit 0;; esac; sleep 0.1; "
                                 "done; exit 9",
                                 timeout_s * 10, id, restarts),
               timeout_s + 30);
  return r.exit_code == 0;
}

void LocalSlurm::start_now(const std::vector<std::string>& ids) {
  // The requeue revoked the old run's credential, stamped in whole seconds, and a run started
  // within the same second is refused ("Job credential revoked": the job fails); 2 s later it
  // is not.
  std::string cmd = "sleep 2";
  for (const std::string& id : ids) cmd += " && scontrol update JobId=" + id + " StartTime=now";
  auto r = run(env + cmd, 30);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
}

}  // namespace rwkvpp::test
