#include "worker/step_loop.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/env_options.h"
#include "common/memory_use.h"
#include "common/trace.h"
#include "net/test_and_clear.h"

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

namespace {

// Greedy without penalties: sample_token then returns the plain argmax of the logits.
bool plain_greedy(const SamplingParams& p) {
  return p.temperature == 0.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f &&
         p.repetition_penalty == 1.0f;
}

// True when no segment wants logits and every sampled one is plain greedy.
bool device_greedy(const StepMsg& s, StatePool& pool) {
  for (size_t i = 0; i < s.segs.size(); ++i) {
    if (s.want[i] & (kWantLogitsAll | kWantLogitsLast)) return false;
    if ((s.want[i] & kWantSample) && !plain_greedy(pool.sampling(s.segs[i].slot))) return false;
  }
  return true;
}

// The result of a step whose rows (one per sampled segment) are all plain greedy: the device
// reduced each row of logits to its argmax and logprob (Stage::greedy_async) and only those
// came back, instead of [rows, vocab] fp32. Equal to sample_token's results on the downloaded
// logits (tests/kernels/test_cuda_sampling.cpp); the penalty state is updated as sample_token
// does.
ResultMsg greedy_result(const StepMsg& s, const int32_t* ids, const float* logprobs, StatePool& pool) {
  ResultMsg res;
  res.step = s.step;
  size_t at = 0;
  for (size_t i = 0; i < s.segs.size(); ++i) {
    SegmentResult r;
    if (s.want[i] & kWantSample) {
      r.token = ids[at];
      r.logprob = logprobs[at];
      ++at;
      if (r.token < 0) fail("sampling: every logit is NaN or -inf");
      // sample_token's penalty update (kernels/sampling.h): decay every count, count the id.
      const SamplingParams& p = pool.sampling(s.segs[i].slot);
      PenaltyState& st = pool.penalty(s.segs[i].slot);
      for (auto& [id, c] : st.counts) c *= p.penalty_decay;
      st.counts[r.token] += 1.0f;
    }
    res.segs.push_back(std::move(r));
  }
  return res;
}

// The last stage's logit rows of a step: every token of a segment that wants all its logits, the
// last token of one that is sampled or wants its last logits.
std::vector<int32_t> logit_rows(const StepMsg& s) {
  std::vector<int32_t> rows;
  for (size_t i = 0; i < s.segs.size(); ++i) {
    const Segment& g = s.segs[i];
    if (s.want[i] & kWantLogitsAll) {
      for (int32_t r = 0; r < g.len; ++r) rows.push_back(g.start + r);
    } else if (s.want[i] & (kWantSample | kWantLogitsLast)) {
      rows.push_back(g.start + g.len - 1);
    }
  }
  return rows;
}

}  // namespace

StepLoop::StepLoop(Transport& t, Stage& stage, const AssignMsg& a)
    : t_(t), stage_(stage), a_(a), tag_step_(epoch_tag(kTagStep, a.epoch)),
      tag_result_(epoch_tag(kTagResult, a.epoch)), tag_share_(epoch_tag(kTagShare, a.epoch)),
      tag_snapshot_(epoch_tag(kTagSnapshot, a.epoch)) {
  const size_t cap = step_capacity(stage.config(), a.max_tokens, a.max_slots);
  for (auto& b : rbufs_) b = HostBuffer(&stage.backend(), cap);
  rreq_ = t_.post_recv(a_.prev_rank, tag_step_, rbufs_[0].data(), cap);
  last_heartbeat_ = idle_since_ = busy_until_ = Clock::now();
  stats_.stage = a.stage;
  stats_.first = a.first;
  stats_.last = a.last;
  stats_.backend = stage.backend().name();
  const EnvOptions::Stage& env = env_options().stage;
  side_ = env.side_copies != SideCopies::Off;
  side_min_bytes_ = env.side_copies == SideCopies::All ? 0 : kSideCopyMinBytes;
  timing_ = device_times_ = env.device_times;
  tracing_ = trace::on();
  if (tracing_) {
    // The device's marks give its spans (CUDA events, read once they have passed). A device
    // without marks is synchronous: its work is the host's spans.
    Backend& be = stage.backend();
    const uint64_t probe = be.timer_mark();
    sync_device_ = probe == 0;
    be.timer_release(probe);
    if (!sync_device_) {
      timing_ = true;
      trace_every_ = env.trace_device_every;
      be.fence_wait(be.fence());  // once, at start: the anchor is recorded on an idle device
      anchor_ns_ = trace::now_ns();
      anchor_mark_ = be.timer_mark();
    }
    idle_ns_ = trace::now_ns();
  }
  // Shared slots: offered to the previous stage; the next stage's offer is awaited (poll_share).
  share_ = env.share && !stage.backend().share_kind().empty();
  if (!a.head) {
    share_buf_.resize(size_t(64) << 10);
    share_req_ = t_.post_recv(a_.next_rank, tag_share_, share_buf_.data(), share_buf_.size());
  }
  if (!a.embed) {  // an offer, or one of no slots: the previous stage waits for either
    ShareMsg offer;
    offer.kind = ShareKind::Offer;
    if (share_) {
      try {
        rx_ = std::make_unique<SharedRx>(stage.backend(), size_t(stage.hidden_floats(a.max_tokens)) * 4);
        offer = rx_->offer();
      } catch (const Error& e) {
        fmt::print(stderr, "rank {} (stage {}): no shared slots for hidden vectors, they go through host memory: {}\n",
                   t_.rank(), a.stage, e.what());
        rx_.reset();
      }
    }
    send(a_.prev_rank, tag_share_, encode_share(offer));
  }
}

