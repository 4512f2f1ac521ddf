// The MPI transport: non-blocking MPI_Isend/MPI_Irecv/MPI_Test on a private duplicate of
// MPI_COMM_WORLD, with MPI_ERRORS_RETURN so that failures come back as codes that become
// rwkvpp errors, and a liveness timeout (net/liveness.h) for peers that stop answering.
// Messages to this same rank go through a Loopback instead of MPI (net/loopback.h); a
// receive from any peer waits in both until one of them delivers.
// Also launched_by_mpi(): make_transport() (net/make_transport.cpp) initialises MPI only when
// the environment says that mpirun or srun started us, so that a plain run never touches MPI.
//
// Threading: MPI is initialised with MPI_THREAD_FUNNELED; only the thread that created the
// transport may call it (the contract's "one thread drives a transport").
//
// A peer that dies makes mpirun end the whole job; one that is stopped or stuck is found by
// the liveness timeout, and the caller then calls abort() so that no rank hangs.

// The C API only: keep mpi.h from pulling in the deprecated C++ bindings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <dlfcn.h>
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "net/liveness.h"
#include "net/loopback.h"
#include "net/transport.h"
#include "net/transports.h"

namespace rwkvpp {

namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error_string(int code) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, s, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(s, size_t(len));
}

int mpi_error_class(int code) {
  int cls = code;
  MPI_Error_class(code, &cls);
  return cls;
}

// Throws an Error for a failed MPI call made outside any request (setup, teardown).
void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) fail("{} failed: {}", what, mpi_error_string(rc));
}

std::string getenv_str(const char* name) {
  const char* e = std::getenv(name);
  return e ? std::string(e) : std::string();
}

long getenv_long(const char* name, long dflt) {
  const char* e = std::getenv(name);
  if (!e || !*e) return dflt;
  char* end = nullptr;
  long v = std::strtol(e, &end, 10);
  return (end == e) ? dflt : v;
}

// The point-to-point messaging layer (PML) that Open MPI selected, or "" when unknown.
// Open MPI keeps a copy of the selected component's descriptor in the exported global
// `mca_pml_base_selected_component`, which starts with the fixed header below (the same in
// Open MPI 3, 4 and 5). It is looked up at run time, and trusted only when the project and
// framework names in it read "ompi" and "pml", so another MPI (or a changed layout) falls
// back to OMPI_MCA_pml.
std::string selected_pml() {
#if defined(OPEN_MPI)
  struct ComponentHeader {
    int mca_major, mca_minor, mca_release;
    char project[16];
    int project_major, project_minor, project_release;
    char type[32];
    int type_major, type_minor, type_release;
    char component[64];
  };
  if (const void* sym = dlsym(RTLD_DEFAULT, "mca_pml_base_selected_component")) {
    ComponentHeader h;
    std::memcpy(&h, sym, sizeof(h));
    h.project[15] = h.type[31] = h.component[63] = '\0';
    if (std::string_view(h.project) == "ompi" && std::string_view(h.type) == "pml" &&
        h.component[0] != '\0')
      return h.component;
  }
#endif
  // mpirun --mca pml X exports OMPI_MCA_pml=X; only a single plain name says what was used.
  std::string env = getenv_str("OMPI_MCA_pml");
  if (!env.empty() && env.find_first_of("^,") == std::string::npos) return env;
  return "";
}

