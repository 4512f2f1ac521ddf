// Starts the ranks of a UCX job as plain child processes on 127.0.0.1 (fork/exec, no launcher):
// rank i gets RWKVPP_TRANSPORT=ucx, RWKVPP_RANK=i, RWKVPP_SIZE=n and RWKVPP_RENDEZVOUS on a
// port that was free a moment ago, plus the caller's variables. Waits for them with a deadline
// and always kills what is left (SIGKILL, after SIGCONT for a stopped one), so that a test
// cannot leave processes behind or hang.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace rwkvpp::test {

struct RankRun {
  std::vector<int> exit_codes;  // per rank: the exit status, or 128 + signal
  std::vector<bool> killed;     // per rank: still running at the end, and killed by us
  std::vector<std::string> out, err;
  double seconds = 0;  // until rank 0 exited (or the deadline)
  std::string all() const;  // every rank's stdout and stderr, labelled, for INFO()
};

struct RankOptions {
  std::vector<std::string> env;  // "NAME=value" for every rank
  double timeout_s = 120;        // the whole run
  // Once rank 0 has exited, how long the others may take before they are killed.
  double linger_s = 10;
};

// A TCP port on 127.0.0.1 that was free when asked (the kernel's choice).
int free_port();

// Runs `argv` (argv[0] a path) as `n` ranks.
RankRun run_ranks(int n, const std::vector<std::string>& argv, const RankOptions& opt = {});

// Runs process i as argvs[i] (argv[0] a path), with our environment less launcher variables,
// plus opt.env, and no rank variables (a coordinator and its worker daemons); results indexed
// like argvs, process 0's exit starting the linger.
RankRun run_processes(const std::vector<std::vector<std::string>>& argvs, const RankOptions& opt = {});

}  // namespace rwkvpp::test
