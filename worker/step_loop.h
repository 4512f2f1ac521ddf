// The stage side of the step protocol: receives Steps from the previous rank, applies their slot
// operations, runs the stage's layers, and sends the hidden vectors on (or, on the last stage,
// samples and sends Results to the coordinator). Communication overlaps compute: the next
// receive is posted before the current step is computed, hidden vectors move between device
// and host by DMA through page-locked message buffers (Backend::alloc_host) while the host
// goes on (the next step is queued on the device before the previous one's download is sent),
// and sends complete in the background.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kernels/sampling.h"
#include "net/transport.h"
#include "protocol/protocol.h"
#include "worker/host_sampler.h"
#include "worker/shared_ring.h"
#include "worker/stage.h"

namespace rwkvpp {

class StepLoop {
 public:
  StepLoop(Transport& t, Stage& stage, const AssignMsg& a);
  ~StepLoop();
  // Handles at most one Step if one has arrived, and drives pending sends and heartbeats.
  // Never blocks. Returns true when it did work, or when a hidden vector is still on its way
  // from the device to the host (so that the caller polls again at once instead of napping).
  bool poll();
  // Waits until every send has completed (at shutdown).
  void drain();
  // Recovery (coordinator/engine_recovery.cpp). abandon(): the pipeline this loop belongs to
  // lost a rank; withdraws every request (receives cancelled, sends retired) and drops what
  // was not sent. The loop must not be polled again; keep the object until the transport goes
  // (a retired send may still read its buffer). restore(): sets slots' states, sampling
  // parameters and penalty counts, before the loop's first step.
  void abandon();
  void restore(const std::vector<SlotRestore>& slots);
  // Called while the loop waits inside a step (for the next stage's shared-slot offer or
  // credit, which a neighbour that lost its own neighbour never sends); returning true gives
  // the wait up: the step is left half done, interrupted() turns true, poll() does nothing
  // more, and the owner must abandon() the loop (a recovery follows). The hook must not throw.
  void set_wait_hook(std::function<bool()> f) { wait_hook_ = std::move(f); }
  bool interrupted() const { return interrupted_; }
  StatsMsg stats() const;

