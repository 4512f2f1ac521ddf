// rwkvpp_hop_bench: one-message round trips between ranks 0 and 1 through whichever transport
// make_transport() picks (MPI under mpirun, UCX with RWKVPP_TRANSPORT=ucx), at given message
// sizes, the way a stage hop uses it (post_recv, post_send, test + wait_some). Driven by
// scripts/bench_transport.sh; prints one line per size:
//   hop <transport> bytes=B iters=N rtt_us median=M p10=A p90=B
//
//   rwkvpp_hop_bench [--bytes 10240,327680,2621440] [--iters 2000] [--warmup 200] [--spin-us US]
// --spin-us sets Transport::set_spin() (default: the transport's own, 200 us; a GPU rank's
// 50000 shows the transport without the wake-up from a nap).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "net/transport.h"

using namespace rwkvpp;

namespace {

using Clock = std::chrono::steady_clock;

void wait_done(Transport& t, RequestId id) {
  while (!t.test(id)) t.wait_some(std::chrono::milliseconds(100));
}

std::vector<size_t> parse_sizes(const char* s) {
  std::vector<size_t> v;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    v.push_back(size_t(std::strtoull(p, &end, 10)));
    p = (*end == ',') ? end + 1 : end;
    if (end == p && *p) break;
  }
  return v;
}

double pct(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> sizes = {10240, 10240 * 32, 10240 * 256};
  int iters = 2000, warmup = 200;
  long spin_us = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--bytes") == 0) sizes = parse_sizes(argv[i + 1]);
    else if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--warmup") == 0) warmup = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--spin-us") == 0) spin_us = std::atol(argv[i + 1]);
  }
  std::unique_ptr<Transport> t;
  try {
    t = make_transport(&argc, &argv);
    if (t->size() != 2) fail("rwkvpp_hop_bench runs on exactly 2 ranks, not {}", t->size());
    if (spin_us >= 0) t->set_spin(std::chrono::microseconds(spin_us));
    const int me = t->rank(), other = 1 - me;
    for (size_t bytes : sizes) {
      std::vector<uint8_t> out(bytes, uint8_t(me + 1)), in(bytes);
      std::vector<double> rtt;
      for (int i = 0; i < warmup + iters; ++i) {
        auto t0 = Clock::now();
        if (me == 0) {
          RequestId r = t->post_recv(other, 1, in.data(), in.size());
          wait_done(*t, t->post_send(other, 1, out.data(), out.size()));
          wait_done(*t, r);
        } else {
          wait_done(*t, t->post_recv(other, 1, in.data(), in.size()));
          wait_done(*t, t->post_send(other, 1, out.data(), out.size()));
        }
        if (i >= warmup) rtt.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
      if (in[0] != uint8_t(other + 1) || in[bytes - 1] != uint8_t(other + 1))
        fail("rank {}: the {}-byte message arrived wrong", me, bytes);
      if (me == 0)
        std::printf("hop %s spin_us=%ld bytes=%zu iters=%d rtt_us median=%.1f p10=%.1f p90=%.1f\n", t->name().c_str(),
                    spin_us, bytes, iters, pct(rtt, 0.5), pct(rtt, 0.1), pct(rtt, 0.9));
    }
    // Leave together, so that no rank tears down while the other still sends.
    uint64_t bye = 1, got = 0;
    RequestId r = t->post_recv(other, 2, &got, 8);
    wait_done(*t, t->post_send(other, 2, &bye, 8));
    wait_done(*t, r);
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "rank " << (t ? t->rank() : -1) << ": " << e.what() << std::endl;
    if (t) t->abort(4);
    return 4;
  }
}
