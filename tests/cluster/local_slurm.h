// The [slurm] suites' own one-node Slurm: cluster/local-slurm.sh started in a folder and on a
// port of this test process, and the client commands the suites use on it (submit, wait, read a
// job's fields, release a requeued job). Every command is bounded; the destructor stops Slurm.
#pragma once

#include <string>
#include <vector>

namespace rwkvpp::test {

// The repository's root (cluster/ is below it).
std::string repo_root();

struct LocalSlurm {
  std::string dir;     // RWKVPP_SLURM_DIR: every file of this Slurm
  std::string env;     // "export ...; ": the environment of every Slurm command and job
  std::string script;  // cluster/local-slurm.sh
  bool up = false;

  // `cpus`: the CPUs the node claims (RWKVPP_SLURM_CPUS), whatever the machine has.
  explicit LocalSlurm(int cpus = 8);
  ~LocalSlurm();
  LocalSlurm(const LocalSlurm&) = delete;
  LocalSlurm& operator=(const LocalSlurm&) = delete;

  // Starts Slurm. False (with a WARN: the test then returns, skipped) where slurmctld cannot
  // be started at all; any later failure fails the test.
  bool start();
  // Submits `args` with sbatch (`vars`: the submitting shell's extra environment); returns the
  // job id.
  std::string submit(const std::string& args, const std::string& vars = {});
  // Waits for the job to end; returns "STATE exit" (e.g. "COMPLETED 0:0"), or "TIMEOUT-WAITING".
  std::string wait(const std::string& id, int timeout_s = 240);
  // A field of `scontrol show job` ("Restarts", "JobState", ...); "" when absent.
  std::string field(const std::string& id, const std::string& name);
  // Waits (up to `timeout_s`) until the job is pending again after its `restarts`-th requeue.
  // False when it is not by then.
  bool wait_requeued(const std::string& id, int restarts, int timeout_s = 90);
  // Lets requeued, pending jobs start now: Slurm holds a requeued job back for about two
  // minutes (its begin time), and the tests do not wait for that. Takes 2 s (see the .cpp).
  void start_now(const std::vector<std::string>& ids);
};

}  // namespace rwkvpp::test
