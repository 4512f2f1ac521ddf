#include "coordinator/engine.h"

#include <algorithm>
#include <cstdlib>
#include <deque>

#include "common/env_options.h"
#include "common/trace.h"
#include "coordinator/engine_seq.h"
#include "net/test_and_clear.h"

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

const char* finish_name(Finish f) {
  switch (f) {
    case Finish::Length: return "length";
    case Finish::Stop: return "stop";
    case Finish::Cancelled: return "cancelled";
  }
  return "?";
}

Engine::Engine(Transport& t, const ModelConfig& cfg, std::vector<int> stage_ranks,
               std::vector<StagePlan> plan, EngineLimits lim, std::function<bool()> local_poll)
    : t_(t), cfg_(cfg), stage_ranks_(std::move(stage_ranks)), plan_(std::move(plan)), lim_(lim),
      local_poll_(std::move(local_poll)) {
  if (lim_.microbatches <= 0) lim_.microbatches = default_microbatches(int(stage_ranks_.size()));
  // A step must be able to carry something, or run() would wait forever.
  if (lim_.max_batch < 1 || lim_.chunk < 1 || lim_.max_tokens < 1 || lim_.max_slots < 1)
    fail(
        "engine limits: max batch {}, chunk {}, tokens per step {} and slots {} must each be at "
        "least 1",
        lim_.max_batch, lim_.chunk, lim_.max_tokens, lim_.max_slots);
  max_batch_limit_ = lim_.max_batch;
  for (int s = lim_.max_slots - 1; s >= 0; --s) free_slots_.push_back(s);
  rbuf_ = ByteBuffer(result_capacity(cfg_, lim_.max_tokens, lim_.max_logit_rows));
  rspare_ = ByteBuffer(rbuf_.size());
  rreq_ = t_.post_recv(stage_ranks_.back(), kTagResult, rbuf_.data(), rbuf_.size());
  hbuf_.resize(kHeaderBytes + 4096);
  hreq_ = t_.post_recv(kAnyPeer, kTagHeartbeat, hbuf_.data(), hbuf_.size());
  // The same liveness timeout as the transport's (net/liveness.h): a stage that sent nothing,
  // not even a heartbeat, for this long while steps are in flight is named as lost.
  // RWKVPP_PEER_TIMEOUT_S=0 turns the transports' check off, not this one: it keeps 20 s.
  const double s = env_options().net.peer_timeout_s;
  peer_timeout_ = std::chrono::milliseconds(int64_t((s > 0 ? s : 20) * 1000));
}

Engine::~Engine() {
  if (rreq_) t_.cancel(rreq_);
  if (hreq_) t_.cancel(hreq_);
  if (sreq_) t_.cancel(sreq_);
}

bool Engine::test_req(RequestId& id, Completion* c) { return test_and_clear(t_, id, c); }

int Engine::submit(Request r) {
  if (r.prompt.empty()) fail("a request needs at least one prompt token");
  for (int32_t id : r.prompt)
    if (id < 0 || id >= cfg_.vocab_size) fail("token id {} is out of range (vocabulary size {})", id, cfg_.vocab_size);
  if (r.max_tokens < 0) fail("max tokens must not be negative");
  for (size_t i = 0; i < r.snapshot_at.size(); ++i)
    if (r.snapshot_at[i] == 0 || r.snapshot_at[i] >= r.prompt.size() ||
        (i > 0 && r.snapshot_at[i] <= r.snapshot_at[i - 1]))
      fail("snapshot points must ascend within 1..{} (the prompt's tokens but the last)",
           r.prompt.size() - 1);
  if (r.prefix >= 0 && !snapshots_.count(r.prefix)) {
    auto p = seqs_.find(r.prefix);
    if (p == seqs_.end() || !p->second->is_prefix) fail("request names prefix {}, which is not a live prefix", r.prefix);
  }
  auto s = std::make_unique<Seq>();
  s->id = next_id_++;
  s->pending = r.prompt;
  s->req = std::move(r);
  int id = s->id;
  seqs_.emplace(id, std::move(s));
  return id;
}

int Engine::add_prefix(std::vector<int32_t> tokens) {
  Request r;
  r.prompt = std::move(tokens);
  return add_prefix(std::move(r));
}

