// A network of the test's own, for tests where every "box" must be a host of its own: each box
// a network namespace (ip netns) with one interface, eth0 at 10.213.0.(i+1)/24, the other end
// of its veth pair on a bridge in a hub namespace. Nothing outside these namespaces is touched:
// the host's own interfaces, routes and addresses stay as they are. The destructor deletes every
// namespace (and with them the veths and the bridge), also when the test failed; the
// constructor first deletes what a crashed earlier run left (named after a pid that is gone).
// Needs root and iproute2; available() says whether this machine allows it.
#pragma once

#include <string>
#include <vector>

namespace rwkvpp::test {

class NetLab {
 public:
  // True when namespaces can be made here; else false and *why (not root, no ip, refused).
  static bool available(std::string* why);
  // `boxes` namespaces on one bridge. Throws (after deleting what it made) when setup fails.
  explicit NetLab(int boxes);
  ~NetLab();
  NetLab(const NetLab&) = delete;
  NetLab& operator=(const NetLab&) = delete;

  std::string ns(int box) const;    // the namespace's name
  std::string addr(int box) const;  // 10.213.0.(box+1)
  // `argv` run inside box's namespace (ip netns exec; it execs, so the pid stays the same).
  std::vector<std::string> in(int box, const std::vector<std::string>& argv) const;
  // Shell text that cuts the link between boxes a and b only, both ways (a blackhole route in
  // each for the other's address), as a firewall rule dropping their traffic would; every
  // other box still reaches both.
  std::string cut(int a, int b) const;
  // Shell text that takes box's interface down: it reaches no one, and no one reaches it.
  std::string link_down(int box) const;

 private:
  std::string prefix_;  // rwkvpp-t<pid>-
  int boxes_ = 0;
  std::vector<std::string> made_;  // namespaces, in the order made
};

}  // namespace rwkvpp::test
