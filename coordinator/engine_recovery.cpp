// Recovery from a lost stage (coordinator/engine.h, RecoveryOptions; docs/cluster.md).
//
// Snapshots: when a sequence has been fed `snapshot_tokens` tokens since its last complete
// snapshot, the next Step that carries it also carries a Snapshot slot op ahead of its tokens;
// every stage applies it at the same point of the stream and sends its piece (the slot's state
// of its layers; the last stage also the penalty counts) to rank 0. Once every stage's piece is
// in, it becomes the sequence's base and the log before it is dropped. A sequence cloned from a
// prefix starts with the prefix's base and log (a prefix's state does not change once read);
// a prompt snapshot (Request::snapshot_at, rwkvpp serve's state cache) keeps its sequence's
// base and log at the Clone (Lineage), and is restored and replayed like a sequence.
//
// On a lost stage (turn() catches PeerLost): admission stops (all of this runs inside one
// turn), the steps in flight are rolled back (their tokens go back to the front of each
// sequence's pending tokens), `replace` gives the lost layers to a standby (with none left and
// --repartition, the neighbouring stages take them on where their ranks' memory allows:
// plan_repartition; the pipeline has one stage fewer and they read the layers), every stage is
// re-wired in a new epoch (epoch_tag(): what the old pipeline still had on the way is never
// matched), every resident slot is restored on every stage (its base, or a fresh state), the
// logs are replayed through the whole pipeline without sampling, and the engine goes on. The
// sampler is counter-based (seed, position), and the CPU backend gives the same bits however
// tokens are batched or chunked, so every sequence continues exactly as without the loss.
#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>

#include "coordinator/engine.h"
#include "coordinator/engine_seq.h"
#include "protocol/ctrl_io.h"

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

void Engine::enable_recovery(RecoveryOptions o) {
  if (o.snapshot_tokens < 1) fail("--snapshot-tokens {}: at least 1", o.snapshot_tokens);
  if (!o.replace) fail("recovery needs a way to replace a lost stage");
  recovery_ = std::move(o);
  recovery_on_ = true;
  sbuf_ = ByteBuffer(std::max<size_t>(recovery_.snapshot_capacity, 4096));
  sreq_ = t_.post_recv(kAnyPeer, epoch_tag(kTagSnapshot, epoch_), sbuf_.data(), sbuf_.size());
}

void Engine::add_snapshot_op(Seq& s, StepMsg& m) {
  if (s.snap_serial >= 0 || s.log.size() < size_t(recovery_.snapshot_tokens)) return;
  s.snap_serial = next_serial_;
  next_serial_ = next_serial_ == INT32_MAX ? 0 : next_serial_ + 1;
  s.snap_log = s.log.size();
  s.snap_sampled = s.sampled.size();
  s.snap_have = 0;
  SnapshotMsg none;
  none.serial = -1;  // not in yet
  s.pieces.assign(stage_ranks_.size(), none);
  snap_owner_[s.snap_serial] = s.id;
  m.ops.push_back({SlotOpKind::Snapshot, s.slot, s.snap_serial, {}});
}

