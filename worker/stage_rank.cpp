// A stage rank's handshake, load and step serving (worker/stage_rank.h).
#include "worker/stage_rank.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "common/env.h"
#include "common/env_options.h"
#include "common/memory_use.h"
#include "common/trace.h"
#include "protocol/ctrl_io.h"
#include "protocol/trace_session.h"
#include "shards/layer_size.h"
#include "worker/shared_ring.h"

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

namespace {

std::unique_ptr<Backend> choose_backend(const StageRankOptions& o) {
  const int ranks_here = env_int({"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"}, 1);
  const int threads = o.threads > 0 ? o.threads
                                    : std::max(1, int(std::thread::hardware_concurrency()) / std::max(1, ranks_here));
  int local = env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}, 0);
  if (o.device == "cuda" || (o.device == "auto" && cuda_available())) {
    int n = cuda_device_count();
    if (n == 0) fail("--device cuda: no CUDA device is available on this host");
    return make_cuda_backend(local % n);
  }
  if (o.device != "cpu" && o.device != "auto") fail("--device must be auto, cpu or cuda (got '{}')", o.device);
  return make_cpu_backend(threads);
}

}  // namespace

StageRank::StageRank(Transport& t, int coord, const ModelSource& source, const StageRankOptions& o)
    : t_(t), coord_(coord), source_(source), o_(o) {
  be_ = choose_backend(o_);
  if (o_.batch_invariant != "auto") be_->set_batch_invariant(o_.batch_invariant == "on");
  // A GPU rank owns its host cores: poll for the next step instead of napping, so a stage
  // hop adds microseconds, not a scheduler tick (RWKVPP_SPIN_US overrides; docs/perf-log.md).
  if (!be_->host_memory()) t_.set_spin(std::chrono::microseconds(env_options().stage.spin_us));
  uint64_t offer = uint64_t(be_->free_memory());
  if (o_.memory_limit > 0) offer = std::min(offer, o_.memory_limit);
  HelloMsg h{kProtocolVersion, source_.fingerprint, offer, be_->name(), this_host()};
  send_blocking(t_, coord_, kTagCtrl, encode_hello(h));
  if (trace::on() && t_.rank() != coord_) measure_clock(t_, coord_);
}

StageRank::~StageRank() = default;

bool StageRank::load() {
  auto b = recv_ctrl(t_, coord_, kCtrlCap, o_.assign_timeout_s, "the stage assignment");
  Message m = decode_message(b, kCtrlCap);
  if (m.header.msg_type() == MsgType::Shutdown) return false;  // the coordinator gave up
  a_ = decode_assign(m, "Assign from rank 0");
  const int rank = t_.rank();
  const ModelConfig& cfg = source_.get().config();
  auto t0 = Clock::now();
  try {
    StageSpec spec{a_.first, a_.last, a_.embed != 0, a_.head != 0, a_.dtype, a_.max_slots};
    // Loading progress: a bar on a terminal, a line every 5 s on a pipe (mpirun's output).
    const uint64_t per_layer = layer_weight_bytes(cfg, a_.dtype);
    WorkProgress progress(o_.progress, fmt::format("rank {} stage {}: loading layers {}-{}", rank, a_.stage,
                                                   a_.first, a_.last - 1),
                          per_layer * uint64_t(a_.last - a_.first), uint64_t(a_.last - a_.first), "layers");
    stage_ = std::make_unique<Stage>(*be_, source_.get(), spec, [&](int done, int) {
      progress.update(per_layer * uint64_t(done), uint64_t(done));
    });
    progress.finish();
  } catch (const std::exception& e) {
    send_blocking(t_, coord_, kTagCtrl, encode_error(e.what()));
    // Wait to be told to stop (or be aborted); never exit on our own and leave rank 0 hanging.
    // Rank 0 reads its own Error among the stages' answers.
    if (rank != coord_) recv_ctrl(t_, coord_, kCtrlCap, 3600, "shutdown after an error");
    return false;
  }
  ReadyMsg ready = ready_msg(std::chrono::duration<double>(Clock::now() - t0).count());
  if (o_.measure_floors) {
    ready.copy_GBps = be_->measure_copy_GBps();
    ready.read_GBps = be_->measure_read_GBps();
    ready.gemm_TFLOPs = be_->measure_gemm_TFLOPs(DType::F16);
  }
  send_blocking(t_, coord_, kTagCtrl, encode_ready(ready));
  // A standby taking a lost stage's layers starts its loop with the Recover that follows.
  if (a_.epoch == 0) {
    loop_ = std::make_unique<StepLoop>(t_, *stage_, a_);
    loop_->set_wait_hook(wait_hook_);
  }
  return true;
}