 private:
  // A message to send once the device has got past `fence` (0: at once). Messages leave in
  // the order they were queued, so a step never overtakes the one before it.
  struct Outgoing {
    uint64_t fence = 0;
    uint64_t mark = 0;  // or once the device has got past this mark (a side download)
    int peer = 0, tag = 0;
    std::vector<uint8_t> vec;  // the message, or empty when it is in pinned buffer `buf`
    int buf = -1;
    // When set: makes the message from buffer `buf` once the fence has passed (a Result from
    // the ids and logprobs the device wrote there).
    std::function<std::vector<uint8_t>(const uint8_t*)> make;
    size_t bytes = 0;
    std::chrono::steady_clock::time_point started;  // when its step began (compute time)
    RequestId req = 0;
    // Device timing marks: step start, layers start and end, step end, and before the step's
    // first wait (pre); whether the step had one token per segment.
    uint64_t marks[5] = {};
    bool decode = false;
    uint64_t step = kUntraced;   // --trace: the step it belongs to (kUntraced: none)
    uint64_t posted_ns = 0;      // --trace: when it was handed to the transport
  };
  static constexpr uint64_t kUntraced = ~uint64_t(0);
  // One Step on its way through handle(): what its pieces share.
  struct StepWork {
    StepMsg s;
    std::string what;                  // names the message in errors
    std::span<const uint8_t> payload;  // the hidden vectors in the message (empty: none there)
    // The receive buffer's fence and mark: an upload from it sets the one it needs.
    uint64_t* upload_fence = nullptr;
    uint64_t* upload_mark = nullptr;
    int64_t n = 0;                     // tokens
    size_t floats = 0, bytes = 0;      // of the hidden vectors, [carried, n, C] fp32
    bool decode = false;               // one token per segment
    bool shared_in = false, shared_out = false;  // through shared slots (copied in order)
    bool side = false;                 // by side copies (Backend::upload_side/download_side)
    int b = 0;                         // the hidden buffer (0 or 1; always 0 without side copies)
    Hidden h;
    Stage::Hooks hooks;                // the shared slots' copies inside the layers' recording
    int out_slot = -1;                 // the next stage's slot, when put by hooks.after
    uint64_t marks[5] = {};            // as Outgoing::marks
    uint64_t free_at = 0;              // where the device is done with buffer b (hidden_free_)
  };
  // Handles one received message (a Step, or the previous stage's Accept) in pieces: the slot
  // ops; the way in (embedding, message, shared slot); the layers; the way out (message, shared
  // slot, Result). upload_fence/upload_mark: the receive buffer's (kept until the upload has read it).
  void handle(std::span<const uint8_t> bytes, uint64_t* upload_fence, uint64_t* upload_mark);
  void apply_slot_ops(const StepMsg& s, const std::string& what);
  bool begin_step(StepWork& w);  // false: the wait for the next stage's offer was given up
  void take_input(StepWork& w);
  void input_shared(StepWork& w);
  void input_message(StepWork& w);
  void run_layers(StepWork& w);
  void output_shared(StepWork& w);
  void output_message(StepWork& w);
  void output_result(StepWork& w);
  // Where the step is done with its hidden buffer: a mark (side copies), or main_used_.
  void own_free_mark(const StepWork& w);
  uint64_t step_mark();  // a device timing mark when this step is timed, else 0
  ResultMsg host_result(const StepMsg& s, const Hidden& h, const std::vector<int32_t>& rows);
  // Shared slots (worker/shared_ring.h): the successor's offers and credits (tag kTagShare);
  // returns true when one was handled. The predecessor's Accept arrives as a Step-tag message.
  bool poll_share();
  void on_accept(const Message& msg);
  // Waits (driving the transport) for a credit from the next stage, or for its offer.
  // False when the wait hook gave it up.
  bool wait_share(bool credit);
  void heartbeat();  // to the coordinator, about once a second
  // Sends the slot's state (and penalties) to the coordinator (SlotOpKind::Snapshot).
  void send_snapshot(const SlotOp& op);
  // t_.test() that zeroes `id` once the transport has retired it (completed, or PeerLost).
  bool test_req(RequestId& id, Completion* c = nullptr);
  bool ready_to_send(const Outgoing& o);
  Outgoing outgoing(int peer, int tag, std::vector<uint8_t> msg) const;  // a plain message
  void send(int peer, int tag, std::vector<uint8_t> msg, uint64_t step = kUntraced);
  // Posts at once, ahead of queued messages: for messages that no queued one must precede
  // (credits to the previous stage).
  void send_now(int peer, int tag, std::vector<uint8_t> msg);
  void flush_ready();
  void reap_sends();
  int take_buffer(size_t bytes);
  void count_busy(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to);
  void count_device(const uint64_t (&marks)[5], bool side_download, bool decode, uint64_t step);
  // --trace: the step's host spans (and on a synchronous device, its device spans), once
  // handle() is done with it.
  void trace_host_spans(uint64_t end_ns);
  // --trace: the device spans of a step whose marks have passed (on rank 0's clock via the
  // anchor: a mark recorded on an idle device at a known host time, moved on every second).
  void trace_device_spans(const uint64_t (&marks)[5], bool side_download, uint64_t step);
  uint64_t prev_end_ = 0;  // the mark where the previous step's ops ended on the device

