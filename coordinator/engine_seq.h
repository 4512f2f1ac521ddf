// The engine's record of one sequence (coordinator/engine.cpp and engine_recovery.cpp only).
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "coordinator/engine.h"

namespace rwkvpp {

// A complete snapshot of a sequence: the slot's state of every layer of the model in layer
// order (every stage's piece, StatePool::read, one after the other), and the last stage's
// penalty counts. Every layer of a model holds the same number of state floats
// (layer_state_bytes), so a restore cuts it along the stages it restores into, which a
// re-partition may have changed since.
struct Engine::SnapData {
  std::vector<float> state;  // [n_layer, layer floats]
  std::vector<std::pair<int32_t, float>> penalty;
};

// A prompt snapshot's state (Request::snapshot_at): its sequence's base, log and samples when
// the Clone was made, and that sequence's sampling parameters.
struct Engine::Lineage {
  std::shared_ptr<const SnapData> base;
  std::vector<int32_t> log;
  std::vector<std::pair<int32_t, float>> sampled;
  SamplingParams sampling;
  bool no_base = false;
};

struct Engine::Seq {
  int id = 0;
  Request req;
  int slot = -1;
  size_t fed = 0;                 // prompt tokens already sent
  std::vector<int32_t> pending;   // tokens to feed next (prompt remainder or last sample)
  int generated = 0;
  bool in_flight = false, admitted = false, done = false;
  bool is_prefix = false;  // a shared prefix: keeps its slot when done, until released
  bool cancel = false;     // cancel() asked for it: ends at the next turn or when its step returns
  bool cancelled = false;  // finished with Finish::Cancelled
  int64_t logits_pos = 0;
  size_t next_snapshot = 0;  // index into req.snapshot_at of the next one due
  // Recovery (engine_recovery.cpp): the state is `base` (null: a fresh state) followed by the
  // tokens of `log`; `sampled` are the ids sampled since `base` with their penalty decay, which
  // rebuild the last stage's penalty counts. A pending snapshot (number snap_serial, -1: none)
  // was taken after snap_log tokens of the log and snap_sampled samples; its pieces arrive per
  // stage.
  std::shared_ptr<const SnapData> base;
  std::vector<int32_t> log;
  std::vector<std::pair<int32_t, float>> sampled;
  int32_t snap_serial = -1;
  size_t snap_log = 0, snap_sampled = 0;
  int snap_have = 0;
  std::vector<SnapshotMsg> pieces;
  // Its state is not known to the engine (a clone of a state it has no record of): not
  // recoverable until its own first complete snapshot.
  bool no_base = false;
};


}  // namespace rwkvpp