ReadyMsg StageRank::ready_msg(double load_seconds) const {
  ReadyMsg ready;
  ready.weight_bytes = stage_->weight_bytes();
  ready.state_bytes = stage_->state().bytes();
  if (source_.reader) {
    ready.bytes_read = source_.reader->bytes_read();
    ready.files.assign(source_.reader->files_opened().begin(), source_.reader->files_opened().end());
  }
  ready.load_seconds = load_seconds;
  ready.backend = be_->name();
  ready.peak_rss_bytes = peak_resident_bytes();
  ready.numerics = be_->numerics();
  ready.batch_invariant = be_->batch_invariant() ? 1 : 0;
  return ready;
}

void StageRank::set_wait_hook(std::function<bool()> f) {
  wait_hook_ = std::move(f);
  if (loop_) loop_->set_wait_hook(wait_hook_);
}

bool StageRank::ctrl_arrived() {
  if (ctrl_len_ >= 0) return true;
  if (!ctrl_req_) return false;
  Completion c;
  try {
    if (!t_.test(ctrl_req_, &c)) return false;
  } catch (...) {
    ctrl_req_ = 0;
    hook_error_ = std::current_exception();
    return true;
  }
  ctrl_req_ = 0;
  ctrl_len_ = int64_t(c.bytes);
  return true;
}