int Engine::add_prefix(Request r) {
  if (r.max_tokens != 0) fail("a prefix only reads its tokens (max tokens must be 0)");
  r.keep_state = true;
  int id = submit(std::move(r));
  seqs_.at(id)->is_prefix = true;
  return id;
}

void Engine::release_prefix(int id) {
  if (auto sn = snapshots_.find(id); sn != snapshots_.end()) {
    for (auto& [k, s] : seqs_)
      if (!s->done && s->req.prefix == id) fail("release_prefix: prefix {} is still used by request {}", id, k);
    free_slots_.push_back(sn->second);
    snapshots_.erase(sn);
    lineage_.erase(id);
    return;
  }
  auto it = seqs_.find(id);
  if (it == seqs_.end() || !it->second->is_prefix) fail("release_prefix: {} is not a live prefix", id);
  for (auto& [k, s] : seqs_)
    if (!s->done && s->req.prefix == id) fail("release_prefix: prefix {} is still used by request {}", id, k);
  if (it->second->slot >= 0) free_slots_.push_back(it->second->slot);
  seqs_.erase(it);
}

void Engine::finish(Seq& s, Finish why) {
  s.done = true;
  s.cancelled = why == Finish::Cancelled;
  if (s.req.keep_state) s.is_prefix = true;
  if (!s.is_prefix) {  // a prefix keeps its slot until release_prefix()
    if (s.slot >= 0) free_slots_.push_back(s.slot);
    s.slot = -1;
    reap_.push_back(s.id);
  }
  if (s.req.on_finish) s.req.on_finish(why);
}

void Engine::snapshot(Seq& s, StepMsg& m) {
  const size_t p = s.req.snapshot_at[s.next_snapshot];
  if (s.req.snapshot_wanted && !s.req.snapshot_wanted(p)) return;
  if (free_slots_.empty()) return;
  const int id = next_id_++, slot = free_slots_.back();
  free_slots_.pop_back();
  // Ahead of the sequence's next tokens in this step: every stage copies the state after
  // exactly p tokens. Kept apart from seqs_, which the scheduler walks every step (a server's
  // cache may keep thousands).
  m.ops.push_back({SlotOpKind::Clone, slot, s.slot, {}});
  snapshots_.emplace(id, slot);
  if (recovery_on_)  // the state after exactly the tokens fed so far
    lineage_[id] = std::make_shared<const Lineage>(Lineage{s.base, s.log, s.sampled, s.req.sampling, s.no_base});
  if (s.req.on_snapshot) s.req.on_snapshot(p, id);
}

void Engine::set_max_batch(int n) {
  if (n < 1 || n > max_batch_limit_) fail("max batch {} is outside 1..{}", n, max_batch_limit_);
  lim_.max_batch = n;
}