bool Engine::poll_snapshots() {
  bool any = false;
  Completion c;
  while (test_req(sreq_, &c)) {
    any = true;
    const std::string what = fmt::format("Snapshot from rank {}", c.peer);
    SnapshotMsg p = decode_snapshot(decode_message({sbuf_.data(), c.bytes}, sbuf_.size()), what);
    sreq_ = t_.post_recv(kAnyPeer, epoch_tag(kTagSnapshot, epoch_), sbuf_.data(), sbuf_.size());
    auto own = snap_owner_.find(p.serial);
    if (own == snap_owner_.end()) continue;  // its sequence finished meanwhile
    auto it = seqs_.find(own->second);
    if (it == seqs_.end() || it->second->snap_serial != p.serial) {
      snap_owner_.erase(own);
      continue;
    }
    Seq& s = *it->second;
    if (p.stage < 0 || size_t(p.stage) >= s.pieces.size() || stage_ranks_[size_t(p.stage)] != c.peer)
      fail("{}: a piece for stage {}, which that rank does not hold", what, p.stage);
    if (s.pieces[size_t(p.stage)].serial < 0) ++s.snap_have;
    s.pieces[size_t(p.stage)] = std::move(p);
    if (size_t(s.snap_have) < s.pieces.size()) continue;
    // Complete: the new base; the log and samples before it are no longer needed.
    auto d = std::make_shared<SnapData>();
    const size_t layer_floats = size_t(layer_state_bytes(cfg_) / 4);
    d->state.reserve(size_t(cfg_.n_layer) * layer_floats);
    for (size_t st = 0; st < s.pieces.size(); ++st) {
      const std::vector<float>& piece = s.pieces[st].state;
      const size_t layers = size_t(plan_[st].last - plan_[st].first);
      if (piece.size() != layers * layer_floats)
        fail("Snapshot from rank {}: {} state floats for layers {}-{}, which hold {}", stage_ranks_[st], piece.size(),
             plan_[st].first, plan_[st].last - 1, layers * layer_floats);
      d->state.insert(d->state.end(), piece.begin(), piece.end());
    }
    d->penalty = std::move(s.pieces.back().penalty);
    s.base = std::move(d);
    s.log.erase(s.log.begin(), s.log.begin() + std::ptrdiff_t(s.snap_log));
    s.sampled.erase(s.sampled.begin(), s.sampled.begin() + std::ptrdiff_t(s.snap_sampled));
    s.pieces.clear();
    s.snap_serial = -1;
    s.no_base = false;
    snap_owner_.erase(own);
  }
  return any;
}

// The steps in flight are lost with the stage: each sequence's tokens in them go back to the
// front of its pending tokens (and out of its log), so they are fed again after the replay,
// with the same sampling position.
void Engine::roll_back_in_flight() {
  for (auto& [step, f] : inflight_) {
    for (size_t i = 0; i < f.seq_ids.size(); ++i) {
      auto it = seqs_.find(f.seq_ids[i]);
      if (it == seqs_.end()) continue;
      Seq& s = *it->second;
      const size_t take = size_t(f.takes[i]);
      RWKVPP_CHECK(s.log.size() >= take && s.fed >= take);
      s.pending.insert(s.pending.begin(), s.log.end() - std::ptrdiff_t(take), s.log.end());
      s.log.resize(s.log.size() - take);
      s.fed -= take;
      tokens_ -= take;
      s.in_flight = false;
    }
    if (f.send) t_.cancel(f.send);
    for (auto& k : f.keep) graveyard_.push_back(std::move(k));  // a retired send may still read it
  }
  inflight_.clear();
  // Snapshots not complete are dropped: the logs stay relative to the complete ones.
  for (auto& [id, s] : seqs_) {
    s->snap_serial = -1;
    s->pieces.clear();
  }
  snap_owner_.clear();
}

// Per stage, every slot whose state a recovery rebuilds: each resident sequence's (running, or
// a kept prefix) and each prompt snapshot's: its base (or a fresh state), its sampling
// parameters, and on the last stage its penalty counts.
std::vector<std::vector<SlotRestore>> Engine::restores() const {
  const size_t n = stage_ranks_.size();
  const size_t layer_floats = size_t(layer_state_bytes(cfg_) / 4);
  std::vector<std::vector<SlotRestore>> out(n);
  auto add = [&](int slot, const SnapData* base, const std::vector<std::pair<int32_t, float>>& sampled,
                 const SamplingParams& sampling) {
    // The last stage's penalty counts: the base's, with every sample since applied as the
    // sampler applies them (kernels/sampling.cpp: decay every count, then count the id).
    std::unordered_map<int32_t, float> counts;
    if (base) counts.insert(base->penalty.begin(), base->penalty.end());
    for (const auto& [tok, decay] : sampled) {
      for (auto& [k, c] : counts) c *= decay;
      counts[tok] += 1.0f;
    }
    for (size_t st = 0; st < n; ++st) {
      SlotRestore r;
      r.slot = slot;
      r.fresh = base ? 0 : 1;
      if (base)  // this stage's layers of the snapshot (of every layer)
        r.state.assign(base->state.begin() + std::ptrdiff_t(size_t(plan_[st].first) * layer_floats),
                       base->state.begin() + std::ptrdiff_t(size_t(plan_[st].last) * layer_floats));
      r.sampling = sampling;
      if (st + 1 == n) r.penalty.assign(counts.begin(), counts.end());
      out[st].push_back(std::move(r));
    }
  };
  for (const auto& [id, sp] : seqs_)
    if (sp->slot >= 0 && sp->admitted) add(sp->slot, sp->base.get(), sp->sampled, sp->req.sampling);
  for (const auto& [id, slot] : snapshots_) {
    const Lineage& l = *lineage_.at(id);
    add(slot, l.base.get(), l.sampled, l.sampling);
  }
  return out;
}

