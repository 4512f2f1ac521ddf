// Child-process ranks of a UCX job (see launch_ranks.h).
#include "launch_ranks.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "common/error.h"
#include "helpers.h"

extern char** environ;

namespace rwkvpp::test {

int free_port() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  RWKVPP_CHECK(s >= 0, "socket()");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  bool ok = bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
            getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(s);
  RWKVPP_CHECK(ok, "could not find a free port on 127.0.0.1");
  return ntohs(a.sin_port);
}

std::string RankRun::all() const {
  std::string s;
  for (size_t i = 0; i < out.size(); ++i)
    s += "--- rank " + std::to_string(i) + " (exit " + std::to_string(exit_codes[i]) +
         (killed[i] ? ", killed" : "") + ") stdout:\n" + out[i] + "--- rank " +
         std::to_string(i) + " stderr:\n" + err[i];
  return s;
}

namespace {

// The environment of a child: ours, less launcher variables and the ones we set, plus them.
std::vector<std::string> child_env(std::vector<std::string> set, const std::vector<std::string>& extra) {
  set.insert(set.end(), extra.begin(), extra.end());
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string v = *e;
    bool overridden = false;
    for (const auto& s : set)
      if (v.compare(0, s.find('=') + 1, s, 0, s.find('=') + 1) == 0) overridden = true;
    // Launcher variables would make a child think it runs under mpirun.
    if (v.rfind("OMPI_", 0) == 0 || v.rfind("PMIX_", 0) == 0 || v.rfind("PMI_", 0) == 0)
      overridden = true;
    if (!overridden) env.push_back(v);
  }
  env.insert(env.end(), set.begin(), set.end());
  return env;
}

std::vector<std::string> rank_env(int rank, int n, int port, const std::vector<std::string>& extra) {
  return child_env({"RWKVPP_TRANSPORT=ucx", "RWKVPP_RANK=" + std::to_string(rank),
                    "RWKVPP_SIZE=" + std::to_string(n),
                    "RWKVPP_RENDEZVOUS=127.0.0.1:" + std::to_string(port)},
                   extra);
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> p;
  for (auto& s : v) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

}  // namespace

namespace {

// Runs process i as argvs[i] with envs[i]; process 0 is the one whose exit starts the linger.
RankRun run_all(std::vector<std::vector<std::string>> argvs, std::vector<std::vector<std::string>> envs,
                const RankOptions& opt) {
  using Clock = std::chrono::steady_clock;
  TempDir dir;
  const int n = int(argvs.size());
  std::vector<pid_t> pids(size_t(n), -1);
  RankRun r;
  r.exit_codes.assign(size_t(n), -1);
  r.killed.assign(size_t(n), false);
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    // Everything the child needs is prepared before fork(): it only opens, dup2s and execs.
    std::vector<char*> cargs = c_strings(argvs[size_t(i)]);
    std::vector<char*> cenv = c_strings(envs[size_t(i)]);
    std::string out = dir / ("out" + std::to_string(i)), err = dir / ("err" + std::to_string(i));
    pid_t pid = fork();
    RWKVPP_CHECK(pid >= 0, "fork()");
    if (pid == 0) {
      int fo = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int fe = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int fi = open("/dev/null", O_RDONLY);
      if (fo < 0 || fe < 0 || fi < 0) _exit(126);
      dup2(fi, 0);
      dup2(fo, 1);
      dup2(fe, 2);
      execve(cargs[0], cargs.data(), cenv.data());
      _exit(127);
    }
    pids[size_t(i)] = pid;
  }
  auto secs = [](double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  const Clock::time_point deadline = t0 + secs(opt.timeout_s);
  Clock::time_point linger_until = Clock::time_point::max();
  int left = n;
  while (left > 0 && Clock::now() < std::min(deadline, linger_until)) {
    bool reaped = false;
    for (int i = 0; i < n; ++i) {
      if (pids[size_t(i)] < 0) continue;
      int st = 0;
      if (waitpid(pids[size_t(i)], &st, WNOHANG) != pids[size_t(i)]) continue;
      r.exit_codes[size_t(i)] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      pids[size_t(i)] = -1;
      --left;
      reaped = true;
      if (i == 0) {
        r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        linger_until = Clock::now() + secs(opt.linger_s);
      }
    }
    if (!reaped) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (pids[0] >= 0) r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (int i = 0; i < n; ++i) {
    pid_t p = pids[size_t(i)];
    if (p < 0) continue;
    kill(p, SIGKILL);
    kill(p, SIGCONT);  // a stopped process dies only once it runs again
    int st = 0;
    waitpid(p, &st, 0);
    r.exit_codes[size_t(i)] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    r.killed[size_t(i)] = true;
  }
  for (int i = 0; i < n; ++i) {
    r.out.push_back(read_file(dir / ("out" + std::to_string(i))));
    r.err.push_back(read_file(dir / ("err" + std::to_string(i))));
  }
  return r;
}

}  // namespace

RankRun run_ranks(int n, const std::vector<std::string>& argv, const RankOptions& opt) {
  const int port = free_port();
  std::vector<std::vector<std::string>> envs;
  for (int i = 0; i < n; ++i) envs.push_back(rank_env(i, n, port, opt.env));
  return run_all(std::vector<std::vector<std::string>>(size_t(n), argv), envs, opt);
}

RankRun run_processes(const std::vector<std::vector<std::string>>& argvs, const RankOptions& opt) {
  std::vector<std::vector<std::string>> envs(argvs.size(), child_env({}, opt.env));
  return run_all(argvs, envs, opt);
}

}  // namespace rwkvpp::test