bool Engine::schedule() {
  if (int(inflight_.size()) >= lim_.microbatches) return false;
  const uint64_t t0 = trace::on() ? trace::now_ns() : 0;
  StepMsg m;
  m.step = next_step_;
  InFlight f;
  int tokens = 0, logit_rows = 0;
  for (auto& [id, sp] : seqs_) {
    Seq& s = *sp;
    if (s.done || s.in_flight || s.cancel || s.pending.empty()) continue;
    if (int(m.segs.size()) >= lim_.max_batch || tokens >= lim_.max_tokens) break;
    if (!s.admitted) {
      const Seq* prefix = nullptr;
      int prefix_slot = -1;
      if (auto sn = snapshots_.find(s.req.prefix); sn != snapshots_.end()) {
        prefix_slot = sn->second;  // a snapshot: complete once its Clone is in the stream
      } else if (s.req.prefix >= 0) {
        prefix = seqs_.at(s.req.prefix).get();
        if (!prefix->done) continue;  // the prefix is still being read
        if (prefix->cancelled) {  // its state is incomplete: nothing can continue it
          finish(s, Finish::Cancelled);
          continue;
        }
      }
      if (free_slots_.empty()) continue;
      s.slot = free_slots_.back();
      free_slots_.pop_back();
      s.admitted = true;
      if (prefix) prefix_slot = prefix->slot;
      if (recovery_on_ && prefix) {  // the prefix's state is final: its base and log are this one's
        s.base = prefix->base;
        s.log = prefix->log;
        s.sampled = prefix->sampled;
        s.no_base = prefix->no_base;
      } else if (recovery_on_ && prefix_slot >= 0) {  // a prompt snapshot's
        auto l = lineage_.find(s.req.prefix);
        if (l == lineage_.end()) {
          s.no_base = true;
        } else {
          s.base = l->second->base;
          s.log = l->second->log;
          s.sampled = l->second->sampled;
          s.no_base = l->second->no_base;
        }
      }
      if (prefix_slot >= 0)
        m.ops.push_back({SlotOpKind::Clone, s.slot, prefix_slot, {}});
      else
        m.ops.push_back({SlotOpKind::Reset, s.slot, 0, {}});
      m.ops.push_back({SlotOpKind::SetSampling, s.slot, 0, s.req.sampling});
    }
    for (auto& at = s.req.snapshot_at; s.next_snapshot < at.size() && at[s.next_snapshot] <= s.fed;
         ++s.next_snapshot)
      if (at[s.next_snapshot] == s.fed) snapshot(s, m);
    if (recovery_on_) add_snapshot_op(s, m);
    int take = std::min<int>(int(s.pending.size()), std::min(lim_.chunk, lim_.max_tokens - tokens));
    if (s.next_snapshot < s.req.snapshot_at.size())  // the chunk ends at the next snapshot
      take = std::min<int>(take, int(s.req.snapshot_at[s.next_snapshot] - s.fed));
    if (s.req.logits_all) {
      take = std::min(take, lim_.max_logit_rows - logit_rows);
      if (take <= 0) continue;
      logit_rows += take;
    }
    bool last_of_input = take == int(s.pending.size());
    uint8_t want = kWantNothing;
    if (s.req.logits_all && s.fed < s.req.prompt.size()) want |= kWantLogitsAll;
    if (last_of_input && s.generated < s.req.max_tokens) want |= kWantSample;
    m.segs.push_back({s.slot, int32_t(tokens), int32_t(take)});
    m.want.push_back(want);
    m.position.push_back(uint32_t(s.generated));
    m.tokens.insert(m.tokens.end(), s.pending.begin(), s.pending.begin() + take);
    if (recovery_on_) s.log.insert(s.log.end(), s.pending.begin(), s.pending.begin() + take);
    s.pending.erase(s.pending.begin(), s.pending.begin() + take);
    s.fed += size_t(take);
    s.in_flight = true;
    f.seq_ids.push_back(s.id);
    f.takes.push_back(take);
    tokens += take;
  }
  if (m.segs.empty()) return false;
  ++next_step_;
  tokens_ += uint64_t(tokens);
  f.keep.push_back(encode_step(m, nullptr, 0));
  // In the map before the send is posted: a recovery rolls back every step there.
  InFlight& in = inflight_.emplace(m.step, std::move(f)).first->second;
  in.send = t_.post_send(stage_ranks_.front(), epoch_tag(kTagStep, epoch_), in.keep.back().data(),
                         in.keep.back().size());
  if (trace::on()) {
    const uint64_t t1 = in.posted_ns = trace::now_ns();
    trace::span(trace::Track::Admission, "admit + post step", m.step, t0, t1);
    trace::counter("batch (sequences)", m.step, t1, double(m.segs.size()));
    trace::counter("tokens in step", m.step, t1, double(tokens));
    trace::counter("state slots in use", m.step, t1, double(lim_.max_slots - int(free_slots_.size())));
    trace::counter("steps in flight", m.step, t1, double(inflight_.size()));
  }
  return true;
}

