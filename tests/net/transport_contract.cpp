// The transport contract checks (see transport_contract.h). Each check uses its own tags, so
// that a failure in one cannot feed stray messages to the next.
#include "transport_contract.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "net/wire.h"

namespace rwkvpp::test {

namespace {

using Bytes = std::vector<uint8_t>;

Bytes pattern(size_t n, uint32_t seed) {
  Bytes b(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& v : b) {
    x = x * 1664525u + 1013904223u;
    v = uint8_t(x >> 24);
  }
  return b;
}

Bytes u64_bytes(uint64_t v) {
  Bytes b(8);
  std::memcpy(b.data(), &v, 8);
  return b;
}

uint64_t bytes_u64(const Bytes& b) {
  uint64_t v = 0;
  std::memcpy(&v, b.data(), 8);
  return v;
}

class Suite {
 public:
  Suite(Transport& t, std::ostream& log) : t_(t), log_(log) {}

  void run(const char* name, const std::function<void()>& body) {
    try {
      body();
      ++passed_;
    } catch (const std::exception& e) {
      ++failed_;
      log_ << "contract: rank " << t_.rank() << " FAILED " << name << ": " << e.what() << "\n";
    }
  }
  void expect(bool ok, const std::string& what) {
    if (!ok) fail("expected {}", what);
  }
  int passed() const { return passed_; }
  int failed() const { return failed_; }

 private:
  Transport& t_;
  std::ostream& log_;
  int passed_ = 0;
  int failed_ = 0;
};

}  // namespace

Completion wait_for(Transport& t, RequestId id, const char* what, double timeout_s) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  Completion c;
  while (!t.test(id, &c)) {
    if (std::chrono::steady_clock::now() > deadline)
      fail("timed out after {} s waiting for {}", timeout_s, what);
    t.wait_some(std::chrono::milliseconds(50));
  }
  return c;
}

