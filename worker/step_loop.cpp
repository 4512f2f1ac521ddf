#include "worker/step_loop.h"

#include <algorithm>

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

namespace {

// Greedy without penalties: sample_token then returns the plain argmax of the logits.
bool plain_greedy(const SamplingParams& p) {
  return p.temperature == 0.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f &&
         p.repetition_penalty == 1.0f;
}

// True when no segment wants logits and every sampled one is plain greedy.
bool device_greedy(const StepMsg& s, const std::vector<SamplingParams>& sampling) {
  for (size_t i = 0; i < s.segs.size(); ++i) {
    if (s.want[i] & (kWantLogitsAll | kWantLogitsLast)) return false;
    if ((s.want[i] & kWantSample) && !plain_greedy(sampling[size_t(s.segs[i].slot)])) return false;
  }
  return true;
}

// The result of a step whose rows (one per sampled segment) are all plain greedy: the device
// reduces each row of logits to its argmax and logprob and only those come back (Stage::greedy)
// instead of [rows, vocab] fp32. Equal to sample_token's results on the downloaded logits
// (tests/kernels/test_cuda_sampling.cpp); the penalty state is updated as sample_token does.
ResultMsg greedy_result(const StepMsg& s, Stage& stage, const Hidden& h,
                        const std::vector<int32_t>& rows, const std::vector<SamplingParams>& sampling,
                        std::vector<PenaltyState>& penalty) {
  std::vector<int32_t> ids(rows.size());
  std::vector<float> logprobs(rows.size());
  stage.greedy(h, rows.data(), int64_t(rows.size()), ids.data(), logprobs.data());
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
      const SamplingParams& p = sampling[size_t(s.segs[i].slot)];
      PenaltyState& st = penalty[size_t(s.segs[i].slot)];
      for (auto& [id, c] : st.counts) c *= p.penalty_decay;
      st.counts[r.token] += 1.0f;
    }
    res.segs.push_back(std::move(r));
  }
  return res;
}

}  // namespace

size_t step_capacity(const ModelConfig& cfg, int max_tokens, int max_slots) {
  size_t per_token = size_t(cfg.carried() * cfg.n_embd) * 4 + 4 + sizeof(Segment) + 1 + 4;
  return kHeaderBytes + 4096 + size_t(max_tokens) * per_token + size_t(3 * max_slots + 8) * 64;
}

int max_logit_rows(const ModelConfig& cfg) {
  return int(std::max<int64_t>(1, (int64_t(64) << 20) / (cfg.vocab_size * 4)));
}

size_t result_capacity(const ModelConfig& cfg, int max_tokens, int rows) {
  return kHeaderBytes + 4096 + size_t(max_tokens) * 24 + size_t(rows) * size_t(cfg.vocab_size) * 4;
}

StepLoop::StepLoop(Transport& t, Stage& stage, const AssignMsg& a)
    : t_(t), stage_(stage), a_(a), sampling_(size_t(a.max_slots)), penalty_(size_t(a.max_slots)) {
  rbuf_.resize(step_capacity(stage.config(), a.max_tokens, a.max_slots));
  rspare_.resize(rbuf_.size());
  rreq_ = t_.post_recv(a_.prev_rank, kTagStep, rbuf_.data(), rbuf_.size());
  last_heartbeat_ = idle_since_ = Clock::now();
  stats_.stage = a.stage;
  stats_.first = a.first;
  stats_.last = a.last;
  stats_.backend = stage.backend().name();
}

StepLoop::~StepLoop() {
  if (rreq_) t_.cancel(rreq_);
}

void StepLoop::send(int peer, int tag, std::vector<uint8_t> msg) {
  stats_.bytes_sent += msg.size();
  sends_.emplace_back(0, std::move(msg));
  auto& m = sends_.back().second;
  sends_.back().first = t_.post_send(peer, tag, m.data(), m.size());
}

void StepLoop::reap_sends() {
  while (!sends_.empty() && t_.test(sends_.front().first)) sends_.pop_front();
}

bool StepLoop::poll() {
  reap_sends();
  auto now = Clock::now();
  if (a_.coord_rank != t_.rank() && now - last_heartbeat_ > std::chrono::milliseconds(1000)) {
    send(a_.coord_rank, kTagHeartbeat, encode_heartbeat(++hb_seq_));
    last_heartbeat_ = now;
  }
  Completion c;
  if (!t_.test(rreq_, &c)) return false;
  // Keep the received bytes, post the next receive into a fresh buffer, then compute: the next
  // message can arrive while this one is being processed.
  std::swap(rbuf_, rspare_);
  rreq_ = t_.post_recv(a_.prev_rank, kTagStep, rbuf_.data(), rbuf_.size());
  const std::vector<uint8_t>& cur = rspare_;
  auto t0 = Clock::now();
  stats_.wait_s += std::chrono::duration<double>(t0 - idle_since_).count();
  stats_.bytes_received += c.bytes;
  handle({cur.data(), c.bytes});
  idle_since_ = Clock::now();
  stats_.compute_s += std::chrono::duration<double>(idle_since_ - t0).count();
  return true;
}