StepLoop::~StepLoop() {
  stage_.backend().timer_release(anchor_mark_);
  if (rreq_) t_.cancel(rreq_);
  if (share_req_) t_.cancel(share_req_);
}

bool StepLoop::poll_share() {
  Completion c;
  if (!share_req_ || !test_req(share_req_, &c)) return false;
  const std::string what = fmt::format("Share message from rank {} at stage {}", a_.next_rank, a_.stage);
  const ShareMsg m = decode_share(decode_message({share_buf_.data(), c.bytes}, share_buf_.size()), what);
  share_req_ = t_.post_recv(a_.next_rank, tag_share_, share_buf_.data(), share_buf_.size());
  if (m.kind == ShareKind::Credit) {
    if (!tx_) fail("{}: a credit for slot {}, but no slots are shared", what, m.slot);
    tx_->credit(m.slot, what);
    return true;
  }
  if (m.kind != ShareKind::Offer || next_offered_) fail("{}: unexpected share message", what);
  next_offered_ = true;
  if (m.buffers.empty()) return true;  // no slots offered
  ShareMsg answer;
  answer.kind = ShareKind::Accept;
  if (!share_) {
    answer.why = "sharing is off on this rank (RWKVPP_SHARE=0, or its backend cannot share)";
  } else if (m.host != this_host()) {
    answer.why = "another host";
  } else {
    try {
      tx_ = std::make_unique<SharedTx>(stage_.backend(), m, size_t(stage_.hidden_floats(a_.max_tokens)) * 4);
      answer = tx_->accept();
    } catch (const Error& e) {
      tx_.reset();
      answer.why = e.what();
      fmt::print(stderr, "rank {} (stage {}): cannot use the next stage's shared slots, hidden vectors go through host memory: {}\n",
                 t_.rank(), a_.stage, answer.why);
    }
  }
  send(a_.next_rank, tag_step_, encode_share(answer));  // ahead of every Step that uses a slot
  return true;
}

void StepLoop::on_accept(const Message& msg) {
  const std::string what = fmt::format("Share message from rank {} at stage {}", a_.prev_rank, a_.stage);
  const ShareMsg m = decode_share(msg, what);
  if (m.kind != ShareKind::Accept || !rx_ || rx_->accepted()) fail("{}: unexpected share message", what);
  if (m.ok) rx_->accept(m);
  else rx_.reset();  // declined: Steps carry their hidden vectors
}

bool StepLoop::wait_share(bool credit) {
  const auto w0 = Clock::now();
  while (credit ? !tx_->has_credit() : !next_offered_) {
    if (wait_hook_ && wait_hook_()) {  // the owner must act (a lost rank, a Recover): give up
      interrupted_ = true;
      return false;
    }
    if (poll_share()) continue;
    reap_sends();
    flush_ready();
    heartbeat();  // the coordinator hears from this rank while it waits
    t_.wait_some(std::chrono::milliseconds(1));
  }
  stats_.ring_wait_s += std::chrono::duration<double>(Clock::now() - w0).count();
  return true;
}