int run_transport_contract(Transport& t, std::ostream& log) {
  Suite s(t, log);
  const int me = t.rank(), n = t.size();
  const int next = (me + 1) % n, prev = (me + n - 1) % n;

  s.run("identity", [&] {
    s.expect(n >= 1 && me >= 0 && me < n, "0 <= rank < size");
    s.expect(!t.name().empty(), "a transport name");
  });

  s.run("self-send to a posted receive", [&] {
    Bytes out = pattern(37, 1), in(64, 0);
    RequestId r = t.post_recv(me, 10, in.data(), in.size());
    RequestId w = t.post_send(me, 10, out.data(), out.size());
    Completion c = wait_for(t, r, "a self-receive");
    wait_for(t, w, "a self-send");
    s.expect(c.peer == me && c.tag == 10 && c.bytes == out.size(), "peer/tag/bytes of self-send");
    s.expect(std::equal(out.begin(), out.end(), in.begin()), "self-sent bytes intact");
  });

  s.run("self-send before the receive is posted", [&] {
    Bytes out = pattern(100, 2), in(100, 0);
    RequestId w = t.post_send(me, 11, out.data(), out.size());
    RequestId r = t.post_recv(me, 11, in.data(), in.size());
    wait_for(t, w, "a self-send");
    Completion c = wait_for(t, r, "a self-receive");
    s.expect(c.bytes == 100 && in == out, "unexpected self message delivered intact");
  });

  s.run("zero-byte message", [&] {
    uint8_t dummy = 0;
    RequestId r = t.post_recv(prev, 12, &dummy, 1);
    RequestId w = t.post_send(next, 12, &dummy, 0);
    Completion c = wait_for(t, r, "a zero-byte receive");
    wait_for(t, w, "a zero-byte send");
    s.expect(c.bytes == 0 && c.peer == prev, "zero bytes from the previous rank");
  });

  s.run("ring: order kept per pair and tag", [&] {
    constexpr int kCount = 32;
    std::vector<Bytes> in(kCount, Bytes(8)), out(kCount);
    std::vector<RequestId> recvs, sends;
    for (int i = 0; i < kCount / 2; ++i)  // half posted before the sends, half after
      recvs.push_back(t.post_recv(prev, 13, in[size_t(i)].data(), 8));
    for (int i = 0; i < kCount; ++i) {
      out[size_t(i)] = u64_bytes(uint64_t(me) * 1000 + uint64_t(i));
      sends.push_back(t.post_send(next, 13, out[size_t(i)].data(), 8));
    }
    for (int i = kCount / 2; i < kCount; ++i)
      recvs.push_back(t.post_recv(prev, 13, in[size_t(i)].data(), 8));
    for (RequestId id : sends) wait_for(t, id, "a ring send");
    // Complete the receives in reverse, to show that test() order does not matter.
    for (int i = kCount - 1; i >= 0; --i) wait_for(t, recvs[size_t(i)], "a ring receive");
    for (int i = 0; i < kCount; ++i)
      s.expect(bytes_u64(in[size_t(i)]) == uint64_t(prev) * 1000 + uint64_t(i),
               fmt::format("message {} from rank {} in order", i, prev));
  });

  s.run("tags are separate streams", [&] {
    Bytes a = pattern(20, 3), b = pattern(30, 4), ina(64), inb(64);
    RequestId wa = t.post_send(next, 14, a.data(), a.size());
    RequestId wb = t.post_send(next, 15, b.data(), b.size());
    RequestId rb = t.post_recv(prev, 15, inb.data(), inb.size());  // the later tag first
    Completion cb = wait_for(t, rb, "tag 15");
    RequestId ra = t.post_recv(prev, 14, ina.data(), ina.size());
    Completion ca = wait_for(t, ra, "tag 14");
    wait_for(t, wa, "send tag 14");
    wait_for(t, wb, "send tag 15");
    s.expect(ca.tag == 14 && ca.bytes == 20 && std::equal(a.begin(), a.end(), ina.begin()),
             "tag 14 payload");
    s.expect(cb.tag == 15 && cb.bytes == 30 && std::equal(b.begin(), b.end(), inb.begin()),
             "tag 15 payload");
  });

  s.run("receive from any peer names the sender", [&] {
    uint64_t mine = uint64_t(me) + 7000;
    RequestId w = t.post_send(0, 16, &mine, sizeof(mine));
    if (me == 0) {
      std::vector<uint64_t> got(size_t(n), 0);
      std::vector<RequestId> rs;
      for (int i = 0; i < n; ++i) rs.push_back(t.post_recv(kAnyPeer, 16, &got[size_t(i)], 8));
      std::set<int> senders;
      for (int i = 0; i < n; ++i) {
        Completion c = wait_for(t, rs[size_t(i)], "an any-peer receive");
        s.expect(c.bytes == 8 && got[size_t(i)] == uint64_t(c.peer) + 7000,
                 fmt::format("payload matches the reported sender {}", c.peer));
        senders.insert(c.peer);
      }
      s.expect(int(senders.size()) == n, "one message from every rank");
    }
    wait_for(t, w, "a send to rank 0");
  });

  s.run("receive from any peer takes a later message to itself", [&] {
    uint64_t v = 77, got = 0;
    RequestId r = t.post_recv(kAnyPeer, 25, &got, 8);
    s.expect(!t.test(r), "nothing to receive yet");
    RequestId w = t.post_send(me, 25, &v, 8);
    Completion c = wait_for(t, r, "an any-peer receive of a self message");
    wait_for(t, w, "the self-send");
    s.expect(c.peer == me && c.bytes == 8 && got == 77, "the self message, naming this rank");
  });

  s.run("large message (8 MiB) intact", [&] {
    const size_t bytes = size_t(8) << 20;
    Bytes out = pattern(bytes, uint32_t(me) + 100), in(bytes + 16, 0);
    RequestId r = t.post_recv(prev, 17, in.data(), in.size());
    RequestId w = t.post_send(next, 17, out.data(), out.size());
    Completion c = wait_for(t, r, "an 8 MiB receive");
    wait_for(t, w, "an 8 MiB send");
    Bytes want = pattern(bytes, uint32_t(prev) + 100);
    s.expect(c.bytes == bytes && std::equal(want.begin(), want.end(), in.begin()),
             "8 MiB from the previous rank intact");
  });

  s.run("framed message through the wire codec", [&] {
    MessageWriter mw(MsgType::Step, uint64_t(me) + 42);
    mw.put_string("hello from rank " + std::to_string(me));
    std::vector<float> xs(33);
    std::iota(xs.begin(), xs.end(), float(me));
    mw.put_span(xs);
    Bytes msg = mw.finish(), in(4096);
    RequestId r = t.post_recv(prev, 18, in.data(), in.size());
    RequestId w = t.post_send(next, 18, msg.data(), msg.size());
    Completion c = wait_for(t, r, "a framed message");
    wait_for(t, w, "a framed send");
    Message m = decode_message(std::span<const uint8_t>(in.data(), c.bytes), 1 << 20);
    ByteReader rd(m.payload, "Step from rank " + std::to_string(prev));
    s.expect(m.header.msg_type() == MsgType::Step && m.header.seq == uint64_t(prev) + 42,
             "header type and sequence");
    s.expect(rd.get_string() == "hello from rank " + std::to_string(prev), "string field");
    auto ys = rd.get_vector<float>();
    rd.expect_end();
    s.expect(ys.size() == 33 && ys[0] == float(prev) && ys[32] == float(prev) + 32, "floats");
  });

  // A message over the receive's capacity, from itself and from the previous rank (the two
  // take different paths in MPI).
  auto oversize = [&](bool self) {
    const int to = self ? me : next, from = self ? me : prev, tag = self ? 19 : 24;
    Bytes out = pattern(100, 5), in(10, 0);
    RequestId r = t.post_recv(from, tag, in.data(), in.size());
    RequestId w = t.post_send(to, tag, out.data(), out.size());
    std::string what;
    try {
      wait_for(t, r, "an oversize receive");
    } catch (const PeerLost& e) {
      fail("oversize receive reported as PeerLost: {}", e.what());
    } catch (const Error& e) {
      what = e.what();
    }
    wait_for(t, w, "the oversize send");
    s.expect(what.find("larger than the 10-byte receive buffer") != std::string::npos,
             "an error naming the buffer size, got '" + what + "'");
    // The transport stays usable.
    RequestId r2 = t.post_recv(from, tag, in.data(), in.size());
    RequestId w2 = t.post_send(to, tag, out.data(), 5);
    wait_for(t, w2, "a send after the error");
    s.expect(wait_for(t, r2, "a receive after the error").bytes == 5, "usable after the error");
  };
  s.run("oversize message from itself is an Error, not PeerLost", [&] { oversize(true); });
  s.run("oversize message from another rank is an Error", [&] { oversize(false); });

  s.run("cancelled receive does not take a later message", [&] {
    Bytes ghost(16, 0xAA), in(16, 0), out = pattern(16, 6);
    RequestId r = t.post_recv(me, 20, ghost.data(), ghost.size());
    s.expect(!t.test(r), "nothing to receive yet");
    t.cancel(r);
    RequestId r2 = t.post_recv(me, 20, in.data(), in.size());
    RequestId w = t.post_send(me, 20, out.data(), out.size());
    wait_for(t, w, "a send after a cancel");
    Completion c = wait_for(t, r2, "a receive after a cancel");
    s.expect(c.bytes == 16 && in == out, "the new receive got the message");
    s.expect(ghost == Bytes(16, 0xAA), "the cancelled buffer is untouched");
  });

  s.run("wait_some returns once something completed", [&] {
    uint64_t v = 5, got = 0;
    RequestId r = t.post_recv(me, 21, &got, 8);
    RequestId w = t.post_send(me, 21, &v, 8);
    auto t0 = std::chrono::steady_clock::now();
    t.wait_some(std::chrono::milliseconds(5000));
    auto dt = std::chrono::steady_clock::now() - t0;
    s.expect(dt < std::chrono::milliseconds(2000), "wait_some did not sleep out its timeout");
    wait_for(t, r, "a self-receive");
    wait_for(t, w, "a self-send");
    s.expect(got == 5, "value delivered");
  });

  s.run("wait_some does not return again for an old completion", [&] {
    uint64_t v = 6, got = 0;
    RequestId w = t.post_send(me, 26, &v, 8);
    t.wait_some(std::chrono::milliseconds(5000));  // returns at once: the send is complete
    RequestId r = t.post_recv(me, 27, &got, 8);    // nothing will arrive for this one
    auto t0 = std::chrono::steady_clock::now();
    t.wait_some(std::chrono::milliseconds(300));
    auto dt = std::chrono::steady_clock::now() - t0;
    s.expect(dt >= std::chrono::milliseconds(250), "wait_some waited instead of spinning");
    t.cancel(r);
    RequestId r2 = t.post_recv(me, 26, &got, 8);
    wait_for(t, r2, "a self-receive");
    wait_for(t, w, "a self-send");
    s.expect(got == 6, "value delivered");
  });

  // Last: every rank reports to rank 0 and waits for its go, so no rank leaves (and MPI
  // finalises) while another still needs it.
  s.run("closing handshake", [&] {
    uint64_t ok = uint64_t(s.failed()), go = 0;
    RequestId w = t.post_send(0, 22, &ok, 8);
    if (me == 0) {
      std::vector<uint64_t> fails(static_cast<size_t>(n));
      std::vector<RequestId> rs;
      for (int i = 0; i < n; ++i) rs.push_back(t.post_recv(i, 22, &fails[size_t(i)], 8));
      for (RequestId id : rs) wait_for(t, id, "a closing report");
      std::vector<RequestId> gos;
      for (int i = 0; i < n; ++i) gos.push_back(t.post_send(i, 23, &fails[size_t(i)], 8));
      RequestId r = t.post_recv(0, 23, &go, 8);
      for (RequestId id : gos) wait_for(t, id, "a go send");
      wait_for(t, r, "the go message");
    } else {
      RequestId r = t.post_recv(0, 23, &go, 8);
      wait_for(t, r, "the go message");
    }
    wait_for(t, w, "the closing report");
  });

  log << "contract: rank " << me << "/" << n << " " << t.name() << ": " << s.passed()
      << " checks passed, " << s.failed() << " failed" << std::endl;
  return s.failed();
}

}  // namespace rwkvpp::test