void StepLoop::handle(std::span<const uint8_t> bytes) {
  const ModelConfig& cfg = stage_.config();
  std::string what = fmt::format("Step from rank {} at stage {}", a_.prev_rank, a_.stage);
  Message msg = decode_message(bytes, rbuf_.size());
  if (msg.header.msg_type() != MsgType::Step) fail("{}: unexpected message type {}", what, msg_type_name(msg.header.type));
  std::span<const uint8_t> hidden_bytes;
  StepMsg s = decode_step(msg, what, &hidden_bytes);

  for (const SlotOp& op : s.ops) {
    if (op.slot < 0 || op.slot >= a_.max_slots) fail("{}: slot {} out of range", what, op.slot);
    switch (op.kind) {
      case SlotOpKind::Reset:
        stage_.state().reset(op.slot);
        penalty_[size_t(op.slot)] = PenaltyState{};
        break;
      case SlotOpKind::Clone:
        if (op.src < 0 || op.src >= a_.max_slots) fail("{}: clone source slot {} out of range", what, op.src);
        stage_.state().clone(op.src, op.slot);
        penalty_[size_t(op.slot)] = penalty_[size_t(op.src)];
        sampling_[size_t(op.slot)] = sampling_[size_t(op.src)];
        break;
      case SlotOpKind::SetSampling: sampling_[size_t(op.slot)] = op.sampling; break;
    }
  }
  const int64_t n = s.n_tokens();
  stats_.steps += 1;
  stats_.tokens += uint64_t(n);
  if (n == 0) {
    if (!a_.head) send(a_.next_rank, kTagStep, encode_step(s, nullptr, 0));
    else send(a_.coord_rank, kTagResult, encode_result(ResultMsg{s.step, {}}));
    return;
  }
  Backend& be = stage_.backend();
  Hidden h = stage_.hidden(n);
  const size_t hf = size_t(stage_.hidden_floats(n));
  if (a_.embed) {
    stage_.embed(s.tokens.data(), n, h);
  } else {
    if (hidden_bytes.size() != hf * 4)
      fail("{}: hidden payload has {} bytes, expected {} for {} tokens", what, hidden_bytes.size(), hf * 4, n);
    be.upload(h.x, hidden_bytes.data(), hf * 4);
  }
  stage_.forward(s.segs, h);

  if (!a_.head) {
    const float* src = h.x;
    if (!be.host_memory()) {
      host_hidden_.resize(hf);
      be.download(host_hidden_.data(), h.x, hf * 4);
      src = host_hidden_.data();
    }
    send(a_.next_rank, kTagStep, encode_step(s, src, hf));
    return;
  }
  // Last stage: logits for the rows that need them, then sampling.
  std::vector<int32_t> rows;
  for (size_t i = 0; i < s.segs.size(); ++i) {
    const Segment& g = s.segs[i];
    if (s.want[i] & kWantLogitsAll) {
      for (int32_t r = 0; r < g.len; ++r) rows.push_back(g.start + r);
    } else if (s.want[i] & (kWantSample | kWantLogitsLast)) {
      rows.push_back(g.start + g.len - 1);
    }
  }
  const int64_t V = cfg.vocab_size;
  if (!rows.empty() && device_greedy(s, sampling_)) {
    send(a_.coord_rank, kTagResult, encode_result(greedy_result(s, stage_, h, rows, sampling_, penalty_)));
    return;
  }
  logits_.resize(rows.size() * size_t(V));
  if (!rows.empty()) stage_.logits(h, rows.data(), int64_t(rows.size()), logits_.data());
  ResultMsg res;
  res.step = s.step;
  size_t at = 0;
  for (size_t i = 0; i < s.segs.size(); ++i) {
    const Segment& g = s.segs[i];
    SegmentResult r;
    size_t nrows = (s.want[i] & kWantLogitsAll) ? size_t(g.len) : (s.want[i] & (kWantSample | kWantLogitsLast)) ? 1 : 0;
    const float* last = nrows ? logits_.data() + (at + nrows - 1) * size_t(V) : nullptr;
    if (s.want[i] & (kWantLogitsAll | kWantLogitsLast)) {
      size_t first = (s.want[i] & kWantLogitsAll) ? at : at + nrows - 1;
      r.logits.assign(logits_.begin() + int64_t(first * size_t(V)), logits_.begin() + int64_t((at + nrows) * size_t(V)));
    }
    if (s.want[i] & kWantSample)
      r.token = sample_token(last, V, sampling_[size_t(g.slot)], penalty_[size_t(g.slot)], s.position[i], &r.logprob);
    at += nrows;
    res.segs.push_back(std::move(r));
  }
  send(a_.coord_rank, kTagResult, encode_result(res));
}

void StepLoop::drain() {
  while (!sends_.empty()) {
    reap_sends();
    if (!sends_.empty()) t_.wait_some(std::chrono::milliseconds(1));
  }
}

StatsMsg StepLoop::stats() const { return stats_; }

}  // namespace rwkvpp
