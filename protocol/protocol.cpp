// Encoding and decoding of the step protocol's messages, and their capacities
// (protocol/protocol.h).
#include "protocol/protocol.h"

#include <algorithm>
#include <array>
#include <cstring>

namespace rwkvpp {

namespace {

MessageWriter ctrl(Ctrl kind, MsgType type = MsgType::Hello) {
  MessageWriter w(type, 0);
  w.put_u8(uint8_t(kind));
  return w;
}

ByteReader ctrl_reader(const Message& msg, Ctrl want, const std::string& what) {
  ByteReader r(msg.payload, what);
  uint8_t k = r.get_u8();
  if (k != uint8_t(want)) fail("{}: expected control message {}, got {}", what, int(want), int(k));
  return r;
}

void put_sampling(ByteWriter& w, const SamplingParams& p) {
  w.put_f32(p.temperature);
  w.put_i32(p.top_k);
  w.put_f32(p.top_p);
  w.put_f32(p.min_p);
  w.put_f32(p.presence_penalty);
  w.put_f32(p.frequency_penalty);
  w.put_f32(p.repetition_penalty);
  w.put_f32(p.penalty_decay);
  w.put_u64(p.seed);
}

SamplingParams get_sampling(ByteReader& r) {
  SamplingParams p;
  p.temperature = r.get_f32();
  p.top_k = r.get_i32();
  p.top_p = r.get_f32();
  p.min_p = r.get_f32();
  p.presence_penalty = r.get_f32();
  p.frequency_penalty = r.get_f32();
  p.repetition_penalty = r.get_f32();
  p.penalty_decay = r.get_f32();
  p.seed = r.get_u64();
  return p;
}

void put_assign_tail(ByteWriter& w, const AssignMsg& m) {
  for (int32_t v : {m.prev_rank, m.next_rank, m.coord_rank, m.max_slots, m.max_tokens}) w.put_i32(v);
  w.put_u8(uint8_t(m.dtype));
  w.put_i32(m.epoch);
}

void put_penalty(ByteWriter& w, const std::vector<std::pair<int32_t, float>>& p) {
  w.put_u32(uint32_t(p.size()));
  for (auto& [id, c] : p) {
    w.put_i32(id);
    w.put_f32(c);
  }
}

std::vector<std::pair<int32_t, float>> get_penalty(ByteReader& r, const std::string& what) {
  const uint32_t n = r.get_u32();
  if (n > r.remaining() / 8) fail("{}: {} penalty counts cannot fit the message", what, n);
  std::vector<std::pair<int32_t, float>> p(n);
  for (auto& [id, c] : p) {
    id = r.get_i32();
    c = r.get_f32();
  }
  return p;
}

// A Ready's fields (the Ready message, and the Recovered that answers a Recover).
void put_ready(ByteWriter& w, const ReadyMsg& m) {
  w.put_u64(m.weight_bytes);
  w.put_u64(m.state_bytes);
  w.put_u64(m.bytes_read);
  w.put_u64(m.files.size());
  for (auto& f : m.files) w.put_string(f);
  w.put_raw(&m.load_seconds, 8);
  w.put_raw(&m.copy_GBps, 8);
  w.put_raw(&m.read_GBps, 8);
  w.put_raw(&m.gemm_TFLOPs, 8);
  w.put_u64(m.peak_rss_bytes);
  w.put_string(m.numerics);
  w.put_u8(m.batch_invariant);
  w.put_string(m.backend);
}

ReadyMsg get_ready(ByteReader& r, const std::string& what) {
  ReadyMsg m;
  m.weight_bytes = r.get_u64();
  m.state_bytes = r.get_u64();
  m.bytes_read = r.get_u64();
  uint64_t n = r.get_u64();
  if (n > 4096) fail("{}: too many files ({})", what, n);
  for (uint64_t i = 0; i < n; ++i) m.files.push_back(r.get_string(4096));
  r.get_raw(&m.load_seconds, 8);
  r.get_raw(&m.copy_GBps, 8);
  r.get_raw(&m.read_GBps, 8);
  r.get_raw(&m.gemm_TFLOPs, 8);
  m.peak_rss_bytes = r.get_u64();
  m.numerics = r.get_string(256);
  m.batch_invariant = r.get_u8();
  m.backend = r.get_string(256);
  return m;
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

std::vector<uint8_t> encode_hello(const HelloMsg& m) {
  auto w = ctrl(Ctrl::Hello);
  w.put_u16(m.protocol);
  w.put_u64(m.fingerprint);
  w.put_u64(m.free_memory);
  w.put_string(m.backend);
  w.put_string(m.host);
  return w.finish();
}

std::vector<uint8_t> encode_assign(const AssignMsg& m) {
  auto w = ctrl(Ctrl::Assign);
  for (int32_t v : {m.stage, m.n_stages, m.first, m.last}) w.put_i32(v);
  w.put_u8(m.embed);
  w.put_u8(m.head);
  put_assign_tail(w, m);
  return w.finish();
}

std::vector<uint8_t> encode_ready(const ReadyMsg& m) {
  auto w = ctrl(Ctrl::Ready);
  put_ready(w, m);
  return w.finish();
}

// The seconds a Stats message carries, in wire order (one list for encoding and decoding).
template <typename M>
auto stats_seconds(M& m) {
  return std::array{&m.compute_s,     &m.wait_s,   &m.device_s,    &m.layers_s, &m.idle_host_s,
                    &m.idle_upload_s, &m.handle_s, &m.ring_wait_s, &m.out_s,    &m.decode_layers_s};
}

namespace {

void put_stats(MessageWriter& w, const StatsMsg& m) {
  w.put_u8(uint8_t(Ctrl::Stats));
  for (int32_t v : {m.stage, m.first, m.last}) w.put_i32(v);
  for (const double* d : stats_seconds(m)) w.put_raw(d, 8);
  for (uint64_t v :
       {m.bytes_sent, m.bytes_received, m.tokens, m.steps, m.bytes_shared, m.decode_steps, m.rss_bytes})
    w.put_u64(v);
  w.put_string(m.backend);
}

}  // namespace

std::vector<uint8_t> encode_stats(const StatsMsg& m) {
  MessageWriter w(MsgType::Hello, 0);
  put_stats(w, m);
  return w.finish();
}

std::vector<uint8_t> encode_shutdown() { return ctrl(Ctrl::Shutdown, MsgType::Shutdown).finish(); }

std::vector<uint8_t> encode_error(const std::string& what) {
  auto w = ctrl(Ctrl::Error, MsgType::Error);
  w.put_string(what);
  return w.finish();
}

std::vector<uint8_t> encode_heartbeat(uint64_t seq, const StatsMsg& stats) {
  MessageWriter w(MsgType::Heartbeat, seq);
  put_stats(w, stats);
  return w.finish();
}

std::vector<uint8_t> encode_step(const StepMsg& m, const float* hidden, size_t hidden_floats) {
  std::vector<uint8_t> v = encode_step_head(m, hidden_floats);
  const size_t at = v.size();
  v.resize(at + hidden_floats * 4);
  if (hidden_floats) std::memcpy(v.data() + at, hidden, hidden_floats * 4);
  return v;
}

std::vector<uint8_t> encode_step_head(const StepMsg& m, size_t hidden_floats) {
  MessageWriter w(MsgType::Step, m.step);
  w.put_u64(m.step);
  w.put_u32(uint32_t(m.ops.size()));
  for (auto& op : m.ops) {
    w.put_u8(uint8_t(op.kind));
    w.put_i32(op.slot);
    w.put_i32(op.src);
    if (op.kind == SlotOpKind::SetSampling) put_sampling(w, op.sampling);
  }
  w.put_span(m.segs);
  w.put_span(m.want);
  w.put_span(m.position);
  w.put_span(m.tokens);
  w.put_i32(m.shared_slot);
  w.put_u64(hidden_floats);
  std::vector<uint8_t> v = w.finish();
  // The header counts the hidden payload that the caller appends.
  encode_header(MsgType::Step, v.size() - kHeaderBytes + hidden_floats * 4, m.step, v);
  return v;
}

std::vector<uint8_t> encode_share(const ShareMsg& m) {
  MessageWriter w(MsgType::Share, 0);
  w.put_u8(uint8_t(m.kind));
  switch (m.kind) {
    case ShareKind::Offer:
      w.put_string(m.host);
      w.put_string(m.share_kind);
      w.put_u64(m.slot_bytes);
      break;
    case ShareKind::Accept:
      w.put_u8(m.ok);
      w.put_string(m.why);
      break;
    case ShareKind::Credit: w.put_u32(m.slot); break;
  }
  if (m.kind != ShareKind::Credit) {
    w.put_u32(uint32_t(m.buffers.size()));
    for (auto& b : m.buffers) w.put_span(b);
    w.put_u32(uint32_t(m.signals.size()));
    for (auto& b : m.signals) w.put_span(b);
  }
  return w.finish();
}

std::vector<uint8_t> encode_result(const ResultMsg& m) {
  MessageWriter w(MsgType::Result, m.step);
  w.put_u64(m.step);
  w.put_u32(uint32_t(m.segs.size()));
  for (auto& s : m.segs) {
    w.put_i32(s.token);
    w.put_f32(s.logprob);
    w.put_span(s.logits);
  }
  return w.finish();
}

Ctrl peek_ctrl(const Message& msg, const std::string& what) {
  if (msg.payload.empty()) fail("{}: empty control message", what);
  uint8_t k = msg.payload[0];
  if (k < 1 || k > uint8_t(Ctrl::Restore)) fail("{}: unknown control message {}", what, int(k));
  return Ctrl(k);
}

HelloMsg decode_hello(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Hello, what);
  HelloMsg m;
  m.protocol = r.get_u16();
  m.fingerprint = r.get_u64();
  m.free_memory = r.get_u64();
  m.backend = r.get_string(256);
  m.host = r.get_string(256);
  r.expect_end();
  return m;
}

AssignMsg decode_assign(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Assign, what);
  AssignMsg m;
  m.stage = r.get_i32();
  m.n_stages = r.get_i32();
  m.first = r.get_i32();
  m.last = r.get_i32();
  m.embed = r.get_u8();
  m.head = r.get_u8();
  m.prev_rank = r.get_i32();
  m.next_rank = r.get_i32();
  m.coord_rank = r.get_i32();
  m.max_slots = r.get_i32();
  m.max_tokens = r.get_i32();
  uint8_t d = r.get_u8();
  if (d > uint8_t(DType::I4)) fail("{}: bad dtype {}", what, int(d));
  m.dtype = DType(d);
  m.epoch = r.get_i32();
  if (m.epoch < 0 || m.epoch > kMaxEpoch) fail("{}: epoch {} is outside 0..{}", what, m.epoch, kMaxEpoch);
  r.expect_end();
  return m;
}

ReadyMsg decode_ready(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Ready, what);
  ReadyMsg m = get_ready(r, what);
  r.expect_end();
  return m;
}