StepLoop::Outgoing StepLoop::outgoing(int peer, int tag, std::vector<uint8_t> msg) const {
  Outgoing o;
  o.peer = peer;
  o.tag = tag;
  o.bytes = msg.size();
  o.vec = std::move(msg);
  o.started = step_started_;
  return o;
}

void StepLoop::send(int peer, int tag, std::vector<uint8_t> msg, uint64_t step) {
  ready_.push_back(outgoing(peer, tag, std::move(msg)));
  ready_.back().step = step;
  flush_ready();
}

void StepLoop::send_now(int peer, int tag, std::vector<uint8_t> msg) {
  Outgoing o = outgoing(peer, tag, std::move(msg));
  stats_.bytes_sent += o.bytes;
  o.req = t_.post_send(o.peer, o.tag, o.vec.data(), o.bytes);
  sends_.push_back(std::move(o));  // the vector's buffer moves with it
}

int StepLoop::take_buffer(size_t bytes) {
  int b;
  if (!free_bufs_.empty()) {
    b = free_bufs_.back();
    free_bufs_.pop_back();
  } else {
    b = int(bufs_.size());
    bufs_.emplace_back();
  }
  if (bufs_[size_t(b)].size() < bytes) bufs_[size_t(b)] = HostBuffer(&stage_.backend(), bytes);
  return b;
}

void StepLoop::count_busy(Clock::time_point from, Clock::time_point to) {
  from = std::max(from, busy_until_);
  if (to > from) stats_.compute_s += std::chrono::duration<double>(to - from).count();
  busy_until_ = std::max(busy_until_, to);
}

// Device time of a step whose marks have passed, and the device's idle time before it: from
// the end of the previous step's ops to this step's first op (the host had not queued it
// yet), and from there to its start (waiting for the upload).
void StepLoop::count_device(const uint64_t (&m)[5], bool side_download, bool decode, uint64_t step) {
  Backend& be = stage_.backend();
  if (tracing_ && step != kUntraced) trace_device_spans(m, side_download, step);
  if (device_times_) {  // every step marked (with --trace alone, only some are)
    stats_.device_s += be.seconds_between(m[0], m[3]);
    const double layers = be.seconds_between(m[1], m[2]);
    stats_.layers_s += layers;
    if (decode) stats_.decode_layers_s += layers;
    stats_.out_s += be.seconds_between(m[2], m[3]);
    if (prev_end_) stats_.idle_host_s += be.seconds_between(prev_end_, m[4]);
    stats_.idle_upload_s += be.seconds_between(m[4], m[0]);
  }
  be.timer_release(prev_end_);
  prev_end_ = m[side_download ? 2 : 3];  // a side download ends on its own queue
  for (uint64_t x : m)
    if (x != prev_end_ && x != anchor_mark_) be.timer_release(x);
}

void StepLoop::trace_device_spans(const uint64_t (&m)[5], bool side_download, uint64_t step) {
  Backend& be = stage_.backend();
  auto at = [&](uint64_t mark) { return anchor_ns_ + uint64_t(std::max(0.0, be.seconds_between(anchor_mark_, mark)) * 1e9); };
  const uint64_t pre = at(m[4]), t0 = at(m[0]), t1 = at(m[1]), t2 = at(m[2]), t3 = at(m[3]);
  trace::span(trace::Track::Device, "wait for input", step, pre, t0);
  // A side download runs on its own queue: the step's ops end with its layers.
  trace::span(trace::Track::Device, "step", step, t0, side_download ? t2 : t3);
  trace::span(trace::Track::Device, "input", step, t0, t1);
  trace::span(trace::Track::Device, "layers", step, t1, t2);
  if (side_download)
    trace::async_span(trace::Track::Hops, "download (side queue)", step, t2, t3);
  else
    trace::span(trace::Track::Device, a_.head ? "head + sampling" : "output copy", step, t2, t3);
  // Elapsed times between events are floats in ms: move the anchor on every second so that
  // they stay exact to the microsecond.
  if (t0 - anchor_ns_ > 1000000000u && m[0] != prev_end_) {
    be.timer_release(anchor_mark_);
    anchor_mark_ = m[0];
    anchor_ns_ = t0;
  }
}