void Engine::handle_result(const ResultMsg& r) {
  auto it = inflight_.find(r.step);
  if (it == inflight_.end()) fail("result for unknown step {} from rank {}", r.step, stage_ranks_.back());
  // The step stays in flight (for a recovery to roll back) until its send is known complete.
  while (it->second.send && !test_req(it->second.send)) t_.wait_some(std::chrono::milliseconds(1));
  InFlight f = std::move(it->second);
  inflight_.erase(it);
  if (trace::on()) trace::async_span(trace::Track::Hops, "step through the pipeline", r.step, f.posted_ns, trace::now_ns());
  if (r.segs.size() != f.seq_ids.size())
    fail("result for step {} has {} segments, the step had {}", r.step, r.segs.size(), f.seq_ids.size());
  for (size_t i = 0; i < r.segs.size(); ++i) {
    Seq& s = *seqs_.at(f.seq_ids[i]);
    s.in_flight = false;
    if (s.cancel) {  // what the step brought for it is dropped
      finish(s, Finish::Cancelled);
      continue;
    }
    const SegmentResult& g = r.segs[i];
    if (s.req.logits_all && !g.logits.empty()) {
      int64_t rows = int64_t(g.logits.size()) / cfg_.vocab_size;
      for (int64_t k = 0; k < rows; ++k)
        if (s.req.on_logits) s.req.on_logits(s.logits_pos++, g.logits.data() + k * cfg_.vocab_size);
    }
    if (g.token >= 0) {
      ++s.generated;
      ++generated_;
      if (recovery_on_) s.sampled.push_back({g.token, s.req.sampling.penalty_decay});
      bool go_on = s.req.on_token ? s.req.on_token(g.token, g.logprob) : true;
      bool stop = std::find(s.req.stop_ids.begin(), s.req.stop_ids.end(), g.token) != s.req.stop_ids.end();
      if (stop || !go_on) {
        finish(s, Finish::Stop);
      } else if (s.generated >= s.req.max_tokens) {
        finish(s, Finish::Length);
      } else {
        s.pending.push_back(g.token);
      }
    } else if (s.pending.empty()) {
      finish(s, Finish::Length);  // prompt read, nothing (more) to generate
    }
  }
}

bool Engine::poll_results() {
  Completion c;
  if (!test_req(rreq_, &c)) return false;
  const uint64_t arrived = trace::on() ? trace::now_ns() : 0;
  // Double buffering: the next result lands in the spare buffer while this one is handled.
  std::swap(rbuf_, rspare_);
  rreq_ = t_.post_recv(stage_ranks_.back(), epoch_tag(kTagResult, epoch_), rbuf_.data(), rbuf_.size());
  const ByteBuffer& cur = rspare_;
  last_seen_[c.peer] = Clock::now();
  std::string what = fmt::format("Result from rank {}", c.peer);
  Message msg = decode_message({cur.data(), c.bytes}, rbuf_.size());
  ResultMsg r = decode_result(msg, what);
  handle_result(r);
  if (trace::on()) {
    const uint64_t done = trace::now_ns();
    trace::span(trace::Track::Admission, "handle result", r.step, arrived, done);
    if (rate_ns_ == 0) {
      rate_ns_ = done;
      rate_generated_ = generated_;
    } else if (done - rate_ns_ >= 100000000) {  // tokens/s over the last 0.1 s or more
      trace::counter("generated tokens/s", r.step, done, double(generated_ - rate_generated_) * 1e9 / double(done - rate_ns_));
      rate_ns_ = done;
      rate_generated_ = generated_;
    }
  }
  return true;
}

void Engine::poll_heartbeats() {
  std::string why;
  const int r = lost_stage(&why);
  if (r >= 0) throw PeerLost(r, why);
}

bool Engine::stage_lost() {
  std::string why;
  try {
    return lost_stage(&why) >= 0;
  } catch (const std::exception&) {
    return false;  // a bad heartbeat or a lost request: the next poll_heartbeats() reports it
  }
}