StatsMsg decode_stats(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Stats, what);
  StatsMsg m;
  m.stage = r.get_i32();
  m.first = r.get_i32();
  m.last = r.get_i32();
  for (double* d : stats_seconds(m)) r.get_raw(d, 8);
  m.bytes_sent = r.get_u64();
  m.bytes_received = r.get_u64();
  m.tokens = r.get_u64();
  m.steps = r.get_u64();
  m.bytes_shared = r.get_u64();
  m.decode_steps = r.get_u64();
  m.rss_bytes = r.get_u64();
  m.backend = r.get_string(256);
  r.expect_end();
  return m;
}

StatsMsg decode_heartbeat(const Message& msg, const std::string& what) { return decode_stats(msg, what); }

std::string decode_error(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Error, what);
  std::string s = r.get_string();
  r.expect_end();
  return s;
}

StepMsg decode_step(const Message& msg, const std::string& what, std::span<const uint8_t>* hidden) {
  ByteReader r(msg.payload, what);
  StepMsg m;
  m.step = r.get_u64();
  uint32_t nops = r.get_u32();
  if (nops > r.remaining()) fail("{}: {} slot operations cannot fit the message", what, nops);
  for (uint32_t i = 0; i < nops; ++i) {
    SlotOp op;
    uint8_t k = r.get_u8();
    if (k < 1 || k > 4) fail("{}: unknown slot operation {}", what, int(k));
    op.kind = SlotOpKind(k);
    op.slot = r.get_i32();
    op.src = r.get_i32();
    if (op.kind == SlotOpKind::SetSampling) op.sampling = get_sampling(r);
    m.ops.push_back(op);
  }
  m.segs = r.get_vector<Segment>();
  m.want = r.get_vector<uint8_t>();
  m.position = r.get_vector<uint32_t>();
  m.tokens = r.get_vector<int32_t>();
  m.shared_slot = r.get_i32();
  if (m.shared_slot < -1) fail("{}: shared slot {} is not a slot number", what, m.shared_slot);
  uint64_t hf = r.get_u64();
  if (hf > r.remaining() / 4) fail("{}: hidden payload of {} floats exceeds the message", what, hf);
  *hidden = r.get_bytes(size_t(hf) * 4, "hidden");
  r.expect_end();
  // Structural checks: segments consecutive and covering the tokens.
  if (m.want.size() != m.segs.size() || m.position.size() != m.segs.size())
    fail("{}: {} segments but {} want flags and {} positions", what, m.segs.size(), m.want.size(), m.position.size());
  int64_t at = 0;
  for (auto& s : m.segs) {
    if (s.start != at || s.len <= 0) fail("{}: segments are not consecutive (segment at {} of length {})", what, s.start, s.len);
    at += s.len;
  }
  if (at != m.n_tokens()) fail("{}: segments cover {} tokens, the step has {}", what, at, m.n_tokens());
  return m;
}