void StepLoop::trace_host_spans(uint64_t end_ns) {
  const uint64_t s = traced_step_;
  trace::span(trace::Track::Host, "wait for step", s, idle_ns_, arrived_ns_);
  trace::span(trace::Track::Host, "step", s, arrived_ns_, end_ns);
  trace::span(trace::Track::Host, "slot ops + input", s, arrived_ns_, input_ns_);
  trace::span(trace::Track::Host, "layers", s, input_ns_, layers_ns_);
  const char* out = a_.head ? "head + sampling" : "send";
  trace::span(trace::Track::Host, out, s, layers_ns_, end_ns);
  if (sync_device_) {  // the host did the device's work
    trace::span(trace::Track::Device, "layers", s, input_ns_, layers_ns_);
    if (a_.head) trace::span(trace::Track::Device, out, s, layers_ns_, end_ns);
  }
}

void StepLoop::flush_ready() {
  while (!timed_.empty() && stage_.backend().fence_done(timed_.front().fence)) {
    count_busy(timed_.front().started, Clock::now());
    if (timed_.front().marks[3]) count_device(timed_.front().marks, false, timed_.front().decode, timed_.front().step);
    timed_.pop_front();
  }
  while (!ready_.empty() && ready_to_send(ready_.front())) {
    Outgoing o = std::move(ready_.front());
    ready_.pop_front();
    if (o.fence || o.mark) count_busy(o.started, Clock::now());  // the device finished its step now
    if (o.marks[3]) count_device(o.marks, o.mark != 0, o.decode, o.step);
    if (o.mark) stage_.backend().timer_release(o.mark);
    if (o.make) {  // a Result made from what the device wrote into the buffer
      o.vec = o.make(bufs_[size_t(o.buf)].data());
      o.bytes = o.vec.size();
      free_bufs_.push_back(o.buf);
      o.buf = -1;
    }
    const void* p = o.buf >= 0 ? static_cast<const void*>(bufs_[size_t(o.buf)].data()) : o.vec.data();
    stats_.bytes_sent += o.bytes;
    o.req = t_.post_send(o.peer, o.tag, p, o.bytes);
    if (tracing_) o.posted_ns = trace::now_ns();
    sends_.push_back(std::move(o));
  }
}

bool StepLoop::ready_to_send(const Outgoing& o) {
  Backend& be = stage_.backend();
  return (o.fence == 0 || be.fence_done(o.fence)) && (o.mark == 0 || be.mark_done(o.mark));
}

void StepLoop::reap_sends() {
  while (!sends_.empty() && test_req(sends_.front().req)) {
    if (tracing_ && sends_.front().step != kUntraced)
      trace::async_span(trace::Track::Hops, a_.head ? "Result to the coordinator" : "Step to the next stage",
                        sends_.front().step, sends_.front().posted_ns, trace::now_ns());
    if (sends_.front().buf >= 0) free_bufs_.push_back(sends_.front().buf);
    sends_.pop_front();
  }
}

void StepLoop::heartbeat() {
  const auto now = Clock::now();
  if (a_.coord_rank != t_.rank() && now - last_heartbeat_ > std::chrono::milliseconds(1000)) {
    send(a_.coord_rank, kTagHeartbeat, encode_heartbeat(++hb_seq_, stats()));
    last_heartbeat_ = now;
  }
}

bool StepLoop::poll() {
  if (interrupted_) return false;
  reap_sends();
  const bool shared = poll_share();
  flush_ready();
  heartbeat();
  Completion c;
  if (!test_req(rreq_, &c)) return shared || !ready_.empty();
  // Keep the received bytes, post the next receive into the next buffer of the ring (once the
  // device has read it), then compute: the next message can arrive meanwhile.
  const int cur = rcur_;
  rcur_ = (rcur_ + 1) % kRecvBuffers;
  Backend& be = stage_.backend();
  const auto w0 = Clock::now();
  be.fence_wait(rfence_[rcur_]);
  if (rmark_[rcur_]) {
    be.mark_wait(rmark_[rcur_]);
    be.timer_release(std::exchange(rmark_[rcur_], 0));
  }
  stats_.ring_wait_s += std::chrono::duration<double>(Clock::now() - w0).count();
  rreq_ = t_.post_recv(a_.prev_rank, tag_step_, rbufs_[rcur_].data(), rbufs_[rcur_].size());
  if (tracing_) arrived_ns_ = trace::now_ns();
  auto t0 = step_started_ = Clock::now();
  stats_.wait_s += std::chrono::duration<double>(t0 - idle_since_).count();
  stats_.bytes_received += c.bytes;
  handle({rbufs_[cur].data(), c.bytes}, &rfence_[cur], &rmark_[cur]);
  idle_since_ = Clock::now();
  if (tracing_ && traced_step_ != kUntraced) {
    const uint64_t end = trace::now_ns();
    trace_host_spans(end);  // its wait: from idle_ns_, the previous step's end
    idle_ns_ = end;
  }
  stats_.handle_s += std::chrono::duration<double>(idle_since_ - t0).count();
  // Busy: the host's time in handle(), and a step handed to the device until its fence passes
  // (flush_ready); count_busy() merges the overlapping intervals.
  count_busy(t0, idle_since_);
  flush_ready();
  return true;
}

