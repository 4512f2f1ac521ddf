// A network of namespaces for tests (netns.h).
#include "netns.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "common/error.h"
#include "helpers.h"

namespace rwkvpp::test {

namespace {

constexpr const char* kIp = "/usr/sbin/ip";
constexpr const char* kStem = "rwkvpp-t";

void must(const std::string& cmd) {
  RunResult r = run(cmd, 20);
  if (r.exit_code != 0) fail("netns setup: '{}' failed ({}): {}", cmd, r.exit_code, r.err);
}

// Deletes namespaces of earlier runs whose process is gone (a test killed before its cleanup).
void delete_stale() {
  std::istringstream list(run(std::string(kIp) + " netns list", 10).out);
  for (std::string line; std::getline(list, line);) {
    const std::string name = line.substr(0, line.find(' '));
    if (name.rfind(kStem, 0) != 0) continue;
    const long pid = std::atol(name.c_str() + std::char_traits<char>::length(kStem));
    if (pid > 0 && (kill(pid_t(pid), 0) == 0 || errno != ESRCH)) continue;
    run(std::string(kIp) + " netns del " + name, 10);
  }
}

}  // namespace

bool NetLab::available(std::string* why) {
  if (geteuid() != 0) {
    *why = "not root (network namespaces need CAP_NET_ADMIN)";
    return false;
  }
  if (access(kIp, X_OK) != 0) {
    *why = std::string(kIp) + " is missing (iproute2)";
    return false;
  }
  const std::string probe = std::string(kStem) + std::to_string(getpid()) + "-probe";
  RunResult r = run(std::string(kIp) + " netns add " + probe, 10);
  run(std::string(kIp) + " netns del " + probe, 10);
  if (r.exit_code != 0) {
    *why = "ip netns add was refused: " + r.err;
    return false;
  }
  return true;
}

NetLab::NetLab(int boxes) : prefix_(std::string(kStem) + std::to_string(getpid()) + "-"), boxes_(boxes) {
  RWKVPP_CHECK(boxes >= 1 && boxes < 250, "NetLab: 1..249 boxes");
  delete_stale();
  const std::string ip = kIp, hub = prefix_ + "hub";
  try {
    must(ip + " netns add " + hub);
    made_.push_back(hub);
    must(ip + " -n " + hub + " link add br0 type bridge");
    must(ip + " -n " + hub + " link set br0 up");
    for (int b = 0; b < boxes; ++b) {
      must(ip + " netns add " + ns(b));
      made_.push_back(ns(b));
      const std::string v = "v" + std::to_string(b);
      must(ip + " -n " + hub + " link add " + v + " type veth peer name eth0 netns " + ns(b));
      must(ip + " -n " + hub + " link set " + v + " master br0 up");
      must(ip + " -n " + ns(b) + " addr add " + addr(b) + "/24 dev eth0");
      must(ip + " -n " + ns(b) + " link set eth0 up");
      must(ip + " -n " + ns(b) + " link set lo up");
    }
  } catch (...) {
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) run(ip + " netns del " + *it, 10);
    throw;
  }
}

NetLab::~NetLab() {
  // Processes still inside a namespace keep it alive but unnamed; run_processes() has ended
  // them by now. Boxes first: their veths go with them, then the hub and its bridge.
  for (auto it = made_.rbegin(); it != made_.rend(); ++it) run(std::string(kIp) + " netns del " + *it, 10);
}

std::string NetLab::ns(int box) const { return prefix_ + std::to_string(box); }

std::string NetLab::addr(int box) const { return "10.213.0." + std::to_string(box + 1); }

std::vector<std::string> NetLab::in(int box, const std::vector<std::string>& argv) const {
  std::vector<std::string> a = {kIp, "netns", "exec", ns(box)};
  a.insert(a.end(), argv.begin(), argv.end());
  return a;
}

std::string NetLab::cut(int a, int b) const {
  const std::string ip = kIp;
  return ip + " -n " + ns(a) + " route add blackhole " + addr(b) + "/32 && " + ip + " -n " + ns(b) +
         " route add blackhole " + addr(a) + "/32";
}

std::string NetLab::link_down(int box) const {
  return std::string(kIp) + " -n " + ns(box) + " link set eth0 down";
}

}  // namespace rwkvpp::test
