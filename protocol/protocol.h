// The step protocol between the coordinator and the stages (DESIGN.md, "Processes and data
// flow"), framed by net/wire.h. Message flow:
//
//   start:  every stage rank --Hello--> coordinator          (version, model fingerprint, memory)
//           coordinator --Assign--> every stage rank          (its layers and neighbours)
//           every stage rank --Ready--> coordinator           (loaded; bytes read, files opened)
//   steps:  coordinator --Step(ops, segments, token ids)--> stage 0
//           stage i --Step(ops, segments, hidden [carried, n, C])--> stage i+1
//           last stage --Result(sampled ids, logprobs, requested logits)--> coordinator
//           with --trace, after its Hello: a stage rank --Clock(t0)--> coordinator --Clock(t0, t1,
//           base)--> the rank, a few rounds, to measure its clock's offset (protocol/trace_session.h)
//   stop:   coordinator --Shutdown--> every stage rank; each answers with its Stats (and with
//           --trace, then its Trace: the events' size, then the events).
//   always: every stage rank --Heartbeat(its Stats so far)--> coordinator about once a second, so
//           that a rank that stops answering is named within the liveness timeout (and a
//           server can show every stage's compute and wait time while it runs).
//
// Slot operations ride in the Step ahead of its tokens; since a Step visits every stage in
// order, all stages apply them at the same point of the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/model_config.h"
#include "common/sampling_params.h"
#include "common/segment.h"
#include "net/wire.h"