// A Step's way through this stage, in stream order: its slot ops, then the way in (the
// embedding of its ids, the hidden vectors of its message or of a shared slot), the layers and
// the way out (a message to the next stage, the next stage's shared slot, or a Result to rank
// 0). Each piece records its own device marks and fences.
void StepLoop::handle(std::span<const uint8_t> bytes, uint64_t* upload_fence, uint64_t* upload_mark) {
  StepWork w;
  w.what = fmt::format("Step from rank {} at stage {}", a_.prev_rank, a_.stage);
  Message msg = decode_message(bytes, rbufs_[0].size());
  traced_step_ = kUntraced;
  if (msg.header.msg_type() == MsgType::Share) return on_accept(msg);
  if (msg.header.msg_type() != MsgType::Step) fail("{}: unexpected message type {}", w.what, msg_type_name(msg.header.type));
  w.s = decode_step(msg, w.what, &w.payload);
  w.upload_fence = upload_fence;
  w.upload_mark = upload_mark;
  traced_step_ = w.s.step;
  input_ns_ = layers_ns_ = arrived_ns_;

  apply_slot_ops(w.s, w.what);
  w.n = w.s.n_tokens();
  w.decode = w.n > 0 && std::all_of(w.s.segs.begin(), w.s.segs.end(), [](const Segment& g) { return g.len == 1; });
  stats_.steps += 1;
  stats_.tokens += uint64_t(w.n);
  if (w.decode) stats_.decode_steps += 1;
  if (w.n == 0) {
    if (!a_.head) send(a_.next_rank, tag_step_, encode_step(w.s, nullptr, 0), w.s.step);
    else send(a_.coord_rank, tag_result_, encode_result(ResultMsg{w.s.step, {}}), w.s.step);
    return;
  }
  if (!begin_step(w)) return;
  take_input(w);
  run_layers(w);
  if (w.shared_out) return output_shared(w);
  if (!a_.head) return output_message(w);
  output_result(w);
}

void StepLoop::apply_slot_ops(const StepMsg& s, const std::string& what) {
  for (const SlotOp& op : s.ops) {
    if (op.slot < 0 || op.slot >= a_.max_slots) fail("{}: slot {} out of range", what, op.slot);
    switch (op.kind) {
      case SlotOpKind::Reset: stage_.state().reset(op.slot); break;
      case SlotOpKind::Clone:
        if (op.src < 0 || op.src >= a_.max_slots) fail("{}: clone source slot {} out of range", what, op.src);
        stage_.state().clone(op.src, op.slot);
        break;
      case SlotOpKind::SetSampling: stage_.state().sampling(op.slot) = op.sampling; break;
      case SlotOpKind::Snapshot: send_snapshot(op); break;
    }
  }
}

uint64_t StepLoop::step_mark() { return step_timed_ ? stage_.backend().timer_mark() : uint64_t(0); }

// Chooses the ways in and out and the hidden buffer. Large payloads go by side copies, so that
// the upload overlaps the previous step's layers and the download the next one's; such steps
// alternate between two hidden buffers, each used once the device is done with it there
// (hidden_free_: the step before last's download, or its head). Small ones (a few sequences) go
// in order on the one queue, which adds fewer calls to a token's latency, in buffer 0 (the
// queue orders every use of it; one recording per decode shape).
bool StepLoop::begin_step(StepWork& w) {
  w.floats = size_t(stage_.hidden_floats(w.n));
  w.bytes = w.floats * 4;
  // The next stage's offer decides the way out.
  if (!a_.head && !next_offered_ && !wait_share(false)) return false;
  // Hidden vectors in and out through shared slots (worker/shared_ring.h) are copied in order.
  w.shared_in = w.s.shared_slot >= 0;
  w.shared_out = !a_.head && tx_;
  w.side = side_ && w.bytes >= side_min_bytes_ && !w.shared_in && !w.shared_out;
  w.b = w.side ? hcur_ : 0;
  if (w.side) hcur_ ^= 1;
  w.h = stage_.hidden(w.n, w.b);
  step_timed_ = timing_ && (device_times_ || trace_count_++ % trace_every_ == 0);
  w.marks[4] = step_mark();
  w.free_at = hidden_free_[w.b];
  return true;
}