// Every stage (the new one included) in the new epoch: its neighbours (and after a re-partition
// its wider layers), then its slots; then every stage's answer, with its Ready.
void Engine::rewire(const std::vector<std::vector<SlotRestore>>& per_stage, RecoveryReport& rep) {
  const int coord = t_.rank();
  const size_t n = stage_ranks_.size();
  // A stage's Ready as it answered: in the stages' list, and the time it spent reading the
  // layers a re-partition gave it into the report.
  auto answered = [&](size_t st, const ReadyMsg& ready, bool current) {
    if (ready.load_seconds > 0) rep.taken_load_seconds[stage_ranks_[st]] += ready.load_seconds;
    if (current && recovery_.readies && st < recovery_.readies->size()) (*recovery_.readies)[st] = ready;
  };
  for (size_t st = 0; st < n; ++st) {
    RecoverMsg m;
    AssignMsg& a = m.assign;
    a.stage = int32_t(st);
    a.n_stages = int32_t(n);
    a.first = plan_[st].first;
    a.last = plan_[st].last;
    a.embed = plan_[st].embed;
    a.head = plan_[st].head;
    a.prev_rank = st == 0 ? coord : stage_ranks_[st - 1];
    a.next_rank = st + 1 < n ? stage_ranks_[st + 1] : coord;
    a.coord_rank = coord;
    a.max_slots = lim_.max_slots;
    a.max_tokens = lim_.max_tokens;
    a.dtype = recovery_.dtype;
    a.epoch = epoch_;
    m.restores = uint32_t(per_stage[st].size());
    if (stage_ranks_[st] == coord) {
      RWKVPP_CHECK(recovery_.recover_local != nullptr, "a local stage without recover_local");
      answered(st, recovery_.recover_local(m, per_stage[st]), true);
      continue;
    }
    const std::vector<uint8_t> body = encode_restore(per_stage[st]);
    m.body_bytes = body.size();
    send_blocking(t_, stage_ranks_[st], kTagCtrl, encode_recover(m));
    send_blocking(t_, stage_ranks_[st], kTagRestore, body);
  }
  for (size_t st = 0; st < n; ++st) {
    if (stage_ranks_[st] == coord) continue;
    // A stage re-wired by an earlier attempt of this recovery answered that epoch too: skipped.
    const std::string what = fmt::format("Recovered from rank {}", stage_ranks_[st]);
    for (int skipped = 0;; ++skipped) {
      auto b = recv_ctrl(t_, stage_ranks_[st], kCtrlCap, 600, "its Recovered (re-wiring after a loss)");
      const Message msg = decode_message(b, kCtrlCap);
      if (msg.header.msg_type() == MsgType::Error)
        fail("recovery: rank {} could not be re-wired as stage {} (layers {}-{}): {}", stage_ranks_[st], st,
             plan_[st].first, plan_[st].last - 1, decode_error(msg, what));
      const RecoveredMsg got = decode_recovered(msg, what);
      answered(st, got.ready, got.epoch == epoch_);
      if (got.epoch == epoch_) break;
      if (got.epoch > epoch_ || skipped >= kMaxEpoch) fail("{}: epoch {}, expected {}", what, got.epoch, epoch_);
    }
  }
}