ShareMsg decode_share(const Message& msg, const std::string& what) {
  if (msg.header.msg_type() != MsgType::Share)
    fail("{}: expected a Share message, got {}", what, msg_type_name(msg.header.type));
  ByteReader r(msg.payload, what);
  ShareMsg m;
  const uint8_t k = r.get_u8();
  if (k < 1 || k > 3) fail("{}: unknown share message kind {}", what, int(k));
  m.kind = ShareKind(k);
  switch (m.kind) {
    case ShareKind::Offer:
      m.host = r.get_string(4096);
      m.share_kind = r.get_string(256);
      m.slot_bytes = r.get_u64();
      break;
    case ShareKind::Accept:
      m.ok = r.get_u8();
      m.why = r.get_string(4096);
      break;
    case ShareKind::Credit: m.slot = r.get_u32(); break;
  }
  if (m.kind != ShareKind::Credit) {
    for (auto* list : {&m.buffers, &m.signals}) {
      const uint32_t n = r.get_u32();
      if (n > r.remaining()) fail("{}: {} handles cannot fit the message", what, n);
      for (uint32_t i = 0; i < n; ++i) list->push_back(r.get_vector<uint8_t>());
    }
  }
  r.expect_end();
  return m;
}

ResultMsg decode_result(const Message& msg, const std::string& what) {
  ByteReader r(msg.payload, what);
  ResultMsg m;
  m.step = r.get_u64();
  uint32_t n = r.get_u32();
  if (n > r.remaining()) fail("{}: {} segment results cannot fit the message", what, n);
  m.segs.resize(n);
  for (auto& s : m.segs) {
    s.token = r.get_i32();
    s.logprob = r.get_f32();
    s.logits = r.get_vector<float>();
  }
  r.expect_end();
  return m;
}