// The way in: each waits for the device to be done with the hidden buffer (free_at), marks the
// step's start (marks[0]) and fills the buffer.
void StepLoop::take_input(StepWork& w) {
  Backend& be = stage_.backend();
  if (a_.embed) {
    be.wait_mark(w.free_at);  // ops in order after a side download of the buffer
    w.marks[0] = step_mark();
    stage_.embed(w.s.tokens.data(), w.n, w.h);
  } else if (w.shared_in) {
    input_shared(w);
  } else {
    input_message(w);
  }
  // The waits took the mark as it was: a mark of this loop's own can go now.
  if (free_owned_[w.b]) be.timer_release(w.free_at);
  hidden_free_[w.b] = 0;
  free_owned_[w.b] = false;
  main_used_[w.b] = false;  // see own_free_mark()
  if (tracing_) input_ns_ = trace::now_ns();
}

// From the slot of our ring that the previous stage wrote; the slot goes back with a credit.
void StepLoop::input_shared(StepWork& w) {
  Backend& be = stage_.backend();
  if (!w.payload.empty())
    fail("{}: hidden vectors both in the message and in shared slot {}", w.what, w.s.shared_slot);
  if (!rx_) fail("{}: hidden vectors in shared slot {}, but no slots are shared", w.what, w.s.shared_slot);
  be.wait_mark(w.free_at);
  w.marks[0] = step_mark();
  // Inside the layers' recording where the device sequences the ring (not when timing: the
  // layers' marks would take in the wait for the previous stage).
  std::function<void()> op = rx_->take_op(w.s.shared_slot, w.h.x, w.bytes, w.what);
  if (rx_->replayable(w.bytes) && !device_times_)
    w.hooks.before = std::move(op);
  else
    op();
  stats_.bytes_shared += w.bytes;
  ShareMsg credit;
  credit.kind = ShareKind::Credit;
  credit.slot = uint32_t(w.s.shared_slot);
  send_now(a_.prev_rank, tag_share_, encode_share(credit));  // not behind Results waiting for the device
}

// From the message's payload in the receive buffer, which is posted again once the upload's
// fence (in order) or mark (side copy) has passed.
void StepLoop::input_message(StepWork& w) {
  Backend& be = stage_.backend();
  if (w.payload.size() != w.bytes)
    fail("{}: hidden payload has {} bytes, expected {} for {} tokens", w.what, w.payload.size(), w.bytes, w.n);
  if (w.side) {
    // After the device is done with the buffer; where an in-order step used it last, after
    // everything queued so far.
    const uint64_t now = main_used_[w.b] ? be.timer_mark() : 0;
    *w.upload_mark = be.upload_side(w.h.x, w.payload.data(), w.bytes, now ? now : w.free_at);
    be.timer_release(now);
    be.wait_mark(*w.upload_mark);
    w.marks[0] = step_mark();
  } else {
    be.wait_mark(w.free_at);
    w.marks[0] = step_mark();
    be.upload_async(w.h.x, w.payload.data(), w.bytes);
    *w.upload_fence = be.fence();
  }
}

// The layers, between marks[1] and marks[2].
void StepLoop::run_layers(StepWork& w) {
  w.marks[1] = step_mark();
  // Out through a device-sequenced ring: inside the recording too, when a slot is free now
  // (otherwise after the layers, once a credit has come: the layers need not wait for it).
  if (w.shared_out && tx_->replayable(w.bytes) && !device_times_ && tx_->has_credit()) {
    auto [slot, op] = tx_->put_op(w.h.x, w.bytes);
    w.out_slot = slot;
    w.hooks.after = std::move(op);
  }
  stage_.forward(w.s.segs, w.h, &w.hooks);
  w.marks[2] = step_mark();
  if (tracing_) layers_ns_ = trace::now_ns();
}

// The step's last use of the hidden buffer is on the ops' queue: a large step marks it there (a
// later side upload into the buffer waits for that mark); a small one skips the call, and a
// side upload after it marks the queue as it is then (main_used_).
void StepLoop::own_free_mark(const StepWork& w) {
  if (w.side) {
    hidden_free_[w.b] = stage_.backend().timer_mark();
    free_owned_[w.b] = true;
  } else {
    main_used_[w.b] = true;
  }
}