ReadyMsg StageRank::recover(const RecoverMsg& m, const std::vector<SlotRestore>& slots) {
  RWKVPP_CHECK(stage_ != nullptr, "StageRank::recover() before a successful load()");
  const AssignMsg& n = m.assign;
  const bool wider = n.first != a_.first || n.last != a_.last || n.embed != a_.embed || n.head != a_.head;
  if (n.first > a_.first || n.last < a_.last || (a_.embed && !n.embed) || (a_.head && !n.head) ||
      n.max_slots != a_.max_slots || n.max_tokens != a_.max_tokens || n.dtype != a_.dtype)
    fail("Recover from rank {}: layers {}-{} with other limits, this rank (stage {}) holds layers {}-{}: a "
         "recovery may only add layers to a stage",
         coord_, n.first, n.last - 1, a_.stage, a_.first, a_.last - 1);
  if (loop_) {
    loop_->abandon();
    retired_.push_back(std::move(loop_));
  }
  double load_s = 0;
  if (wider) {  // a re-partition: this stage takes on layers of a lost neighbour
    const auto t0 = Clock::now();
    const ModelConfig& cfg = source_.get().config();
    const int more = (a_.first - n.first) + (n.last - a_.last);
    const uint64_t per_layer = layer_weight_bytes(cfg, a_.dtype);
    WorkProgress progress(o_.progress, fmt::format("rank {} stage {}: loading {} more layer(s) (to hold {}-{})",
                                                   t_.rank(), n.stage, more, n.first, n.last - 1),
                          per_layer * uint64_t(more), uint64_t(more), "layers");
    StageSpec spec{n.first, n.last, n.embed != 0, n.head != 0, n.dtype, n.max_slots};
    stage_->extend(source_.get(), spec,
                   [&](int done, int) { progress.update(per_layer * uint64_t(done), uint64_t(done)); });
    progress.finish();
    load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  a_ = n;
  loop_ = std::make_unique<StepLoop>(t_, *stage_, a_);
  loop_->set_wait_hook(wait_hook_);
  loop_->restore(slots);
  return ready_msg(load_s);
}

void StageRank::serve_recover(const Message& m) {
  const RecoverMsg r = decode_recover(m, fmt::format("Recover from rank {}", coord_));
  std::vector<uint8_t> body(r.body_bytes);
  RequestId q = t_.post_recv(coord_, kTagRestore, body.data(), body.size());
  Completion c;
  const auto deadline = Clock::now() + std::chrono::seconds(600);
  while (!t_.test(q, &c)) {
    if (Clock::now() > deadline) {
      t_.cancel(q);
      throw PeerLost(coord_, "no Restore within 600 s of its Recover");
    }
    t_.wait_some(std::chrono::milliseconds(2));
  }
  const std::string what = fmt::format("Restore from rank {}", coord_);
  std::vector<SlotRestore> slots = decode_restore(decode_message({body.data(), c.bytes}, body.size()), what);
  if (slots.size() != r.restores) fail("{}: {} slots, its Recover announced {}", what, slots.size(), r.restores);
  const int first = a_.first, last = a_.last;
  RecoveredMsg done;
  try {
    done.ready = recover(r, slots);
  } catch (const PeerLost&) {
    throw;
  } catch (const std::exception& e) {
    // E.g. a layer this rank's copy of the model cannot give: the coordinator ends the job with
    // this message (the old loop is gone; this rank waits to be told to stop).
    fmt::print(stderr, "rank {}: cannot take layers {}-{} (epoch {}): {}\n", t_.rank(), r.assign.first,
               r.assign.last - 1, r.assign.epoch, e.what());
    send_blocking(t_, coord_, kTagCtrl, encode_error(e.what()));
    return;
  }
  done.epoch = a_.epoch;
  fmt::print(stderr, "rank {} (stage {}, layers {}-{}): re-wired in epoch {} (previous rank {}, next rank {}), "
             "{} slot(s) restored{}\n", t_.rank(), a_.stage, a_.first, a_.last - 1, a_.epoch, a_.prev_rank,
             a_.next_rank, slots.size(),
             first != a_.first || last != a_.last
                 ? fmt::format("; re-partition: held layers {}-{}, loaded the others in {:.3f} s", first, last - 1,
                               done.ready.load_seconds)
                 : "");
  send_blocking(t_, coord_, kTagCtrl, encode_recovered(done));
}

void StageRank::heartbeat(std::vector<uint8_t>& buf, RequestId& req, uint64_t& seq) {
  if (req && !t_.test(req)) return;
  req = 0;
  const auto now = Clock::now();
  if (now - hb_last_ < std::chrono::seconds(1)) return;
  hb_last_ = now;
  StatsMsg st;
  st.stage = a_.stage;
  st.first = a_.first;
  st.last = a_.last;
  buf = encode_heartbeat(++seq, st);
  req = t_.post_send(coord_, kTagHeartbeat, buf.data(), buf.size());
}

std::string StageRank::trace_label() const {
  if (!loop_) return rwkvpp::trace_label(t_.rank(), -1, 0, 0, this_host());
  return rwkvpp::trace_label(t_.rank(), a_.stage, a_.first, a_.last, this_host());
}

void StageRank::serve() {
  RWKVPP_CHECK(stage_ != nullptr, "StageRank::serve() before a successful load()");
  std::vector<uint8_t> hb;
  RequestId hb_req = 0;
  uint64_t hb_seq = 0;
  ctrl_buf_.resize(kCtrlCap);
  ctrl_req_ = t_.post_recv(coord_, kTagCtrl, ctrl_buf_.data(), ctrl_buf_.size());
  // A step waiting for its neighbour gives up when the coordinator speaks (a Recover).
  set_wait_hook([this] { return ctrl_arrived(); });
  for (;;) {
    bool busy = false;
    if (loop_ && !loop_->interrupted()) {
      try {
        busy = loop_->poll();
      } catch (const PeerLost& e) {
        // A neighbour is gone: the coordinator recovers the pipeline (a Recover) or ends the
        // job (Shutdown, or its abort). Only the coordinator's own loss ends this rank here.
        if (e.peer() == coord_) throw;
        fmt::print(stderr, "rank {} (stage {}): {}; waiting for the coordinator to recover the pipeline\n",
                   t_.rank(), a_.stage, e.what());
        loop_->abandon();
        retired_.push_back(std::move(loop_));
      }
    } else {
      heartbeat(hb, hb_req, hb_seq);
    }
    if (hook_error_) std::rethrow_exception(hook_error_);
    if (ctrl_arrived()) {
      if (hook_error_) std::rethrow_exception(hook_error_);
      Message m = decode_message({ctrl_buf_.data(), size_t(ctrl_len_)}, kCtrlCap);
      ctrl_len_ = -1;
      if (m.header.msg_type() == MsgType::Shutdown) break;
      if (m.header.msg_type() == MsgType::Hello && peek_ctrl(m, "a control message") == Ctrl::Recover) {
        if (hb_req) {  // the new loop heartbeats from here on
          t_.cancel(hb_req);
          hb_req = 0;
        }
        serve_recover(m);
      }
      ctrl_req_ = t_.post_recv(coord_, kTagCtrl, ctrl_buf_.data(), ctrl_buf_.size());
    }
    if (!busy) t_.wait_some(std::chrono::milliseconds(1));
  }
  if (hb_req) t_.cancel(hb_req);
  if (!loop_ || loop_->interrupted()) {  // a standby never used, or a loop lost at the very end
    if (loop_) loop_->abandon();
    send_blocking(t_, coord_, kTagCtrl, encode_stats(loop_ ? loop_->stats() : StatsMsg{}));
    if (trace::on()) send_trace(t_, coord_, trace_label());
    return;
  }
  loop_->drain();
  send_blocking(t_, coord_, kTagCtrl, encode_stats(loop_->stats()));
  if (trace::on()) send_trace(t_, coord_, trace_label());
}

int run_stage_rank(Transport& t, int coord, const ModelSource& source, const StageRankOptions& o) {
  StageRank stage(t, coord, source, o);
  if (!stage.load()) return o.assign_timeout_s > 600 ? 0 : 1;  // a standby told to stop: done
  stage.serve();
  return 0;
}

void stretch_worker_timeout() {
  override_env_options([](EnvOptions& o) { o.net.peer_timeout_s *= 1.5; });  // 0 (off) stays 0
}

}  // namespace rwkvpp