bool query_device_memory() {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
  // The header says what the library was built with; the run-time query is authoritative.
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

bool g_transport_made = false;  // MPI can be initialised once per process

class MpiTransport final : public Transport {
 public:
  MpiTransport(int* argc, char*** argv) : liveness_(0, std::chrono::milliseconds(0), Clock::now()) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized || g_transport_made)
      fail("MPI transport: this process already made one (MPI cannot start twice in a process)");
    int provided = 0;
    if (!inited) {
      int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
      if (rc != MPI_SUCCESS) fail("MPI_Init_thread failed (error {})", rc);
      owns_mpi_ = true;
    } else {
      MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_FUNNELED)
      fail("MPI provides thread level {}, rwkvpp needs MPI_THREAD_FUNNELED", provided);
    g_transport_made = true;
    mpi_check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN),
              "MPI_Comm_set_errhandler");
    // A private communicator: our tags cannot collide with another library's messages.
    mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    mpi_check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    void* ub = nullptr;
    int flag = 0;
    MPI_Comm_get_attr(comm_, MPI_TAG_UB, &ub, &flag);
    tag_ub_ = (flag && ub) ? *static_cast<int*>(ub) : 32767;
    liveness_ = Liveness(size_, peer_timeout_from_env(), Clock::now());
    start_heartbeats();
    std::string pml = selected_pml();
    name_ = pml.empty() ? "mpi" : "mpi(" + pml + ")";
    device_memory_ = query_device_memory();
    // srun without an MPI plugin starts N singletons that each think they are rank 0 of 1.
    long step_tasks = getenv_long("SLURM_STEP_NUM_TASKS", 0);
    if (size_ == 1 && step_tasks > 1)
      fail(
          "srun started {} tasks but MPI sees a world of 1: launch with srun --mpi=pmix (or "
          "pmi2), matching how Open MPI was built",
          step_tasks);
  }

  ~MpiTransport() override {
    for (auto& [id, r] : requests_) {
      if (!r.in_mpi) continue;
      if (r.is_recv) MPI_Cancel(&r.req);
      MPI_Request_free(&r.req);
    }
    requests_.clear();
    stop_heartbeats();
    if (lost_) {
      // MPI_Comm_free and MPI_Finalize synchronise with every rank and would wait for the
      // lost one forever; leaving without them makes mpirun end the job (the caller should
      // have called abort()).
      std::fprintf(stderr, "rwkvpp: rank %d leaves without MPI_Finalize after losing a peer\n",
                   rank_);
      return;
    }
    MPI_Comm_free(&hb_comm_);
    MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }
  bool device_memory() const override { return device_memory_; }

  RequestId post_send(int peer, int tag, const void* buf, size_t bytes) override {
    check_args(peer, tag, bytes, false);
    RequestId id = next_id_++;
    Request& r = requests_[id] = new_request(false, peer, tag, bytes);
    if (peer == rank_) {
      // Self-sends bypass MPI (see net/loopback.h): copied now, complete at once.
      r.done = true;
      r.bytes = bytes;
      auto d = loop_.send(tag, buf, bytes, [this](RequestId rid) { return withdraw(rid); });
      if (d) complete_self(*d);
      return id;
    }
    int rc = MPI_Isend(buf, int(bytes), MPI_BYTE, peer, tag, comm_, &r.req);
    if (rc != MPI_SUCCESS) {
      requests_.erase(id);
      throw PeerLost(peer, fmt::format("MPI_Isend of {} bytes (tag {}) failed: {}", bytes, tag,
                                       mpi_error_string(rc)));
    }
    r.in_mpi = true;
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
    int src = peer == kAnyPeer ? MPI_ANY_SOURCE : peer;
    int rc = MPI_Irecv(buf, int(capacity), MPI_BYTE, src, tag, comm_, &r.req);
    if (rc != MPI_SUCCESS) {
      loop_.forget(id);
      requests_.erase(id);
      std::string why = fmt::format("MPI_Irecv (tag {}) failed: {}", tag, mpi_error_string(rc));
      if (peer == kAnyPeer) throw Error(why);
      throw PeerLost(peer, why);
    }
    r.in_mpi = true;
    return id;
  }

  bool test(RequestId id, Completion* c) override {
    Clock::time_point now = Clock::now();
    liveness_.advance(now, false);
    send_heartbeats(now);
    auto it = requests_.find(id);
    RWKVPP_CHECK(it != requests_.end(), "test() on an unknown or retired request");
    Request& r = it->second;
    if (!r.done) poll(id, r);
    if (!r.done && is_expired(r)) {
      // Before blaming the peer, harvest everything else: news from it may be waiting in a
      // request that the caller has not tested yet.
      poll_all();
      if (!r.done && is_expired(r)) {
        lost_ = true;
        throw PeerLost(r.peer, lost_reason(r));
      }
    }
    if (!r.done) return false;
    Request done = std::move(r);
    requests_.erase(it);
    if (done.error != MPI_SUCCESS) throw_failure(done);
    if (c) *c = Completion{done.peer, done.tag, done.bytes};
    return true;
  }

  void cancel(RequestId id) override {
    auto it = requests_.find(id);
    RWKVPP_CHECK(it != requests_.end(), "cancel() on an unknown or retired request");
    Request& r = it->second;
    loop_.forget(id);
    if (r.in_mpi) {
      if (r.is_recv) {
        // Cancelling an unmatched receive completes locally; waiting for it guarantees that
        // MPI no longer writes into the caller's buffer.
        MPI_Cancel(&r.req);
        MPI_Wait(&r.req, MPI_STATUS_IGNORE);
      } else {
        // MPI cannot reliably cancel a send: let it finish in the background. Its buffer must
        // stay valid until shutdown.
        MPI_Request_free(&r.req);
      }
    }
    requests_.erase(it);
  }

  void set_spin(std::chrono::microseconds us) override { spin_ = us; }

  void wait_some(std::chrono::milliseconds timeout) override {
    Clock::time_point start = Clock::now();
    liveness_.advance(start, false);
    send_heartbeats(start);
    Clock::time_point deadline = start + timeout;
    // Poll MPI; yield the core for the first spin_ (default 200 us: short latency for a step
    // that is about to arrive), then sleep with a growing interval up to 1 ms so an idle rank does not hog a
    // core that it may share.
    auto nap = std::chrono::microseconds(50);
    while (true) {
      poll_all();
      if (announce_completions() || !any_pending()) break;
      Clock::time_point now = Clock::now();
      liveness_.advance(now, true);
      send_heartbeats(now);
      if (now >= deadline || any_expired()) break;
      if (now - start < spin_) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::min<Clock::duration>(nap, deadline - now));
        nap = std::min(nap * 2, std::chrono::microseconds(1000));
      }
    }
    liveness_.advance(Clock::now(), true);
  }

  [[noreturn]] void abort(int code) override {
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort should not return; if it does, still leave
  }

 private:
  struct Request {
    MPI_Request req = MPI_REQUEST_NULL;
    bool in_mpi = false;  // `req` is active
    bool is_recv = false;
    bool done = false;
    bool announced = false;  // a wait_some() has returned since it completed
    int peer = kAnyPeer;     // for receives: the source asked for, then the actual sender
    int tag = 0;
    size_t size = 0;   // send size, or receive capacity
    size_t bytes = 0;  // bytes moved, once done
    int error = MPI_SUCCESS;
    Liveness::Stamp posted{0};
  };

  void check_args(int peer, int tag, size_t bytes, bool is_recv) const {
    const char* what = is_recv ? "receive from" : "send to";
    if ((peer < 0 || peer >= size_) && !(is_recv && peer == kAnyPeer))
      fail("cannot {} rank {}: the MPI world has ranks 0..{}", what, peer, size_ - 1);
    if (tag < 0 || tag > tag_ub_) fail("MPI tag {} is outside the valid range 0..{}", tag, tag_ub_);
    if (bytes > size_t(INT_MAX))
      fail("MPI transport: a {}-byte message is over the 2 GiB a single message may carry", bytes);
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

  // Records a message from this rank to itself in the receive that got it.
  void complete_self(const Loopback::Delivery& d) {
    Request& r = requests_.at(d.id);
    r.done = true;
    r.peer = rank_;
    r.bytes = d.bytes;
    if (d.truncated) r.error = MPI_ERR_TRUNCATE;
  }

  // Loopback's claim: a self-message wants receive `id`, which may also be waiting in MPI (a
  // receive from any peer). Withdraws it from MPI; false when a remote message got there
  // first (the receive is then complete with that one).
  bool withdraw(RequestId id) {
    Request& r = requests_.at(id);
    if (!r.in_mpi) return true;
    MPI_Cancel(&r.req);
    MPI_Status st{};
    int rc = MPI_Wait(&r.req, &st);
    r.in_mpi = false;
    int cancelled = 0;
    MPI_Test_cancelled(&st, &cancelled);
    if (cancelled) return true;
    finish_mpi(r, rc, st);
    return false;
  }

  // Tests one request that is pending in MPI; records its outcome and feeds the liveness
  // clock. Returns true when it completed now.
  bool poll(RequestId id, Request& r) {
    if (!r.in_mpi) return false;  // a self-receive completes only from post_send
    int flag = 0;
    MPI_Status st{};
    st.MPI_SOURCE = MPI_ANY_SOURCE;
    int rc = MPI_Test(&r.req, &flag, &st);
    if (rc == MPI_SUCCESS && !flag) return false;
    r.in_mpi = false;
    loop_.forget(id);
    finish_mpi(r, rc, st);
    return true;
  }

  void finish_mpi(Request& r, int rc, const MPI_Status& st) {
    r.done = true;
    r.error = rc;
    if (!r.is_recv) {
      r.bytes = r.size;
      return;
    }
    if (st.MPI_SOURCE >= 0 && st.MPI_SOURCE < size_) r.peer = st.MPI_SOURCE;
    if (rc != MPI_SUCCESS) return;
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    r.bytes = size_t(count);
    // Only an arrival proves that the peer is alive: a small send completes locally (eager
    // protocol) even when the receiver is stopped.
    liveness_.heard_from(r.peer);
  }

  void poll_all() {
    harvest_heartbeats();
    for (auto& [id, r] : requests_)
      if (!r.done) poll(id, r);
  }

  // Transport heartbeats: while a rank drives its transport (test(), wait_some()) it sends a
  // tiny message to every other rank every heartbeat interval, on a communicator of its own,
  // so that a peer that is alive but has nothing to say (a stage waiting for a Shutdown that
  // comes after an hour of steps on other links) is not taken for lost. A stopped or stuck
  // process stops beating. Heartbeats go out even with the check disabled here, so that a
  // peer configured differently is still fed.
  void start_heartbeats() {
    mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &hb_comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(hb_comm_, MPI_ERRORS_RETURN);
    if (size_ == 1) return;
    auto t = liveness_.timeout().count() > 0 ? liveness_.timeout() / 4 : kMaxHeartbeat;
    hb_interval_ = std::clamp<std::chrono::milliseconds>(t, kMinHeartbeat, kMaxHeartbeat);
    hb_sends_.assign(size_t(size_), MPI_REQUEST_NULL);
    hb_next_ = Clock::now();
    mpi_check(MPI_Irecv(&hb_in_, 1, MPI_UINT64_T, MPI_ANY_SOURCE, 0, hb_comm_, &hb_recv_),
              "MPI_Irecv (heartbeat)");
  }

  void send_heartbeats(Clock::time_point now) {
    if (hb_sends_.empty() || now < hb_next_) return;
    hb_next_ = now + hb_interval_;
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      MPI_Request& q = hb_sends_[size_t(p)];
      int flag = 1;
      if (q != MPI_REQUEST_NULL && MPI_Test(&q, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        q = MPI_REQUEST_NULL;  // a failure shows up on the caller's own requests
        continue;
      }
      if (!flag) continue;  // the last beat to p is still in flight: do not pile up more
      MPI_Isend(&kBeat, 1, MPI_UINT64_T, p, 0, hb_comm_, &q);
    }
  }

  void harvest_heartbeats() {
    while (hb_recv_ != MPI_REQUEST_NULL) {
      int flag = 0;
      MPI_Status st{};
      if (MPI_Test(&hb_recv_, &flag, &st) != MPI_SUCCESS) {
        hb_recv_ = MPI_REQUEST_NULL;
        return;
      }
      if (!flag) return;
      if (st.MPI_SOURCE >= 0 && st.MPI_SOURCE < size_) liveness_.heard_from(st.MPI_SOURCE);
      if (MPI_Irecv(&hb_in_, 1, MPI_UINT64_T, MPI_ANY_SOURCE, 0, hb_comm_, &hb_recv_) !=
          MPI_SUCCESS)
        hb_recv_ = MPI_REQUEST_NULL;
    }
  }

  void stop_heartbeats() {
    if (hb_recv_ != MPI_REQUEST_NULL) {
      MPI_Cancel(&hb_recv_);
      MPI_Request_free(&hb_recv_);
    }
    for (MPI_Request& q : hb_sends_)
      if (q != MPI_REQUEST_NULL) MPI_Request_free(&q);
    hb_sends_.clear();
  }

  // True when some request completed that no earlier wait_some() has returned for; those are
  // then marked, so that a caller waiting for something else does not spin on them.
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

  bool is_expired(const Request& r) const {
    // A receive from any peer cannot name whom to blame: the caller keeps its own deadline.
    // A rank cannot lose itself.
    if (r.peer == kAnyPeer || r.peer == rank_) return false;
    return liveness_.expired(r.peer, r.posted);
  }

  bool any_expired() const {
    for (const auto& [id, r] : requests_)
      if (!r.done && is_expired(r)) return true;
    return false;
  }

  std::string lost_reason(const Request& r) const {
    double silent = std::chrono::duration<double>(liveness_.silence(r.peer, r.posted)).count();
    return fmt::format(
        "no message or heartbeat from it for {:.1f} s of waiting while a {} (tag {}, {} bytes) "
        "was pending; "
        "it may be stopped or stuck (liveness timeout {:.1f} s, set by RWKVPP_PEER_TIMEOUT_S)",
        silent, r.is_recv ? "receive from it" : "send to it", r.tag, r.size,
        std::chrono::duration<double>(liveness_.timeout()).count());
  }

  [[noreturn]] void throw_failure(const Request& r) {
    int cls = mpi_error_class(r.error);
    if (cls == MPI_ERR_TRUNCATE)
      fail("message from rank {} (tag {}) is larger than the {}-byte receive buffer", r.peer, r.tag,
           r.size);
    std::string why = fmt::format("MPI {} (tag {}) failed: {}", r.is_recv ? "receive" : "send",
                                  r.tag, mpi_error_string(r.error));
    if (r.peer == kAnyPeer) throw Error(why);
    lost_ = true;
    throw PeerLost(r.peer, why);
  }

  static constexpr std::chrono::milliseconds kMinHeartbeat{50}, kMaxHeartbeat{5000};
  static inline const uint64_t kBeat = 0x54414542504B5752ull;  // never written: sends read it

  MPI_Comm comm_ = MPI_COMM_NULL;     // the caller's messages
  MPI_Comm hb_comm_ = MPI_COMM_NULL;  // heartbeats only
  MPI_Request hb_recv_ = MPI_REQUEST_NULL;
  uint64_t hb_in_ = 0;
  std::vector<MPI_Request> hb_sends_;  // per peer: the last beat sent to it
  std::chrono::milliseconds hb_interval_{kMaxHeartbeat};
  Clock::time_point hb_next_;
  bool owns_mpi_ = false;
  int rank_ = 0;
  int size_ = 1;
  int tag_ub_ = 32767;
  std::chrono::microseconds spin_{200};
  std::string name_;
  bool device_memory_ = false;
  bool lost_ = false;
  Liveness liveness_;
  Loopback loop_;
  RequestId next_id_ = 1;
  std::unordered_map<RequestId, Request> requests_;
};

}  // namespace

bool launched_by_mpi() {
  // Open MPI's mpirun, MPICH/Intel MPI hydra (and Slurm's PMI2), PMIx launchers (srun
  // --mpi=pmix, prterun), MVAPICH.
  for (const char* v :
       {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"})
    if (const char* e = std::getenv(v); e && *e) return true;
  // srun sets SLURM_STEP_NUM_TASKS for each task of a step; a batch script, which also sees
  // SLURM_PROCID and SLURM_NTASKS, does not run inside a step of several tasks.
  if (std::getenv("SLURM_PROCID") && getenv_long("SLURM_STEP_NUM_TASKS", 0) > 1) return true;
  return false;
}

std::unique_ptr<Transport> make_mpi_transport(int* argc, char*** argv) {
  return std::make_unique<MpiTransport>(argc, argv);
}

}  // namespace rwkvpp