// Into the next stage's slot on the device; the message (the Step's head) leaves now, its
// device waits. The step's times are counted once a fence after it has passed (timed_).
void StepLoop::output_shared(StepWork& w) {
  if (w.out_slot < 0) {
    if (!wait_share(true)) return;  // interrupted: the loop is abandoned next
    w.out_slot = tx_->put(w.h.x, w.bytes);
  }
  w.s.shared_slot = w.out_slot;
  own_free_mark(w);
  w.marks[3] = step_mark();
  Timed t;
  std::copy(w.marks, w.marks + 5, t.marks);
  t.decode = w.decode;
  t.fence = stage_.backend().fence();
  t.started = step_started_;
  t.step = w.s.step;
  timed_.push_back(t);
  send(a_.next_rank, tag_step_, encode_step_head(w.s, 0), w.s.step);
}

// The message head, then the hidden vectors downloaded behind it; sent by flush_ready() once the
// device has got there, while this rank already takes the next step.
void StepLoop::output_message(StepWork& w) {
  Backend& be = stage_.backend();
  std::vector<uint8_t> head = encode_step_head(w.s, w.floats);
  Outgoing o;
  o.peer = a_.next_rank;
  o.tag = tag_step_;
  o.bytes = head.size() + w.bytes;
  o.buf = take_buffer(o.bytes);
  o.started = step_started_;
  uint8_t* p = bufs_[size_t(o.buf)].data();
  std::memcpy(p, head.data(), head.size());
  if (w.side) {
    // The message's mark, released by flush_ready() once it has passed.
    o.mark = hidden_free_[w.b] = be.download_side(p + head.size(), w.h.x, w.bytes);
    if (step_timed_) w.marks[3] = o.mark;
  } else {
    be.download_async(p + head.size(), w.h.x, w.bytes);
    own_free_mark(w);
    w.marks[3] = step_mark();
    o.fence = be.fence();
  }
  std::copy(w.marks, w.marks + 5, o.marks);
  o.decode = w.decode;
  o.step = w.s.step;
  ready_.push_back(std::move(o));
}

// Last stage: logits for the rows that need them, then sampling; on the device when every row
// is plain greedy, else on the host.
void StepLoop::output_result(StepWork& w) {
  Backend& be = stage_.backend();
  const std::vector<int32_t> rows = logit_rows(w.s);
  if (!rows.empty() && device_greedy(w.s, stage_.state())) {
    // Ids and logprobs land in a message buffer by DMA; the Result is made and sent by
    // flush_ready() once the device has got there, while this rank takes the next step. (The
    // step's slots cannot change meanwhile: none is reused before its Result reaches rank 0.)
    const int64_t m = int64_t(rows.size());
    Outgoing o;
    o.peer = a_.coord_rank;
    o.tag = tag_result_;
    o.buf = take_buffer(size_t(m) * 8);
    o.started = step_started_;
    stage_.greedy_async(w.h, rows.data(), m, bufs_[size_t(o.buf)].data());
    own_free_mark(w);
    w.marks[3] = step_mark();
    std::copy(w.marks, w.marks + 5, o.marks);
    o.decode = w.decode;
    o.fence = be.fence();
    o.step = w.s.step;
    o.make = [this, s = std::move(w.s), m](const uint8_t* p) {
      auto* ids = reinterpret_cast<const int32_t*>(p);
      return encode_result(greedy_result(s, ids, reinterpret_cast<const float*>(ids + m), stage_.state()));
    };
    ready_.push_back(std::move(o));
    return;
  }
  // Marks of a step that sends no fenced message are not read.
  for (uint64_t& x : w.marks) be.timer_release(std::exchange(x, 0));
  send(a_.coord_rank, tag_result_, encode_result(host_result(w.s, w.h, rows)), w.s.step);
}