int Engine::lost_stage(std::string* why) {
  Completion c;
  while (t_.test(hreq_, &c)) {
    last_seen_[c.peer] = Clock::now();
    // The stage's statistics ride in its heartbeat (decoded before the buffer is reused).
    Message m = decode_message({hbuf_.data(), c.bytes}, hbuf_.size());
    if (!m.payload.empty()) heard_stats_[c.peer] = decode_heartbeat(m, fmt::format("Heartbeat from rank {}", c.peer));
    hreq_ = t_.post_recv(kAnyPeer, kTagHeartbeat, hbuf_.data(), hbuf_.size());
  }
  auto now = Clock::now();
  for (size_t s = 0; s < stage_ranks_.size(); ++s) {
    int r = stage_ranks_[s];
    if (r == t_.rank()) continue;
    if (t_.peer_failed(r)) {
      *why = fmt::format("stage {} (layers {}-{}): the transport reports its connection failed", s, plan_[s].first,
                         plan_[s].last - 1);
      return r;
    }
    auto it = last_seen_.find(r);
    if (it == last_seen_.end()) {
      last_seen_[r] = now;
      continue;
    }
    if (now - it->second > peer_timeout_) {
      *why = fmt::format("stage {} (layers {}-{}) sent nothing for {:.1f} s (liveness timeout, RWKVPP_PEER_TIMEOUT_S)",
                         s, plan_[s].first, plan_[s].last - 1, std::chrono::duration<double>(peer_timeout_).count());
      return r;
    }
  }
  return -1;
}

bool Engine::turn() {
  try {
    return turn_once();
  } catch (const PeerLost& e) {
    // A loss during the recovery starts it again inside recover(); a PeerLost out of it (no
    // standby left, the coordinator's own) ends the job, as without recovery.
    if (!recovery_on_ || !recover(e)) throw;
    return true;
  }
}

bool Engine::turn_once() {
  // A stop cancels whatever is not in flight, cancel() what it named; what is in flight comes
  // back first (handle_result).
  if (stop_requested() || cancels_ > 0) {
    const bool all = stop_requested();
    cancels_ = 0;
    for (auto& [id, s] : seqs_)
      if (!s->done && !s->in_flight && (all || s->cancel)) finish(*s, Finish::Cancelled);
  }
  for (int id : reap_) seqs_.erase(id);
  reap_.clear();
  bool busy = false;
  while (schedule()) busy = true;
  if (local_poll_ && local_poll_()) busy = true;
  if (poll_results()) busy = true;
  if (recovery_on_ && poll_snapshots()) busy = true;
  poll_heartbeats();
  return busy;
}

bool Engine::idle() const {
  return inflight_.empty() && std::all_of(seqs_.begin(), seqs_.end(), [](auto& p) { return p.second->done; });
}

bool Engine::poll(std::chrono::milliseconds wait) {
  const bool busy = turn();
  if (!busy && !inflight_.empty()) t_.wait_some(wait);
  return busy;
}

bool Engine::cancel(int id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second->done || it->second->is_prefix) return false;
  if (!it->second->cancel) ++cancels_;
  it->second->cancel = true;
  return true;
}

std::vector<double> Engine::stage_silence_s() const {
  const auto now = Clock::now();
  std::vector<double> out;
  for (int r : stage_ranks_) {
    auto it = last_seen_.find(r);
    out.push_back(r == t_.rank() || it == last_seen_.end() ? 0.0
                                                           : std::chrono::duration<double>(now - it->second).count());
  }
  return out;
}

std::vector<StatsMsg> Engine::stage_stats() const {
  std::vector<StatsMsg> out;
  for (int r : stage_ranks_) {
    if (r == t_.rank()) {
      out.push_back(local_stats_ ? local_stats_() : StatsMsg{});
      continue;
    }
    auto it = heard_stats_.find(r);
    out.push_back(it == heard_stats_.end() ? StatsMsg{} : it->second);
  }
  return out;
}

void Engine::run() {
  auto t0 = Clock::now();
  for (auto& [r, when] : last_seen_) when = t0;  // time spent outside run() does not count
  for (;;) {
    const bool busy = turn();
    if (idle()) break;
    if (!busy && inflight_.empty() && free_slots_.empty())
      fail("every state slot is held (by {} sequences and shared prefixes) and nothing can proceed: raise --max-batch "
           "or release prefixes", seqs_.size() + snapshots_.size());
    if (!busy) t_.wait_some(std::chrono::milliseconds(1));
  }
  // Finished sequences are forgotten; their slots are free again.
  for (auto it = seqs_.begin(); it != seqs_.end();)
    it = it->second->done && !it->second->is_prefix ? seqs_.erase(it) : std::next(it);
  reap_.clear();
  run_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace rwkvpp
