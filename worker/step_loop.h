// The stage side of the step protocol: receives Steps from the previous rank, applies their slot
// operations, runs the stage's layers, and sends the hidden vectors on (or, on the last stage,
// samples and sends Results to the coordinator). Communication overlaps compute: the next
// receive is posted before the current step is computed, and sends complete in the background.
#pragma once

#include <chrono>
#include <deque>
#include <vector>

#include "net/transport.h"
#include "worker/protocol.h"
#include "worker/stage.h"

namespace rwkvpp {

// Bytes a Step message may need for `max_tokens` tokens of a model with this config.
size_t step_capacity(const ModelConfig& cfg, int max_tokens, int max_slots);
// Bytes a Result message may need (logits of at most `max_logit_rows` rows).
size_t result_capacity(const ModelConfig& cfg, int max_tokens, int max_logit_rows);
// Most logit rows one Result may carry (keeps messages to about 64 MiB).
int max_logit_rows(const ModelConfig& cfg);

class StepLoop {
 public:
  StepLoop(Transport& t, Stage& stage, const AssignMsg& a);
  ~StepLoop();
  // Handles at most one Step if one has arrived, and drives pending sends and heartbeats.
  // Never blocks. Returns true when it did work.
  bool poll();
  // Waits until every send has completed (at shutdown).
  void drain();
  StatsMsg stats() const;

 private:
  void handle(std::span<const uint8_t> bytes);
  void send(int peer, int tag, std::vector<uint8_t> msg);
  void reap_sends();

  Transport& t_;
  Stage& stage_;
  AssignMsg a_;
  std::vector<uint8_t> rbuf_, rspare_;  // receive buffer and the one being handled
  RequestId rreq_ = 0;
  std::deque<std::pair<RequestId, std::vector<uint8_t>>> sends_;
  std::vector<SamplingParams> sampling_;
  std::vector<PenaltyState> penalty_;
  std::vector<float> host_hidden_, logits_;
  std::chrono::steady_clock::time_point last_heartbeat_, idle_since_;
  uint64_t hb_seq_ = 0;
  StatsMsg stats_;
};

}  // namespace rwkvpp
