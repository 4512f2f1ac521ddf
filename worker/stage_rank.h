// A stage rank's own entry point: its side of the start-up handshake (protocol/protocol.h:
// Hello, then the Assign, loading its layers, Ready) and its life after it (steps until
// Shutdown, then its Stats and, with --trace, its events).
//
// Every rank but 0 runs run_stage_rank(). Rank 0 also holds stage 0 unless
// --coordinator-only; coordinator/cluster.cpp then drives the same StageRank in two halves
// around its planning: constructed (the Hello) before it gathers every rank's Hello, load()
// after it has sent every Assign, and its StepLoop polled by the engine between transport
// calls.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>

#include "common/progress.h"
#include "kernels/backend.h"
#include "net/transport.h"
#include "protocol/protocol.h"
#include "shards/model_source.h"
#include "worker/stage.h"
#include "worker/step_loop.h"

namespace rwkvpp {

// What a stage rank chooses for itself (the pipeline's shape comes in its Assign).
struct StageRankOptions {
  std::string device = "auto";           // auto (a GPU per rank when present), cpu or cuda
  int threads = 0;                       // CPU threads; 0: the host's cores shared among its ranks
  std::string batch_invariant = "auto";  // on, off or auto (Backend::set_batch_invariant)
  uint64_t memory_limit = 0;             // most bytes offered for layers; 0: the device's free memory
  bool measure_floors = false;           // measure the device's copy and GEMM rates for Ready
  ProgressMode progress = ProgressMode::Auto;  // loading progress (common/progress.h)
  // How long to wait for the Assign: a standby (--standby) waits for as long as the job runs,
  // i.e. until a stage is lost, the coordinator shuts down, or it is lost itself (liveness).
  int assign_timeout_s = 600;
};

class StageRank {
 public:
  // Chooses the device (a GPU rank also turns on the transport's spinning: RWKVPP_SPIN_US) and
  // sends its Hello to `coord`; with --trace, a rank other than `coord` then measures its
  // clock's offset (protocol/trace_session.h). `source` must outlive the StageRank.
  StageRank(Transport& t, int coord, const ModelSource& source, const StageRankOptions& o);
  ~StageRank();
  StageRank(const StageRank&) = delete;
  StageRank& operator=(const StageRank&) = delete;

  // Receives the Assign, loads the assigned layers and sends Ready, or Error when loading
  // failed. Returns false when there is no stage to run: the coordinator sent Shutdown instead
  // of an Assign, or loading failed (a rank other than `coord` has then also waited to be told
  // to stop, so that it never leaves rank 0 waiting for it).
  bool load();
  // The step loop, after load() succeeded (null before, or after a failure; null too after
  // the load of a standby's Assign, until its recover()).
  StepLoop* loop() { return loop_.get(); }
  // Recovery: the pipeline is re-wired in a new epoch (m.assign: this stage's layers, or after a
  // re-partition more layers around them, which it reads first: Stage::extend; new neighbours).
  // Abandons the old loop (kept until this object goes: its retired sends may still read their
  // buffers), starts a new one and restores `slots` into it. Returns the stage's Ready as it is
  // now (load_seconds: of the added layers, 0 when none). Throws when the layers cannot be read
  // or the Recover asks for fewer layers or other limits.
  ReadyMsg recover(const RecoverMsg& m, const std::vector<SlotRestore>& slots);
  // The wait hook of every loop this rank makes (StepLoop::set_wait_hook); serve() sets its
  // own (a control message has arrived), the coordinator's own stage the engine's.
  void set_wait_hook(std::function<bool()> f);
  // This rank's process label in the trace (protocol/trace_session.h).
  std::string trace_label() const;
  // A rank other than `coord`, after load(): runs steps until Shutdown arrives, then sends its
  // Stats (and with --trace, its events).
  void serve();

 private:
  Transport& t_;
  const int coord_;
  const ModelSource& source_;
  const StageRankOptions o_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Stage> stage_;
  std::unique_ptr<StepLoop> loop_;
  std::vector<std::unique_ptr<StepLoop>> retired_;  // abandoned loops (see recover())
  AssignMsg a_;
  ReadyMsg ready_msg(double load_seconds) const;
  // serve(): the Recover from the coordinator, with its restores (kTagRestore).
  void serve_recover(const Message& m);
  // serve(): whether a control message has arrived (in ctrl_buf_, ctrl_len_ bytes); never
  // throws (a PeerLost goes to hook_error_, rethrown by serve()).
  bool ctrl_arrived();
  std::function<bool()> wait_hook_;
  std::vector<uint8_t> ctrl_buf_;
  RequestId ctrl_req_ = 0;
  int64_t ctrl_len_ = -1;
  std::exception_ptr hook_error_;
  // serve(): heartbeats while there is no loop to send them (a neighbour was lost).
  void heartbeat(std::vector<uint8_t>& buf, RequestId& req, uint64_t& seq);
  std::chrono::steady_clock::time_point hb_last_{};
  bool assigned_ = false;
};

// A stage rank's whole life (every rank but 0); returns its exit code: 0, or 1 when it had no
// stage to run (see StageRank::load).
int run_stage_rank(Transport& t, int coord, const ModelSource& source, const StageRankOptions& o);

// Ranks other than 0 wait 1.5x longer than the coordinator before declaring a silent peer
// lost, so that the coordinator, which knows every stage, is the one that names it. Stretches
// env_options().net.peer_timeout_s (RWKVPP_PEER_TIMEOUT_S) for the transport made next; call it
// on a stage rank before that.
void stretch_worker_timeout();

}  // namespace rwkvpp
