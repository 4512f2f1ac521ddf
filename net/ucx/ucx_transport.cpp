// The UCX transport: UCP's tag API directly (one worker per rank, one endpoint per peer), for
// jobs started as plain processes that find each other through the TCP rendezvous
// (net/ucx/rendezvous.h). UCX picks the wire by itself (shared memory, TCP, RDMA, CUDA IPC).
//
// - Tags: the 64-bit UCX tag carries [63..56] a channel (data, heartbeat, abort), [47..16] the
//   sender's rank and [15..0] the caller's tag; a receive from kAnyPeer masks the sender bits,
//   and the sender of any message is read back from the tag it came with.
// - Requests are UCX's own (no callbacks): test() checks them with ucp_request_check_status()
//   after driving ucp_worker_progress(); a receive never completes inside post_recv
//   (UCP_OP_ATTR_FLAG_NO_IMM_CMPL), so every receive takes the same path.
// - Failures: endpoints use UCP_ERR_HANDLING_MODE_PEER (RWKVPP_UCX_ERRORS=none turns it off),
//   whose error handler marks the peer lost, so that a request to or from it throws PeerLost;
//   UCX fails the sends itself. A peer that is stopped or stuck is found by the liveness rule
//   of net/liveness.h, fed by messages and by heartbeats sent every timeout/4, as in MPI.
// - Self-sends go through a Loopback (net/loopback.h), like the MPI transport's.
// - abort() sends an abort message to every peer (best effort, bounded), then _Exit()s; a rank
//   that receives one ends with the same code inside its next transport call, as mpirun's
//   MPI_Abort would end it.
// - wait_some() polls (yielding) for the spin time, then sleeps on the worker's event file
//   descriptor (ucp_worker_arm + poll), waking at least every 50 ms for heartbeats.
#include <poll.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/env_options.h"
#include "net/liveness.h"
#include "net/loopback.h"
#include "net/transport.h"
#include "net/transports.h"
#include "net/ucx/rendezvous.h"

namespace rwkvpp {

namespace {

using Clock = std::chrono::steady_clock;

enum Channel : uint64_t { kData = 0, kBeat = 1, kAbort = 2 };
constexpr int kMaxTag = 32767;
constexpr ucp_tag_t kSenderBits = uint64_t(0xFFFFFFFF) << 16;
constexpr ucp_tag_t kFullMask = ~ucp_tag_t(0);
constexpr ucp_tag_t kAnySenderMask = ~kSenderBits;

ucp_tag_t make_tag(Channel ch, int sender, int tag) {
  return (uint64_t(ch) << 56) | (uint64_t(uint32_t(sender)) << 16) | uint64_t(uint16_t(tag));
}
int tag_sender(ucp_tag_t t) { return int(uint32_t((t & kSenderBits) >> 16)); }

[[noreturn]] void ucx_fail(const char* what, ucs_status_t st) {
  fail("UCX transport: {} failed: {}", what, ucs_status_string(st));
}

// Owners of UCX's handles, released in reverse order of creation.
struct ContextFree {
  void operator()(ucp_context_h c) const { ucp_cleanup(c); }
};
struct WorkerFree {
  void operator()(ucp_worker_h w) const { ucp_worker_destroy(w); }
};
using UcpContext = std::unique_ptr<std::remove_pointer_t<ucp_context_h>, ContextFree>;
using UcpWorker = std::unique_ptr<std::remove_pointer_t<ucp_worker_h>, WorkerFree>;

bool peer_errors_from_env() { return env_options().net.ucx_peer_errors; }  // RWKVPP_UCX_ERRORS

// The transports of an endpoint's lanes ("tcp", "sysv", "cma"), from ucp_ep_print_info(): UCX
// 1.13 has no query for them. Empty when the format is not understood.
std::vector<std::string> lane_transports(ucp_ep_h ep) {
  char* text = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&text, &len);
  if (!f) return {};
  ucp_ep_print_info(ep, f);
  std::fclose(f);
  std::vector<std::string> out;
  std::string s(text ? text : "", len);
  std::free(text);
  for (size_t at = s.find("lane["); at != std::string::npos; at = s.find("lane[", at + 1)) {
    size_t colon = s.find("]:", at);
    if (colon == std::string::npos) break;
    size_t b = s.find_first_not_of(" ", colon + 2);
    if (b == std::string::npos) break;
    b = s.find_first_not_of("0123456789", b);
    if (b == std::string::npos || s[b] != ':') continue;
    size_t e = s.find_first_of("/ \n", b + 1);
    if (e != std::string::npos && e > b + 1) out.push_back(s.substr(b + 1, e - b - 1));
  }
  return out;
}

class UcxTransport final : public Transport {
 public:
  // `job`, when given, receives what rank 0 sent with the table (a worker daemon's orders).
  explicit UcxTransport(const RendezvousConfig& cfg, std::vector<uint8_t>* job = nullptr)
      : rank_(cfg.rank), size_(cfg.size), liveness_(1, peer_timeout_from_env(), Clock::now()) {
    bool peer_errors = peer_errors_from_env();
    open_worker();
    std::vector<uint8_t> mine = worker_address();
    RendezvousResult rv = rendezvous_exchange(cfg, mine);
    rank_ = rv.rank;
    size_ = rv.size;
    if (job) *job = std::move(rv.job);
    const std::vector<std::vector<uint8_t>>& table = rv.blobs;
    liveness_ = Liveness(size_, peer_timeout_from_env(), Clock::now());
    peers_.resize(size_t(size_));
    for (int p = 0; p < size_; ++p) {
      peers_[size_t(p)].owner = this;
      peers_[size_t(p)].rank = p;
      if (p != rank_) connect(p, table[size_t(p)], peer_errors);
    }
    start_control();
  }