// Feeds every resident sequence's log through the new pipeline, reading only (no sampling,
// no logits), up to --microbatches steps in flight; returns the tokens replayed.
uint64_t Engine::replay() {
  struct Cursor {
    int slot;
    const std::vector<int32_t>* log;
    size_t at = 0;
    bool busy = false;
  };
  std::vector<Cursor> cur;
  for (auto& [id, sp] : seqs_)
    if (sp->slot >= 0 && sp->admitted && !sp->log.empty()) cur.push_back({sp->slot, &sp->log});
  for (auto& [id, slot] : snapshots_)
    if (!lineage_.at(id)->log.empty()) cur.push_back({slot, &lineage_.at(id)->log});
  struct Sent {
    std::vector<size_t> cursors;
    std::vector<uint8_t> msg;
    RequestId send = 0;
  };
  std::map<uint64_t, Sent> sent;
  // A loss during the replay (the recovery starts again): the sends still posted may read
  // their bytes until the transport goes.
  struct Keep {
    Engine& e;
    std::map<uint64_t, Sent>& sent;
    ~Keep() {
      for (auto& [step, s] : sent) {
        if (s.send) e.t_.cancel(s.send);
        e.graveyard_.push_back(std::move(s.msg));
      }
    }
  } keep{*this, sent};
  uint64_t replayed = 0;
  const int tag_step = epoch_tag(kTagStep, epoch_);
  for (;;) {
    bool busy = false;
    while (int(sent.size()) < lim_.microbatches) {
      StepMsg m;
      m.step = next_step_;
      Sent out;
      int tokens = 0;
      for (size_t i = 0; i < cur.size() && int(m.segs.size()) < lim_.max_batch && tokens < lim_.max_tokens; ++i) {
        Cursor& c = cur[i];
        if (c.busy || c.at == c.log->size()) continue;
        const int take = std::min<int>(int(c.log->size() - c.at), std::min(lim_.chunk, lim_.max_tokens - tokens));
        m.segs.push_back({c.slot, int32_t(tokens), int32_t(take)});
        m.want.push_back(kWantNothing);
        m.position.push_back(0);
        m.tokens.insert(m.tokens.end(), c.log->begin() + std::ptrdiff_t(c.at),
                        c.log->begin() + std::ptrdiff_t(c.at + size_t(take)));
        c.at += size_t(take);
        c.busy = true;
        out.cursors.push_back(i);
        tokens += take;
      }
      if (m.segs.empty()) break;
      ++next_step_;
      replayed += uint64_t(tokens);
      Sent& in = sent.emplace(m.step, std::move(out)).first->second;
      in.msg = encode_step(m, nullptr, 0);
      in.send = t_.post_send(stage_ranks_.front(), tag_step, in.msg.data(), in.msg.size());
      busy = true;
    }
    if (sent.empty()) break;
    if (local_poll_ && local_poll_()) busy = true;
    Completion c;
    if (test_req(rreq_, &c)) {
      busy = true;
      std::swap(rbuf_, rspare_);
      rreq_ = t_.post_recv(stage_ranks_.back(), epoch_tag(kTagResult, epoch_), rbuf_.data(), rbuf_.size());
      const ResultMsg r = decode_result(decode_message({rspare_.data(), c.bytes}, rbuf_.size()),
                                        fmt::format("Result from rank {} (replay)", c.peer));
      auto it = sent.find(r.step);
      if (it == sent.end()) fail("replay: a result for unknown step {} from rank {}", r.step, c.peer);
      while (it->second.send && !test_req(it->second.send)) t_.wait_some(std::chrono::milliseconds(1));
      for (size_t i : it->second.cursors) cur[i].busy = false;
      sent.erase(it);
    }
    poll_heartbeats();
    if (!busy) t_.wait_some(std::chrono::milliseconds(1));
  }
  return replayed;
}

// Gives every stage whose rank is lost (in `lost`, or marked failed by the transport: a second
// loss seen before the re-wiring) to a standby, or with none left re-partitions over the
// survivors (repartition()). Throws the rank's PeerLost when neither can take it.
void Engine::replace_lost(std::vector<PeerLost>& lost, RecoveryReport& rep) {
  for (size_t st = 0; st < stage_ranks_.size();) {
    const int r = stage_ranks_[st];
    auto known = std::find_if(lost.begin(), lost.end(), [r](const PeerLost& p) { return p.peer() == r; });
    if (r == t_.rank() || (known == lost.end() && !t_.peer_failed(r))) {
      ++st;
      continue;
    }
    if (known == lost.end()) {
      lost.emplace_back(r, fmt::format("stage {} (layers {}-{}): the transport reports its connection failed", st,
                                       plan_[st].first, plan_[st].last - 1));
      fmt::print(stderr, "rwkvpp: {} (while recovering)\n", lost.back().what());
      known = lost.end() - 1;
    }
    const auto l0 = Clock::now();
    const int standby = recovery_.replace(r, int(st));
    if (standby < 0) {
      repartition(st, PeerLost(*known), rep);  // stage st is gone: the next one is at st now
      continue;
    }
    rep.replaced.push_back({r, int(st), standby, plan_[st].first, plan_[st].last,
                            std::chrono::duration<double>(Clock::now() - l0).count()});
    stage_ranks_[st] = standby;
    ++st;
  }
}