  Transport& t_;
  Stage& stage_;
  AssignMsg a_;
  const int tag_step_, tag_result_, tag_share_, tag_snapshot_;  // epoch_tag() of a_.epoch
  std::function<bool()> wait_hook_;
  bool interrupted_ = false;
  // Receives land in a ring of host buffers that the device copies from directly; a buffer is
  // posted again only after the upload from it has completed.
  static constexpr int kRecvBuffers = 3;
  HostBuffer rbufs_[kRecvBuffers];
  uint64_t rfence_[kRecvBuffers] = {};
  uint64_t rmark_[kRecvBuffers] = {};  // side uploads from the ring buffers (side copies)
  // Side copies (Backend::upload_side/download_side) for payloads of at least
  // kSideCopyMinBytes, for every size with RWKVPP_SIDE_COPIES=all (what the pipeline check
  // uses to compare them with one process), none with =0. With them, steps alternate between
  // two hidden buffers; hidden_free_[b] marks where the device is done with buffer b (its last download,
  // or the head's reading of it); free_owned_[b]: the mark is this loop's to release (else it
  // belongs to the message whose download it marks).
  static constexpr size_t kSideCopyMinBytes = size_t(256) << 10;
  bool side_ = false;
  size_t side_min_bytes_ = kSideCopyMinBytes;
  int hcur_ = 0;
  uint64_t hidden_free_[2] = {};
  bool free_owned_[2] = {};
  bool main_used_[2] = {};
  // Device times of steps (Backend::timer_mark) in the stats: RWKVPP_DEVICE_TIMES=1. Off by
  // default: the marks add a few API calls to every step, i.e. to a token's latency.
  bool timing_ = false;
  // RWKVPP_DEVICE_TIMES itself (not only --trace's marks): shared-slot copies leave the
  // layers' recording, so that the layers' marks do not take in the wait for the neighbour.
  // --trace keeps the recording as it is (its device spans then include that wait).
  bool device_times_ = false;
  // --trace alone marks every trace_every_-th step on the device (RWKVPP_TRACE_DEVICE_EVERY,
  // default 4): the marks cost ~9 us of host time a step, 3.4 % of a 169m b1 step on an H100
  // when every step had them (docs/perf.md, "The cost of --trace"). step_timed_: this step's.
  uint64_t trace_every_ = 4, trace_count_ = 0;
  bool step_timed_ = false;
  // Shared slots with the neighbours on this host (off with RWKVPP_SHARE=0): rx_ ours, which
  // the previous stage writes; tx_ the next stage's, which we write. share_buf_ receives the
  // next stage's offer and credits.
  bool share_ = false, next_offered_ = false;
  std::unique_ptr<SharedRx> rx_;
  std::unique_ptr<SharedTx> tx_;
  std::vector<uint8_t> share_buf_;
  RequestId share_req_ = 0;
  // Steps sent without waiting for the device (shared slots): their compute time (and device
  // times, when timing) are counted once a fence after them has passed.
  struct Timed {
    uint64_t fence = 0;
    std::chrono::steady_clock::time_point started;
    uint64_t marks[5] = {};
    bool decode = false;  // one token per segment
    uint64_t step = kUntraced;
  };
  std::deque<Timed> timed_;
  int rcur_ = 0;
  RequestId rreq_ = 0;
  std::deque<Outgoing> ready_;  // waiting for the device
  std::deque<Outgoing> sends_;  // posted to the transport
  std::vector<HostBuffer> bufs_;  // outgoing hidden messages, downloaded into directly
  std::vector<int> free_bufs_;
  HostBuffer logits_;    // the last stage's logits rows, [rows, vocab] fp32, grown as needed
  HostSampler sampler_;  // the rows that are not plain greedy (host_sampler.h)
  std::chrono::steady_clock::time_point last_heartbeat_, idle_since_, busy_until_;
  std::chrono::steady_clock::time_point step_started_;
  uint64_t hb_seq_ = 0;
  StatsMsg stats_;
  // --trace (common/trace.h): the Step being handled (its number, kUntraced for none) and the
  // host times of its way through handle(): arrived, its input queued, its layers queued;
  // when the previous one was done (the wait before this one).
  bool tracing_ = false, sync_device_ = true;
  uint64_t traced_step_ = kUntraced;
  uint64_t arrived_ns_ = 0, input_ns_ = 0, layers_ns_ = 0, idle_ns_ = 0;
  // The device clock's anchor (asynchronous devices): a mark and its host time.
  uint64_t anchor_mark_ = 0, anchor_ns_ = 0;
};

}  // namespace rwkvpp