// The last stage's Result when some row wants logits or is not plain greedy: the rows' logits
// come to the host, and the sampled rows are sampled there together (host_sampler.h).
ResultMsg StepLoop::host_result(const StepMsg& s, const Hidden& h, const std::vector<int32_t>& rows) {
  const int64_t V = stage_.config().vocab_size;
  Backend& be = stage_.backend();
  // Page-locked (Backend::alloc_host), so that the download runs at DMA speed: at a batch of
  // 256 and a vocab of 50-65k it is 50-64 MiB a step.
  const size_t logit_bytes = rows.size() * size_t(V) * 4;
  if (logits_.size() < logit_bytes) logits_ = HostBuffer(&be, logit_bytes);
  const float* logits = reinterpret_cast<const float*>(logits_.data());
  if (!rows.empty()) stage_.logits(h, rows.data(), int64_t(rows.size()), reinterpret_cast<float*>(logits_.data()));
  ResultMsg res;
  res.step = s.step;
  res.segs.resize(s.segs.size());
  std::vector<HostSampler::Row> draws;  // the sampled segments' rows, sampled together
  std::vector<size_t> drawn;            // their segments
  size_t at = 0;
  for (size_t i = 0; i < s.segs.size(); ++i) {
    const Segment& g = s.segs[i];
    SegmentResult& r = res.segs[i];
    size_t nrows = (s.want[i] & kWantLogitsAll) ? size_t(g.len) : (s.want[i] & (kWantSample | kWantLogitsLast)) ? 1 : 0;
    const float* last = nrows ? logits + (at + nrows - 1) * size_t(V) : nullptr;
    if (s.want[i] & (kWantLogitsAll | kWantLogitsLast)) {
      size_t first = (s.want[i] & kWantLogitsAll) ? at : at + nrows - 1;
      r.logits.assign(logits + first * size_t(V), logits + (at + nrows) * size_t(V));
    }
    if (s.want[i] & kWantSample) {
      draws.push_back({last, &stage_.state().sampling(g.slot), &stage_.state().penalty(g.slot), s.position[i]});
      drawn.push_back(i);
    }
    at += nrows;
  }
  sampler_.sample(draws, V);
  for (size_t k = 0; k < draws.size(); ++k) {
    res.segs[drawn[k]].token = draws[k].token;
    res.segs[drawn[k]].logprob = draws[k].logprob;
  }
  return res;
}

bool StepLoop::test_req(RequestId& id, Completion* c) { return test_and_clear(t_, id, c); }

void StepLoop::send_snapshot(const SlotOp& op) {
  SnapshotMsg m;
  m.serial = op.src;
  m.stage = a_.stage;
  m.slot = op.slot;
  // The state after every earlier step of the slot (the device's queue orders the copy after
  // them); the last stage's penalty counts include every sample the coordinator has seen.
  m.state = stage_.state().read(op.slot);
  if (a_.head)
    for (const auto& [id, c] : stage_.state().penalty(op.slot).counts) m.penalty.push_back({id, c});
  send(a_.coord_rank, tag_snapshot_, encode_snapshot(m));
}

void StepLoop::restore(const std::vector<SlotRestore>& slots) {
  const int64_t floats = stage_.state().floats_per_slot();
  for (const SlotRestore& r : slots) {
    if (r.slot < 0 || r.slot >= a_.max_slots)
      fail("Restore at stage {}: slot {} out of range (0..{})", a_.stage, r.slot, a_.max_slots - 1);
    if (r.fresh) {
      stage_.state().reset(r.slot);
    } else {
      if (int64_t(r.state.size()) != floats)
        fail("Restore at stage {}: slot {} has {} state floats, the stage's layers {}-{} hold {}", a_.stage,
             r.slot, r.state.size(), a_.first, a_.last - 1, floats);
      stage_.state().write(r.slot, r.state);
    }
    stage_.state().sampling(r.slot) = r.sampling;
    stage_.state().penalty(r.slot).counts = {r.penalty.begin(), r.penalty.end()};
  }
}

void StepLoop::abandon() {
  for (RequestId* r : {&rreq_, &share_req_})
    if (*r) t_.cancel(std::exchange(*r, 0));
  for (Outgoing& o : sends_)
    if (o.req) t_.cancel(std::exchange(o.req, 0));
  // Messages not posted yet are dropped; the buffers of posted ones stay with this object, which
  // the caller keeps (a cancelled send may still read them).
  ready_.clear();
  timed_.clear();
}

void StepLoop::drain() {
  while (!ready_.empty() || !sends_.empty()) {
    flush_ready();
    reap_sends();
    if (!sends_.empty()) t_.wait_some(std::chrono::milliseconds(1));
  }
}

StatsMsg StepLoop::stats() const {
  StatsMsg s = stats_;
  s.rss_bytes = resident_bytes();
  return s;
}

}  // namespace rwkvpp