void Engine::repartition(size_t st, const PeerLost& lost, RecoveryReport& rep) {
  const StagePlan gone = plan_[st];
  const int r = stage_ranks_[st];
  if (!recovery_.repartition) {
    fmt::print(stderr,
               "rwkvpp: no standby worker is left to take layers {}-{} (stage {}) of lost rank {} (--standby): "
               "the job ends\n",
               gone.first, gone.last - 1, st, r);
    throw lost;
  }
  PlanInputs in;
  in.cfg = cfg_;
  in.dtype = recovery_.dtype;
  in.max_slots = lim_.max_slots;
  in.ranks = stage_ranks_;
  for (int k : stage_ranks_) in.free_memory.push_back(recovery_.offered.count(k) ? recovery_.offered.at(k) : 0);
  const Repartition p = plan_repartition(in, plan_, int(st));
  if (p.plan.empty()) {
    fmt::print(stderr, "rwkvpp: no standby worker is left and no re-partition over the survivors fits "
               "(--repartition): {}: the job ends\n", p.why);
    throw lost;
  }
  std::string given;
  auto give = [&](size_t to, int first, int last) {
    if (first >= last) return;
    rep.taken.push_back({r, stage_ranks_[to], first, last});
    given += fmt::format("{}rank {} takes layers {}-{}", given.empty() ? "" : ", ", stage_ranks_[to], first, last - 1);
  };
  if (st > 0) give(st - 1, gone.first, p.cut);
  if (st + 1 < stage_ranks_.size()) give(st + 1, p.cut, gone.last);
  stage_ranks_.erase(stage_ranks_.begin() + std::ptrdiff_t(st));
  plan_ = p.plan;
  if (recovery_.readies && st < recovery_.readies->size())
    recovery_.readies->erase(recovery_.readies->begin() + std::ptrdiff_t(st));
  fmt::print(stderr, "rwkvpp: no standby worker is left: re-partition over the survivors: {} of lost rank {}; "
             "{} stage(s): {}\n", given, r, plan_.size(), describe(plan_));
  std::fflush(stderr);
}

// One attempt: a new epoch (its receives posted before any stage can send), every stage
// re-wired and restored, the logs replayed. Throws PeerLost when a stage is lost meanwhile.
void Engine::rewire_and_replay(RecoveryReport& rep) {
  if (epoch_ >= kMaxEpoch) fail("recovery: the pipeline has been re-wired {} times, the most the tags allow", epoch_);
  ++epoch_;
  rep.epoch = epoch_;
  if (rreq_) t_.cancel(rreq_);
  rreq_ = t_.post_recv(stage_ranks_.back(), epoch_tag(kTagResult, epoch_), rbuf_.data(), rbuf_.size());
  if (sreq_) t_.cancel(sreq_);
  sreq_ = t_.post_recv(kAnyPeer, epoch_tag(kTagSnapshot, epoch_), sbuf_.data(), sbuf_.size());
  const auto per_stage = restores();
  rep.sequences = int(per_stage.empty() ? 0 : per_stage[0].size());
  rep.from_snapshots = 0;
  if (!per_stage.empty())
    for (const SlotRestore& r : per_stage[0]) rep.from_snapshots += r.fresh ? 0 : 1;
  rep.stages = int(stage_ranks_.size());
  rewire(per_stage, rep);
  last_seen_.clear();
  rep.replayed_tokens += replay();
  last_seen_.clear();  // every stage is timed afresh from here
}