std::vector<uint8_t> encode_clock(const ClockMsg& m) {
  auto w = ctrl(Ctrl::Clock);
  for (uint64_t v : {m.t0, m.t1, m.base}) w.put_u64(v);
  return w.finish();
}

ClockMsg decode_clock(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Clock, what);
  ClockMsg m;
  m.t0 = r.get_u64();
  m.t1 = r.get_u64();
  m.base = r.get_u64();
  r.expect_end();
  return m;
}

std::vector<uint8_t> encode_trace_size(uint64_t bytes) {
  auto w = ctrl(Ctrl::Trace);
  w.put_u8(0);
  w.put_u64(bytes);
  return w.finish();
}

std::vector<uint8_t> encode_trace(const std::string& events) {
  auto w = ctrl(Ctrl::Trace);
  w.put_u8(1);
  w.put_string(events);
  return w.finish();
}

uint64_t decode_trace_size(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Trace, what);
  if (r.get_u8() != 0) fail("{}: expected the size of a trace", what);
  uint64_t n = r.get_u64();
  r.expect_end();
  return n;
}

std::string decode_trace(const Message& msg, const std::string& what, uint64_t max_bytes) {
  auto r = ctrl_reader(msg, Ctrl::Trace, what);
  if (r.get_u8() != 1) fail("{}: expected trace events", what);
  std::string s = r.get_string(size_t(max_bytes));
  r.expect_end();
  return s;
}