  ~UcxTransport() override {
    for (auto& [id, r] : requests_)
      if (r.ucx) release(r.ucx, r.is_recv);
    requests_.clear();
    release(beat_recv_, true);
    release(abort_recv_, true);
    for (Peer& p : peers_) release(p.beat, false);
    close_endpoints();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool device_memory() const override { return device_memory_; }

  std::string name() const override {
    if (!name_.empty()) return name_;
    std::vector<std::string> tls;
    for (const Peer& p : peers_) {
      if (!p.ep || p.failure != UCS_OK) continue;
      for (auto& t : lane_transports(p.ep))
        if (std::find(tls.begin(), tls.end(), t) == tls.end()) tls.push_back(t);
    }
    if (tls.empty()) return "ucx";
    std::string s = "ucx(";
    for (size_t i = 0; i < tls.size(); ++i) s += (i ? "," : "") + tls[i];
    return name_ = s + ")";
  }

  RequestId post_send(int peer, int tag, const void* buf, size_t bytes) override {
    check_args(peer, tag, bytes, false);
    RequestId id = next_id_++;
    Request& r = requests_[id] = new_request(false, peer, tag, bytes);
    if (peer == rank_) {
      r.done = true;
      r.bytes = bytes;
      auto d = loop_.send(tag, buf, bytes, [this](RequestId rid) { return withdraw(rid); });
      if (d) complete_self(*d);
      return id;
    }
    if (peers_[size_t(peer)].failure != UCS_OK) return id;  // test() reports the loss
    ucp_request_param_t p{};
    ucs_status_ptr_t s = ucp_tag_send_nbx(peers_[size_t(peer)].ep, buf, bytes,
                                          make_tag(kData, rank_, tag), &p);
    if (UCS_PTR_IS_ERR(s)) {
      requests_.erase(id);
      throw PeerLost(peer, fmt::format("UCX send of {} bytes (tag {}) failed: {}", bytes, tag,
                                       ucs_status_string(UCS_PTR_STATUS(s))));
    }
    if (s == nullptr) {
      r.done = true;
      r.bytes = bytes;
    } else {
      r.ucx = s;
    }
    return id;
  }

  RequestId post_recv(int peer, int tag, void* buf, size_t capacity) override {
    check_args(peer, tag, capacity, true);
    RequestId id = next_id_++;
    Request& r = requests_[id] = new_request(true, peer, tag, capacity);
    if (peer == rank_ || peer == kAnyPeer) {
      if (auto d = loop_.take(id, tag, buf, capacity)) {
        complete_self(*d);
        return id;
      }
      loop_.wait(id, tag, buf, capacity);
      if (peer == rank_) return id;
    }
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    ucp_tag_t want = make_tag(kData, peer == kAnyPeer ? 0 : peer, tag);
    ucs_status_ptr_t s = ucp_tag_recv_nbx(worker_.get(), buf, capacity, want,
                                          peer == kAnyPeer ? kAnySenderMask : kFullMask, &p);
    if (UCS_PTR_IS_ERR(s) || s == nullptr) {
      loop_.forget(id);
      requests_.erase(id);
      std::string why = fmt::format("UCX receive (tag {}) failed: {}", tag,
                                    ucs_status_string(UCS_PTR_STATUS(s)));
      if (peer == kAnyPeer) throw Error(why);
      throw PeerLost(peer, why);
    }
    r.ucx = s;
    return id;
  }

  bool test(RequestId id, Completion* c) override {
    Clock::time_point now = Clock::now();
    liveness_.advance(now, false);
    send_heartbeats(now);
    auto it = requests_.find(id);
    RWKVPP_CHECK(it != requests_.end(), "test() on an unknown or retired request");
    progress();
    Request& r = it->second;
    if (!r.done) poll(id, r);
    if (!r.done && is_doomed(r)) {
      // Before blaming the peer, harvest everything else: news from it may be waiting.
      poll_all();
      if (!r.done && is_doomed(r)) {
        // Retired, as the contract says: a request left pending would make every later
        // wait_some() return at once (any_doomed), i.e. spin, on a rank that goes on (recovery).
        const std::string why = lost_reason(r);
        const int peer = r.peer;
        loop_.forget(id);
        if (r.ucx) release(r.ucx, r.is_recv);
        requests_.erase(it);
        lost_ = true;
        throw PeerLost(peer, why);
      }
    }
    if (!r.done) return false;
    Request done = std::move(r);
    requests_.erase(it);
    if (done.status != UCS_OK) throw_failure(done);
    if (c) *c = Completion{done.peer, done.tag, done.bytes};
    return true;
  }

  void cancel(RequestId id) override {
    auto it = requests_.find(id);
    RWKVPP_CHECK(it != requests_.end(), "cancel() on an unknown or retired request");
    loop_.forget(id);
    if (it->second.ucx) release(it->second.ucx, it->second.is_recv);
    requests_.erase(it);
  }

  void set_spin(std::chrono::microseconds us) override { spin_ = us; }

  bool peer_failed(int peer) const override {
    return peer >= 0 && peer < size_ && peer != rank_ && peers_[size_t(peer)].failure != UCS_OK;
  }

  void wait_some(std::chrono::milliseconds timeout) override {
    Clock::time_point start = Clock::now();
    liveness_.advance(start, false);
    send_heartbeats(start);
    Clock::time_point deadline = start + timeout;
    auto nap = std::chrono::microseconds(50);
    while (true) {
      poll_all();
      if (announce_completions() || !any_pending()) break;
      Clock::time_point now = Clock::now();
      liveness_.advance(now, true);
      send_heartbeats(now);
      if (now >= deadline || any_doomed()) break;
      if (now - start < spin_) {
        std::this_thread::yield();
        continue;
      }
      Clock::duration d = std::min<Clock::duration>(
          {deadline - now, hb_next_ - now, std::chrono::milliseconds(50)});
      if (!sleep_on_events(d)) {
        std::this_thread::sleep_for(std::min<Clock::duration>(nap, d));
        nap = std::min(nap * 2, std::chrono::microseconds(1000));
      }
    }
    liveness_.advance(Clock::now(), true);
  }

  [[noreturn]] void abort(int code) override {
    std::fflush(nullptr);
    static int32_t word;
    word = int32_t(code);
    // Best effort, bounded: the abort message to every peer, then a flush of each endpoint.
    std::vector<void*> reqs;
    ucp_request_param_t p{};
    for (Peer& peer : peers_) {
      if (!peer.ep || peer.failure != UCS_OK) continue;
      ucs_status_ptr_t s =
          ucp_tag_send_nbx(peer.ep, &word, sizeof(word), make_tag(kAbort, rank_, 0), &p);
      if (UCS_PTR_IS_PTR(s)) reqs.push_back(s);
      s = ucp_ep_flush_nbx(peer.ep, &p);
      if (UCS_PTR_IS_PTR(s)) reqs.push_back(s);
    }
    settle(reqs, std::chrono::milliseconds(500));
    std::_Exit(code);
  }

 private:
  struct Request {
    void* ucx = nullptr;  // UCX's request while the operation is pending in UCX
    bool is_recv = false;
    bool done = false;
    bool announced = false;  // a wait_some() has returned since it completed
    int peer = kAnyPeer;     // for receives: the source asked for, then the actual sender
    int tag = 0;
    size_t size = 0;   // send size, or receive capacity
    size_t bytes = 0;  // bytes moved, once done
    ucs_status_t status = UCS_OK;
    Liveness::Stamp posted{0};
  };
  struct Peer {
    UcxTransport* owner = nullptr;  // for the endpoint's error handler
    int rank = -1;
    ucp_ep_h ep = nullptr;
    ucs_status_t failure = UCS_OK;  // set by the error handler
    void* beat = nullptr;           // the last heartbeat sent to it, while pending
  };

  void open_worker() {
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    if (st != UCS_OK) ucx_fail("ucp_config_read", st);
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
    ucp_context_h ctx = nullptr;
    st = ucp_init(&params, config, &ctx);
    ucp_config_release(config);
    if (st != UCS_OK) ucx_fail("ucp_init", st);
    context_.reset(ctx);
    ucp_context_attr_t attr{};
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    if (ucp_context_query(ctx, &attr) == UCS_OK)
      device_memory_ = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    ucp_worker_h w = nullptr;
    st = ucp_worker_create(ctx, &wp, &w);
    if (st != UCS_OK) ucx_fail("ucp_worker_create", st);
    worker_.reset(w);
    if (ucp_worker_get_efd(w, &efd_) != UCS_OK) efd_ = -1;  // then wait_some() naps
  }

  std::vector<uint8_t> worker_address() {
    ucp_address_t* a = nullptr;
    size_t len = 0;
    ucs_status_t st = ucp_worker_get_address(worker_.get(), &a, &len);
    if (st != UCS_OK) ucx_fail("ucp_worker_get_address", st);
    const auto* b = reinterpret_cast<const uint8_t*>(a);
    std::vector<uint8_t> out(b, b + len);
    ucp_worker_release_address(worker_.get(), a);
    return out;
  }

  static void on_endpoint_error(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* p = static_cast<Peer*>(arg);
    if (p->failure == UCS_OK) p->failure = status;
  }

  void connect(int peer, const std::vector<uint8_t>& address, bool peer_errors) {
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
    ep.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    if (peer_errors) {
      ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.err_handler.cb = &UcxTransport::on_endpoint_error;
      ep.err_handler.arg = &peers_[size_t(peer)];
    }
    ucs_status_t st = ucp_ep_create(worker_.get(), &ep, &peers_[size_t(peer)].ep);
    if (st != UCS_OK)
      fail("rank {}: cannot open a UCX endpoint to rank {}: {}", rank_, peer,
           ucs_status_string(st));
  }

  // Closes every endpoint (flushing what is in flight to live peers), bounded in time.
  void close_endpoints() {
    std::vector<void*> reqs;
    for (Peer& p : peers_) {
      if (!p.ep) continue;
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      param.flags = (lost_ || p.failure != UCS_OK) ? UCP_EP_CLOSE_FLAG_FORCE : 0;
      ucs_status_ptr_t s = ucp_ep_close_nbx(p.ep, &param);
      if (UCS_PTR_IS_PTR(s)) reqs.push_back(s);
      p.ep = nullptr;
    }
    settle(reqs, std::chrono::seconds(2));
  }

  // Drives progress until every request in `reqs` completed or `limit` passed; frees them.
  void settle(std::vector<void*>& reqs, Clock::duration limit) {
    auto until = Clock::now() + limit;
    auto busy = [&] {
      for (void* r : reqs)
        if (ucp_request_check_status(r) == UCS_INPROGRESS) return true;
      return false;
    };
    while (busy() && Clock::now() < until) {
      if (!ucp_worker_progress(worker_.get())) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    for (void* r : reqs) ucp_request_free(r);
    reqs.clear();
  }

  // Gives a UCX request back: a receive is cancelled first (and waited for, so that UCX no
  // longer writes into its buffer); a send is left to finish on its own.
  void release(void*& req, bool is_recv) {
    if (!req) return;
    if (is_recv) {
      ucp_request_cancel(worker_.get(), req);
      wait_ucx(req);
    }
    ucp_request_free(req);
    req = nullptr;
  }

  // Progress until `req` is no longer in progress (a cancelled receive that had already
  // matched finishes its transfer; a lost peer fails it), bounded so that shutdown cannot hang.
  void wait_ucx(void* req) {
    auto until = Clock::now() + std::chrono::seconds(10);
    while (ucp_request_check_status(req) == UCS_INPROGRESS && Clock::now() < until)
      if (!ucp_worker_progress(worker_.get())) std::this_thread::yield();
  }

  void check_args(int peer, int tag, size_t bytes, bool is_recv) const {
    const char* what = is_recv ? "receive from" : "send to";
    if ((peer < 0 || peer >= size_) && !(is_recv && peer == kAnyPeer))
      fail("cannot {} rank {}: the UCX job has ranks 0..{}", what, peer, size_ - 1);
    if (tag < 0 || tag > kMaxTag) fail("tag {} is outside the valid range 0..{}", tag, kMaxTag);
    if (bytes > size_t(INT_MAX))
      fail("UCX transport: a {}-byte message is over the 2 GiB a single message may carry", bytes);
  }

  Request new_request(bool is_recv, int peer, int tag, size_t size) const {
    Request r;
    r.is_recv = is_recv;
    r.peer = peer;
    r.tag = tag;
    r.size = size;
    r.posted = liveness_.stamp();
    return r;
  }

  void complete_self(const Loopback::Delivery& d) {
    Request& r = requests_.at(d.id);
    r.done = true;
    r.peer = rank_;
    r.bytes = d.bytes;
    if (d.truncated) r.status = UCS_ERR_MESSAGE_TRUNCATED;
  }

  // Loopback's claim on a receive from any peer that is also waiting in UCX: withdraws it
  // from UCX; false when a remote message got there first (it is then complete with that).
  bool withdraw(RequestId id) {
    Request& r = requests_.at(id);
    if (!r.ucx) return true;
    ucp_request_cancel(worker_.get(), r.ucx);
    wait_ucx(r.ucx);
    if (ucp_request_check_status(r.ucx) == UCS_ERR_CANCELED) {
      ucp_request_free(r.ucx);
      r.ucx = nullptr;
      return true;
    }
    finish_ucx(r);
    return false;
  }

  // Records the outcome of a request whose UCX operation is complete, and frees it.
  void finish_ucx(Request& r) {
    ucp_tag_recv_info_t info{};
    ucs_status_t st = r.is_recv ? ucp_tag_recv_request_test(r.ucx, &info)
                                : ucp_request_check_status(r.ucx);
    ucp_request_free(r.ucx);
    r.ucx = nullptr;
    r.done = true;
    r.status = st;
    if (!r.is_recv) {
      r.bytes = r.size;
      return;
    }
    if (st != UCS_OK && st != UCS_ERR_MESSAGE_TRUNCATED) return;
    int sender = tag_sender(info.sender_tag);
    if (sender >= 0 && sender < size_) r.peer = sender;
    r.bytes = info.length;
    if (r.peer != rank_) liveness_.heard_from(r.peer);
  }

  bool poll(RequestId id, Request& r) {
    if (!r.ucx || ucp_request_check_status(r.ucx) == UCS_INPROGRESS) return false;
    loop_.forget(id);
    finish_ucx(r);
    return true;
  }

  void progress() {
    for (int i = 0; i < 256 && ucp_worker_progress(worker_.get()); ++i) {
    }
    harvest_control();
  }

  void poll_all() {
    progress();
    for (auto& [id, r] : requests_)
      if (!r.done) poll(id, r);
  }

  // Sleeps on the worker's event descriptor for up to `d`; false when there is none.
  bool sleep_on_events(Clock::duration d) {
    if (efd_ < 0) return false;
    ucs_status_t st = ucp_worker_arm(worker_.get());
    if (st == UCS_ERR_BUSY) return true;  // events are waiting: progress again at once
    if (st != UCS_OK) {
      efd_ = -1;
      return false;
    }
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    timespec ts{time_t(ns / 1000000000), long(ns % 1000000000)};
    pollfd pfd{efd_, POLLIN, 0};
    ppoll(&pfd, 1, &ts, nullptr);
    return true;
  }

  // The heartbeat and abort channels: one receive from any peer on each, always posted.
  void start_control() {
    if (size_ == 1) return;
    auto t = liveness_.timeout().count() > 0 ? liveness_.timeout() / 4 : kMaxHeartbeat;
    hb_interval_ = std::clamp<std::chrono::milliseconds>(t, kMinHeartbeat, kMaxHeartbeat);
    hb_next_ = Clock::now();
    beat_recv_ = post_control_recv(kBeat, &beat_in_, sizeof(beat_in_));
    abort_recv_ = post_control_recv(kAbort, &abort_in_, sizeof(abort_in_));
  }

  void* post_control_recv(Channel ch, void* buf, size_t bytes) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    ucs_status_ptr_t s =
        ucp_tag_recv_nbx(worker_.get(), buf, bytes, make_tag(ch, 0, 0), kAnySenderMask, &p);
    if (UCS_PTR_IS_ERR(s) || s == nullptr) ucx_fail("posting a control receive", UCS_PTR_STATUS(s));
    return s;
  }

  void send_heartbeats(Clock::time_point now) {
    if (size_ == 1 || now < hb_next_) return;
    hb_next_ = now + hb_interval_;
    ucp_request_param_t p{};
    for (Peer& peer : peers_) {
      if (!peer.ep || peer.failure != UCS_OK) continue;
      if (peer.beat) {
        if (ucp_request_check_status(peer.beat) == UCS_INPROGRESS) continue;  // do not pile up
        ucp_request_free(peer.beat);
        peer.beat = nullptr;
      }
      ucs_status_ptr_t s =
          ucp_tag_send_nbx(peer.ep, &kBeatWord, sizeof(kBeatWord), make_tag(kBeat, rank_, 0), &p);
      if (UCS_PTR_IS_PTR(s)) peer.beat = s;  // a failure shows up through the error handler
    }
  }

  void harvest_control() {
    while (beat_recv_ && ucp_request_check_status(beat_recv_) != UCS_INPROGRESS) {
      ucp_tag_recv_info_t info{};
      if (ucp_tag_recv_request_test(beat_recv_, &info) == UCS_OK) {
        int from = tag_sender(info.sender_tag);
        if (from >= 0 && from < size_) liveness_.heard_from(from);
      }
      ucp_request_free(beat_recv_);
      beat_recv_ = post_control_recv(kBeat, &beat_in_, sizeof(beat_in_));
    }
    if (abort_recv_ && ucp_request_check_status(abort_recv_) != UCS_INPROGRESS) {
      ucp_tag_recv_info_t info{};
      if (ucp_tag_recv_request_test(abort_recv_, &info) == UCS_OK) {
        std::fprintf(stderr, "rwkvpp: rank %d ends: rank %d aborted the job (exit code %d)\n",
                     rank_, tag_sender(info.sender_tag), int(abort_in_));
        std::fflush(nullptr);
        std::_Exit(int(abort_in_));
      }
      ucp_request_free(abort_recv_);
      abort_recv_ = post_control_recv(kAbort, &abort_in_, sizeof(abort_in_));
    }
  }

  bool announce_completions() {
    bool any = false;
    for (auto& [id, r] : requests_)
      if (r.done && !r.announced) any = r.announced = true;
    return any;
  }

  bool any_pending() const {
    for (const auto& [id, r] : requests_)
      if (!r.done) return true;
    return false;
  }

  // A pending request whose peer UCX reported failed, or that outlived the liveness timeout.
  // Receives from any peer are never blamed on anyone; a rank cannot lose itself.
  bool is_doomed(const Request& r) const {
    if (r.peer == kAnyPeer || r.peer == rank_) return false;
    return peers_[size_t(r.peer)].failure != UCS_OK || liveness_.expired(r.peer, r.posted);
  }

  bool any_doomed() const {
    for (const auto& [id, r] : requests_)
      if (!r.done && is_doomed(r)) return true;
    return false;
  }

  std::string lost_reason(const Request& r) const {
    const char* op = r.is_recv ? "receive from it" : "send to it";
    if (ucs_status_t f = peers_[size_t(r.peer)].failure; f != UCS_OK)
      return fmt::format("UCX reported its endpoint failed ({}) while a {} (tag {}, {} bytes) was "
                         "pending; the process is gone or its host unreachable",
                         ucs_status_string(f), op, r.tag, r.size);
    double silent = std::chrono::duration<double>(liveness_.silence(r.peer, r.posted)).count();
    return fmt::format(
        "no message or heartbeat from it for {:.1f} s of waiting while a {} (tag {}, {} bytes) "
        "was pending; it may be stopped or stuck (liveness timeout {:.1f} s, set by "
        "RWKVPP_PEER_TIMEOUT_S)",
        silent, op, r.tag, r.size, std::chrono::duration<double>(liveness_.timeout()).count());
  }

  [[noreturn]] void throw_failure(const Request& r) {
    if (r.status == UCS_ERR_MESSAGE_TRUNCATED)
      fail("message from rank {} (tag {}) is larger than the {}-byte receive buffer", r.peer, r.tag,
           r.size);
    std::string why = fmt::format("UCX {} (tag {}) failed: {}", r.is_recv ? "receive" : "send",
                                  r.tag, ucs_status_string(r.status));
    if (r.peer == kAnyPeer) throw Error(why);
    lost_ = true;
    throw PeerLost(r.peer, why);
  }

  static constexpr std::chrono::milliseconds kMinHeartbeat{50}, kMaxHeartbeat{5000};
  static inline const uint64_t kBeatWord = 0x54414542504B5752ull;  // never written: sends read it

  int rank_;
  int size_;
  UcpContext context_;  // declared before the worker: destroyed after it
  UcpWorker worker_;
  int efd_ = -1;
  std::vector<Peer> peers_;  // by rank; never resized after connecting (handlers point in)
  void* beat_recv_ = nullptr;
  void* abort_recv_ = nullptr;
  uint64_t beat_in_ = 0;
  int32_t abort_in_ = 0;
  std::chrono::milliseconds hb_interval_{kMaxHeartbeat};
  Clock::time_point hb_next_;
  std::chrono::microseconds spin_{200};
  mutable std::string name_;
  bool device_memory_ = false;
  bool lost_ = false;
  Liveness liveness_;
  Loopback loop_;
  RequestId next_id_ = 1;
  std::unordered_map<RequestId, Request> requests_;
};

}  // namespace

std::unique_ptr<Transport> make_ucx_transport() {
  return std::make_unique<UcxTransport>(rendezvous_from_env());
}

std::unique_ptr<Transport> make_ucx_transport(const RendezvousConfig& cfg,
                                              std::vector<uint8_t>* job) {
  return std::make_unique<UcxTransport>(cfg, job);
}

}  // namespace rwkvpp