namespace rwkvpp {

// Transport tags: one per stream, so that control never queues behind hidden vectors.
inline constexpr int kTagCtrl = 1;       // Hello, Assign, Ready, Shutdown, Stats, Error
inline constexpr int kTagStep = 2;       // Step messages down the pipeline
inline constexpr int kTagResult = 3;     // Result messages to the coordinator
inline constexpr int kTagHeartbeat = 4;  // liveness
inline constexpr int kTagShare = 5;      // shared-slot offers and credits, to the previous stage
inline constexpr int kTagSnapshot = 6;   // state snapshots, every stage to the coordinator (recovery)
inline constexpr int kTagRestore = 7;    // the states a Recover restores, coordinator to a stage
// The tags of a pipeline's data streams (Step, Result, Share, Snapshot) in its epoch: a
// recovery (coordinator/engine_recovery.cpp) re-wires the stages in a new epoch, so that what
// the old pipeline still had on the way is never taken for the new one's messages (it stays
// unmatched). Ctrl, Heartbeat and Restore keep their tags. Tags stay below 32768 for 4000
// epochs.
inline constexpr int kEpochTagStride = 8;
inline constexpr int32_t kMaxEpoch = 4000;
inline int epoch_tag(int tag, int32_t epoch) { return tag + kEpochTagStride * int(epoch); }

// Control message kinds inside MsgType::Hello / Shutdown / Error payloads.
enum class Ctrl : uint8_t {
  Hello = 1, Assign = 2, Ready = 3, Shutdown = 4, Stats = 5, Error = 6, Clock = 7, Trace = 8,
  Recover = 9, Recovered = 10, Snapshot = 11, Restore = 12
};

struct HelloMsg {
  uint16_t protocol = kProtocolVersion;
  uint64_t fingerprint = 0;   // of the model this rank opened
  uint64_t free_memory = 0;   // bytes the rank can give to weights and state
  std::string backend;        // "cpu", "cuda:0"
  std::string host;
};

struct AssignMsg {
  int32_t stage = 0, n_stages = 1;
  int32_t first = 0, last = 0;  // layers [first, last)
  uint8_t embed = 0, head = 0;
  int32_t prev_rank = 0, next_rank = 0, coord_rank = 0;
  int32_t max_slots = 1;
  int32_t max_tokens = 1;       // most tokens one Step carries
  DType dtype = DType::F32;
  // The pipeline's wiring generation: 0 at start, +1 at every recovery (epoch_tag()). A
  // stage assigned at epoch > 0 (a standby taking a lost stage's layers) starts its steps only
  // with the Recover that follows its Ready.
  int32_t epoch = 0;
};

struct ReadyMsg {
  uint64_t weight_bytes = 0, state_bytes = 0, bytes_read = 0;
  std::vector<std::string> files;  // files the rank opened to load its layers
  double load_seconds = 0;
  double copy_GBps = 0, read_GBps = 0, gemm_TFLOPs = 0;  // measured floors (benchmarks only; else 0)
  uint64_t peak_rss_bytes = 0;  // the rank's peak resident memory once loaded (before any floor)
  std::string numerics;         // Backend::numerics()
  uint8_t batch_invariant = 0;  // Backend::batch_invariant()
  std::string backend;
};

struct StatsMsg {
  int32_t stage = 0, first = 0, last = 0;
  double compute_s = 0, wait_s = 0;
  // Device time (CUDA: timed events): each step's from its upload (or embedding) to its last
  // download, and the layers' part of it. 0 on the CPU.
  double device_s = 0, layers_s = 0;
  // The part after the layers: the head and sampling on the last stage, the hidden vectors'
  // copy out (when in order on the ops' queue) elsewhere.
  double out_s = 0;
  // The device idle before steps: the host had not queued the step yet (idle_host_s), or the
  // step waited for its hidden vectors' upload (idle_upload_s).
  double idle_host_s = 0, idle_upload_s = 0;
  // Host time: inside the handling of Steps (slot ops, queueing the device's work; any call
  // that blocks shows here), and blocked before reposting a receive buffer the device still
  // reads.
  double handle_s = 0, ring_wait_s = 0;
  uint64_t bytes_sent = 0, bytes_received = 0, tokens = 0, steps = 0;
  uint64_t bytes_shared = 0;  // hidden vectors received through shared slots (not in bytes_received)
  // Decode steps (one token per segment: the recorded graphs' path) among `steps`, and the
  // layers' device time of those (0 on the CPU, and without device timing).
  uint64_t decode_steps = 0;
  double decode_layers_s = 0;
  uint64_t rss_bytes = 0;  // the rank's resident memory when it reports (VmRSS)
  std::string backend;
};

// Snapshot: the stage sends the slot's state of its layers (the last stage also its penalty
// counts) to the coordinator as a SnapshotMsg numbered `src`, before the step's tokens, so that
// every stage's piece is the state after the same tokens (coordinator/engine_recovery.cpp).
enum class SlotOpKind : uint8_t { Reset = 1, Clone = 2, SetSampling = 3, Snapshot = 4 };

struct SlotOp {
  SlotOpKind kind = SlotOpKind::Reset;
  int32_t slot = 0;
  int32_t src = 0;          // Clone: copy state (and penalties) of `src` into `slot`; Snapshot: its number
  SamplingParams sampling;  // SetSampling
};

// What the last stage returns for a segment.
enum Want : uint8_t {
  kWantNothing = 0,     // prompt tokens whose outputs nobody needs
  kWantSample = 1,      // sample one token after the segment's last token
  kWantLogitsAll = 2,   // logits after every token of the segment (`rwkvpp logits`)
  kWantLogitsLast = 4,  // logits after the last token
};

struct StepMsg {
  uint64_t step = 0;
  std::vector<SlotOp> ops;
  std::vector<Segment> segs;      // consecutive, covering n tokens
  std::vector<uint8_t> want;      // per segment, Want bits
  std::vector<uint32_t> position; // per segment: index of the token to sample (RNG counter)
  std::vector<int32_t> tokens;    // [n] token ids (all stages: penalties use none, the first
                                  // stage embeds them; kept so that every stage can validate)
  // >= 0: the hidden vectors are not in the message but in the receiver's shared slot of this
  // number (worker/shared_ring.h); -1: in the message (or none: stage 0).
  int32_t shared_slot = -1;
  int64_t n_tokens() const { return int64_t(tokens.size()); }
};

// Shared receive slots between neighbouring stages on one host (worker/shared_ring.h). The
// receiving stage offers its slots to the previous stage (tag kTagShare); that stage answers
// with an Accept ahead of its Steps (tag kTagStep, so it arrives before any Step that uses a
// slot), or a refusal; the receiver returns each slot with a Credit (kTagShare) once it has
// queued its copy out of it.
enum class ShareKind : uint8_t { Offer = 1, Accept = 2, Credit = 3 };

struct ShareMsg {
  ShareKind kind = ShareKind::Offer;
  std::string host, share_kind;  // Offer: the receiver's host name and Backend::share_kind()
  uint64_t slot_bytes = 0;       // Offer
  // Offer: per slot, its buffer's handle and its "consumed" signal's; Accept: per slot, the
  // sender's "written" signal's handle.
  std::vector<std::vector<uint8_t>> buffers, signals;
  uint8_t ok = 0;                // Accept: 0 is a refusal, with the reason in `why`
  std::string why;
  uint32_t slot = 0;             // Credit
};

struct SegmentResult {
  int32_t token = -1;     // sampled id, or -1
  float logprob = 0;
  std::vector<float> logits;  // [rows, vocab] when requested
};

struct ResultMsg {
  uint64_t step = 0;
  std::vector<SegmentResult> segs;
};

// A clock exchange (--trace): the stage's send time t0; rank 0's answer adds its time t1 and
// the time that becomes timestamp 0 of the trace (all CLOCK_MONOTONIC ns of their ranks).
struct ClockMsg {
  uint64_t t0 = 0, t1 = 0, base = 0;
};

// Recovery (coordinator/engine_recovery.cpp). A stage's piece of a snapshot (tag
// epoch_tag(kTagSnapshot)): the slot's state of the stage's layers, concatenated in layer order
// (StatePool::read), and on the last stage its penalty counts (id, count).
struct SnapshotMsg {
  int32_t serial = 0, stage = 0, slot = 0;
  std::vector<float> state;
  std::vector<std::pair<int32_t, float>> penalty;
};
// Coordinator -> a stage (kTagCtrl): the new wiring (assign.prev_rank/next_rank/epoch, and the
// stage's number and the stage count, which a re-partition lowers), then `restores` slots in one
// Restore message of `body_bytes` bytes on kTagRestore. The layers are the stage's own or, when
// a neighbouring stage was lost with no standby left (a re-partition), a wider range that
// contains them (and may add the embedding or the head): the stage reads the layers it does not
// hold yet from its own shards first. The stage drops its old step loop, restores the slots,
// starts a new loop in the new epoch and answers Recovered with that epoch (a recovery started
// again after a second loss re-wires the stages that answered already: their older answer is
// skipped), or Error when it could not load the new layers.
struct RecoverMsg {
  AssignMsg assign;
  uint32_t restores = 0;
  uint64_t body_bytes = 0;
};
// One slot to restore: a fresh state (Reset) or `state` (the stage's floats of a snapshot),
// its sampling parameters, and on the last stage its penalty counts.
struct SlotRestore {
  int32_t slot = 0;
  uint8_t fresh = 1;
  std::vector<float> state;
  SamplingParams sampling;
  std::vector<std::pair<int32_t, float>> penalty;
};
std::vector<uint8_t> encode_snapshot(const SnapshotMsg& m);
SnapshotMsg decode_snapshot(const Message& msg, const std::string& what);
std::vector<uint8_t> encode_recover(const RecoverMsg& m);
RecoverMsg decode_recover(const Message& msg, const std::string& what);
std::vector<uint8_t> encode_restore(const std::vector<SlotRestore>& slots);
std::vector<SlotRestore> decode_restore(const Message& msg, const std::string& what);
// A stage's answer to a Recover: the epoch it is wired in now, and its Ready as it is now (its
// weight and state bytes, the files it opened, its numerics); `ready.load_seconds` is the time
// it spent reading the layers a re-partition added, 0 when it read none.
struct RecoveredMsg {
  int32_t epoch = 0;
  ReadyMsg ready;
};
std::vector<uint8_t> encode_recovered(const RecoveredMsg& m);
// Throws the stage's message when it answered Error.
RecoveredMsg decode_recovered(const Message& msg, const std::string& what);

// Capacities: the receive buffers both ends size from the model and the assignment.
// Bytes a Step message may need for `max_tokens` tokens of a model with this config.
size_t step_capacity(const ModelConfig& cfg, int max_tokens, int max_slots);
// Bytes a Result message may need (logits of at most `max_logit_rows` rows).
size_t result_capacity(const ModelConfig& cfg, int max_tokens, int max_logit_rows);
// Most logit rows one Result may carry (keeps messages to about 64 MiB).
int max_logit_rows(const ModelConfig& cfg);

// Encoding: each returns a complete framed message (header + payload).
std::vector<uint8_t> encode_hello(const HelloMsg& m);
std::vector<uint8_t> encode_assign(const AssignMsg& m);
std::vector<uint8_t> encode_ready(const ReadyMsg& m);
std::vector<uint8_t> encode_stats(const StatsMsg& m);
std::vector<uint8_t> encode_shutdown();
std::vector<uint8_t> encode_error(const std::string& what);
std::vector<uint8_t> encode_heartbeat(uint64_t seq, const StatsMsg& stats);
// A Step with the hidden vectors appended (floats, possibly none for stage 0).
std::vector<uint8_t> encode_step(const StepMsg& m, const float* hidden, size_t hidden_floats);
// The same message without its hidden payload: the caller appends hidden_floats * 4 bytes
// (e.g. a device download straight into a message buffer); the header already counts them.
std::vector<uint8_t> encode_step_head(const StepMsg& m, size_t hidden_floats);
std::vector<uint8_t> encode_result(const ResultMsg& m);
std::vector<uint8_t> encode_share(const ShareMsg& m);
std::vector<uint8_t> encode_clock(const ClockMsg& m);
// A rank's trace events (common/trace.h events_json()): sent after a Trace message carrying
// only their size (encode_trace_size), so that rank 0 can make room for them.
std::vector<uint8_t> encode_trace_size(uint64_t bytes);
std::vector<uint8_t> encode_trace(const std::string& events);

// Decoding: `what` names the sender in errors ("Step from rank 2").
Ctrl peek_ctrl(const Message& msg, const std::string& what);
HelloMsg decode_hello(const Message& msg, const std::string& what);
AssignMsg decode_assign(const Message& msg, const std::string& what);
ReadyMsg decode_ready(const Message& msg, const std::string& what);
StatsMsg decode_stats(const Message& msg, const std::string& what);
StatsMsg decode_heartbeat(const Message& msg, const std::string& what);  // the Stats it carries
std::string decode_error(const Message& msg, const std::string& what);
// Decodes the step; the hidden payload is returned as a view into the message.
StepMsg decode_step(const Message& msg, const std::string& what, std::span<const uint8_t>* hidden);
ResultMsg decode_result(const Message& msg, const std::string& what);
ShareMsg decode_share(const Message& msg, const std::string& what);
ClockMsg decode_clock(const Message& msg, const std::string& what);
uint64_t decode_trace_size(const Message& msg, const std::string& what);
std::string decode_trace(const Message& msg, const std::string& what, uint64_t max_bytes);

}  // namespace rwkvpp