std::vector<uint8_t> encode_snapshot(const SnapshotMsg& m) {
  auto w = ctrl(Ctrl::Snapshot);
  for (int32_t v : {m.serial, m.stage, m.slot}) w.put_i32(v);
  w.put_span(m.state);
  put_penalty(w, m.penalty);
  return w.finish();
}

SnapshotMsg decode_snapshot(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Snapshot, what);
  SnapshotMsg m;
  m.serial = r.get_i32();
  m.stage = r.get_i32();
  m.slot = r.get_i32();
  m.state = r.get_vector<float>();
  m.penalty = get_penalty(r, what);
  r.expect_end();
  return m;
}

std::vector<uint8_t> encode_recover(const RecoverMsg& m) {
  auto w = ctrl(Ctrl::Recover);
  const AssignMsg& a = m.assign;
  for (int32_t v : {a.stage, a.n_stages, a.first, a.last}) w.put_i32(v);
  w.put_u8(a.embed);
  w.put_u8(a.head);
  put_assign_tail(w, a);
  w.put_u32(m.restores);
  w.put_u64(m.body_bytes);
  return w.finish();
}

RecoverMsg decode_recover(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Recover, what);
  RecoverMsg m;
  AssignMsg& a = m.assign;
  a.stage = r.get_i32();
  a.n_stages = r.get_i32();
  a.first = r.get_i32();
  a.last = r.get_i32();
  a.embed = r.get_u8();
  a.head = r.get_u8();
  a.prev_rank = r.get_i32();
  a.next_rank = r.get_i32();
  a.coord_rank = r.get_i32();
  a.max_slots = r.get_i32();
  a.max_tokens = r.get_i32();
  uint8_t d = r.get_u8();
  if (d > uint8_t(DType::I4)) fail("{}: bad dtype {}", what, int(d));
  a.dtype = DType(d);
  a.epoch = r.get_i32();
  if (a.epoch < 1 || a.epoch > kMaxEpoch) fail("{}: epoch {} is outside 1..{}", what, a.epoch, kMaxEpoch);
  m.restores = r.get_u32();
  m.body_bytes = r.get_u64();
  r.expect_end();
  return m;
}

std::vector<uint8_t> encode_restore(const std::vector<SlotRestore>& slots) {
  auto w = ctrl(Ctrl::Restore);
  w.put_u32(uint32_t(slots.size()));
  for (const SlotRestore& s : slots) {
    w.put_i32(s.slot);
    w.put_u8(s.fresh);
    w.put_span(s.state);
    put_sampling(w, s.sampling);
    put_penalty(w, s.penalty);
  }
  return w.finish();
}

std::vector<SlotRestore> decode_restore(const Message& msg, const std::string& what) {
  auto r = ctrl_reader(msg, Ctrl::Restore, what);
  const uint32_t n = r.get_u32();
  if (n > r.remaining()) fail("{}: {} slots cannot fit the message", what, n);
  std::vector<SlotRestore> out(n);
  for (SlotRestore& s : out) {
    s.slot = r.get_i32();
    s.fresh = r.get_u8();
    s.state = r.get_vector<float>();
    s.sampling = get_sampling(r);
    s.penalty = get_penalty(r, what);
  }
  r.expect_end();
  return out;
}

std::vector<uint8_t> encode_recovered(const RecoveredMsg& m) {
  auto w = ctrl(Ctrl::Recovered);
  w.put_i32(m.epoch);
  put_ready(w, m.ready);
  return w.finish();
}

RecoveredMsg decode_recovered(const Message& msg, const std::string& what) {
  if (msg.header.msg_type() == MsgType::Error) fail("{}", decode_error(msg, what));
  auto r = ctrl_reader(msg, Ctrl::Recovered, what);
  RecoveredMsg m;
  m.epoch = r.get_i32();
  if (m.epoch < 1 || m.epoch > kMaxEpoch) fail("{}: epoch {} is outside 1..{}", what, m.epoch, kMaxEpoch);
  m.ready = get_ready(r, what);
  r.expect_end();
  return m;
}

}  // namespace rwkvpp
