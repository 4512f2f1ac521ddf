// The in-process transport: rank 0 of 1, for single-process runs and for testing the step
// protocol without mpirun. Every message goes to itself through a Loopback (net/loopback.h):
// a send copies its bytes at once (so it completes immediately); a receive takes the oldest
// queued message with its tag, or waits for the next matching send.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unordered_map>

#include "net/loopback.h"
#include "net/transport.h"

namespace rwkvpp {

namespace {

class LocalTransport final : public Transport {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }
  bool device_memory() const override { return false; }

  RequestId post_send(int peer, int tag, const void* buf, size_t bytes) override {
    check_args(peer, tag, false);
    RWKVPP_CHECK(bytes == 0 || buf != nullptr, "null send buffer");
    RequestId id = next_id_++;
    // The bytes are copied now, so the send is complete and the caller's buffer free at once.
    requests_[id] = Request{.done = true, .tag = tag, .bytes = bytes, .error = {}};
    if (auto d = loop_.send(tag, buf, bytes, nullptr)) complete(*d, tag);
    return id;
  }

  RequestId post_recv(int peer, int tag, void* buf, size_t capacity) override {
    check_args(peer, tag, true);
    RWKVPP_CHECK(capacity == 0 || buf != nullptr, "null receive buffer");
    RequestId id = next_id_++;
    requests_[id] = Request{.tag = tag, .bytes = capacity, .error = {}};
    if (auto d = loop_.take(id, tag, buf, capacity))
      complete(*d, tag);
    else
      loop_.wait(id, tag, buf, capacity);
    return id;
  }

  bool test(RequestId id, Completion* c) override {
    auto it = requests_.find(id);
    RWKVPP_CHECK(it != requests_.end(), "test() on an unknown or retired request");
    if (!it->second.done) return false;
    Request r = std::move(it->second);
    requests_.erase(it);
    if (!r.error.empty()) throw Error(r.error);
    if (c) *c = Completion{0, r.tag, r.bytes};
    return true;
  }

  void cancel(RequestId id) override {
    auto it = requests_.find(id);
    RWKVPP_CHECK(it != requests_.end(), "cancel() on an unknown or retired request");
    loop_.forget(id);
    requests_.erase(it);
  }

  void wait_some(std::chrono::milliseconds timeout) override {
    // Nothing progresses behind the caller's back: a request is either complete already, or
    // waits for a send that this same thread has yet to post. Return at once for a completion
    // that no earlier call returned for; otherwise sleep out the timeout while something is
    // pending, so that a polling loop does not spin.
    bool fresh = false, pending = false;
    for (auto& [id, r] : requests_) {
      if (r.done && !r.announced) fresh = r.announced = true;
      pending |= !r.done;
    }
    if (!fresh && pending) std::this_thread::sleep_for(timeout);
  }

  [[noreturn]] void abort(int code) override {
    std::fflush(nullptr);
    std::_Exit(code);
  }

 private:
  struct Request {
    bool done = false;
    bool announced = false;  // a wait_some() has returned since it completed
    int tag = 0;
    size_t bytes = 0;   // sent, or received (the receive capacity until then)
    std::string error;  // set when the request completed with an error, thrown by test()
  };

  static void check_args(int peer, int tag, bool is_recv) {
    if (peer != 0 && !(is_recv && peer == kAnyPeer))
      fail("cannot {} rank {}: the local transport has only rank 0",
           is_recv ? "receive from" : "send to", peer);
    // The range every MPI supports, so that a protocol bug shows up without mpirun too.
    if (tag < 0 || tag > 32767) fail("tag {} is outside the valid range 0..32767", tag);
  }

  // Completes the receive that got a message; an oversize message is consumed and reported
  // as an error, as MPI does with a truncated receive.
  void complete(const Loopback::Delivery& d, int tag) {
    Request& r = requests_.at(d.id);
    if (d.truncated)
      r.error = fmt::format(
          "message of {} bytes from rank 0 (tag {}) is larger than the {}-byte receive buffer",
          d.bytes, tag, r.bytes);
    r.done = true;
    r.bytes = d.bytes;
  }

  RequestId next_id_ = 1;
  std::unordered_map<RequestId, Request> requests_;
  Loopback loop_;
};

}  // namespace

std::unique_ptr<Transport> make_local_transport() { return std::make_unique<LocalTransport>(); }

}  // namespace rwkvpp