bool Engine::recover(const PeerLost& e) {
  const auto t0 = Clock::now();
  auto holds_stage = [this](int r) {
    return r != t_.rank() && std::find(stage_ranks_.begin(), stage_ranks_.end(), r) != stage_ranks_.end();
  };
  if (!holds_stage(e.peer())) return false;
  const size_t stage = size_t(std::find(stage_ranks_.begin(), stage_ranks_.end(), e.peer()) - stage_ranks_.begin());
  fmt::print(stderr, "rwkvpp: {}\n", e.what());
  const bool unknown =
      std::any_of(seqs_.begin(), seqs_.end(), [](auto& p) { return p.second->slot >= 0 && p.second->no_base; }) ||
      std::any_of(snapshots_.begin(), snapshots_.end(),
                  [this](auto& p) { return !lineage_.count(p.first) || lineage_.at(p.first)->no_base; });
  if (unknown) {
    fmt::print(stderr, "rwkvpp: cannot recover: a resident state was made before recovery was on\n");
    return false;
  }
  fmt::print(stderr, "rwkvpp: recovering stage {} (layers {}-{}): admission paused\n", stage, plan_[stage].first,
             plan_[stage].last - 1);
  std::fflush(stderr);
  roll_back_in_flight();
  RecoveryReport rep;
  rep.attempts = 0;
  std::vector<PeerLost> lost{e};
  // Bounded: every attempt but the last uses up a standby, removes a stage (a re-partition) or
  // ends the job (replace_lost).
  for (;;) {
    replace_lost(lost, rep);
    ++rep.attempts;
    rep.replayed_tokens = 0;
    try {
      rewire_and_replay(rep);
      break;
    } catch (const PeerLost& again) {
      if (!holds_stage(again.peer())) throw;  // the coordinator's own, or a rank of no stage
      fmt::print(stderr, "rwkvpp: {} (while recovering, epoch {}): recovering again\n", again.what(), epoch_);
      std::fflush(stderr);
      lost.push_back(again);
    }
  }
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  recoveries_.push_back(rep);
  print_recovered(rep, lost);
  return true;
}

void Engine::print_recovered(const RecoveryReport& rep, const std::vector<PeerLost>& lost) const {
  std::string took;
  for (const RecoveryReport::Replaced& r : rep.replaced)
    took += fmt::format("{}standby rank {} took stage {} (layers {}-{}; loaded in {:.3f} s)", took.empty() ? "" : ", ",
                        r.standby, r.stage, r.first, r.last - 1, r.load_seconds);
  // Per rank that took layers (in the order of its first), what it took and its reads of them.
  std::vector<int> takers;
  for (const RecoveryReport::Taken& k : rep.taken)
    if (std::find(takers.begin(), takers.end(), k.rank) == takers.end()) takers.push_back(k.rank);
  if (!takers.empty()) took += fmt::format("{}re-partitioned over the survivors: ", took.empty() ? "" : ", ");
  for (size_t i = 0; i < takers.size(); ++i) {
    std::string what;
    for (const RecoveryReport::Taken& k : rep.taken)
      if (k.rank == takers[i])
        what += fmt::format("{}layers {}-{} of rank {}", what.empty() ? "" : " and ", k.first, k.last - 1, k.lost_rank);
    const auto load = rep.taken_load_seconds.find(takers[i]);
    took += fmt::format("{}rank {} took {} (loaded in {:.3f} s)", i ? ", " : "", takers[i], what,
                        load == rep.taken_load_seconds.end() ? 0.0 : load->second);
  }
  std::string ranks;
  for (const PeerLost& p : lost) ranks += fmt::format("{}{}", ranks.empty() ? "" : " and rank ", p.peer());
  std::string stages;
  if (!rep.taken.empty()) {
    for (size_t st = 0; st < stage_ranks_.size(); ++st)
      stages += fmt::format("{}rank {}: {}-{}", st ? ", " : "", stage_ranks_[st], plan_[st].first, plan_[st].last - 1);
    stages = fmt::format(", {} stage(s) now ({})", stage_ranks_.size(), stages);
  }
  fmt::print(stderr,
             "rwkvpp: recovered from the loss of rank {} in {:.3f} s: {}, restored {} sequence slot(s) ({} from a "
             "snapshot), replayed {} token(s), epoch {}{}{}; resuming\n",
             ranks, rep.seconds, took, rep.sequences, rep.from_snapshots, rep.replayed_tokens, epoch_, stages,
             rep.attempts > 1 ? fmt::format(" ({} attempts)", rep.attempts) : "");
  std::fflush(stderr);
}

}  // namespace rwkvpp
