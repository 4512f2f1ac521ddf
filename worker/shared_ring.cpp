#include "worker/shared_ring.h"

#include <unistd.h>

#include <cstdlib>

#include "common/env_options.h"
#include "common/error.h"

namespace rwkvpp {

namespace {

// Device-sequenced rings (hops inside the layers' recording) only with RWKVPP_SHARE_GRAPH=1:
// faster by ~8 us per hop in their first form (docs/perf.md, seventh session, item 6), not yet
// run on a GPU in this one.
bool rings_wanted() { return env_options().stage.share_graph; }

std::unique_ptr<SharedRing> make_ring(Backend& be, bool receive,
                                      const std::vector<std::unique_ptr<SharedBuffer>>& slots,
                                      const std::vector<std::unique_ptr<SharedSignal>>& waits,
                                      const std::vector<std::unique_ptr<SharedSignal>>& dones) {
  if (!rings_wanted()) return nullptr;
  std::vector<SharedBuffer*> b;
  std::vector<SharedSignal*> w, d;
  for (auto& x : slots) b.push_back(x.get());
  for (auto& x : waits) w.push_back(x.get());
  for (auto& x : dones) d.push_back(x.get());
  return be.share_ring(receive, b, w, d);
}

}  // namespace

std::string this_host() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "";
  return name;
}

SharedRx::SharedRx(Backend& be, size_t slot_bytes) : be_(be), slot_bytes_(slot_bytes) {
  for (int i = 0; i < kSlots; ++i) {
    slots_.push_back(be.share_alloc(slot_bytes));
    // Waited for here, so created here: a memory flag is then polled in local memory.
    written_.push_back(be.signal_create());
  }
}

SharedRx::~SharedRx() {
  for (auto& w : written_) w->release_waits();
}

ShareMsg SharedRx::offer() const {
  ShareMsg m;
  m.kind = ShareKind::Offer;
  m.host = this_host();
  m.share_kind = be_.share_kind();
  m.slot_bytes = slot_bytes_;
  for (int i = 0; i < kSlots; ++i) {
    m.buffers.push_back(slots_[size_t(i)]->handle());
    m.signals.push_back(written_[size_t(i)]->handle());
  }
  return m;
}

void SharedRx::accept(const ShareMsg& m) {
  if (m.signals.size() != size_t(kSlots))
    fail("shared slots: the accept carries {} signals for {} slots", m.signals.size(), kSlots);
  for (auto& h : m.signals) consumed_.push_back(be_.signal_open(h));
  for (auto& s : slots_) s->unlink();  // the peer has them open
  ring_ = make_ring(be_, true, slots_, written_, consumed_);
  accepted_ = true;
}

std::function<void()> SharedRx::take_op(int slot, void* dst, size_t bytes,
                                        const std::string& what) {
  if (!accepted_) fail("{}: hidden vectors in shared slot {}, but no shared slots were agreed", what, slot);
  if (slot != next_) fail("{}: hidden vectors in shared slot {}, expected slot {}", what, slot, next_);
  if (bytes > slot_bytes_) fail("{}: {} bytes of hidden vectors do not fit a {}-byte slot", what, bytes, slot_bytes_);
  next_ = (next_ + 1) % kSlots;
  // The slot's u-th use (from 0) follows the predecessor's (u + 1)-th write of it.
  const uint64_t u = ++uses_[size_t(slot)];
  SharedSignal &written = *written_[size_t(slot)], &consumed = *consumed_[size_t(slot)];
  if (replayable(bytes)) {
    written.device_waited(u);
    consumed.device_recorded();
    return [r = ring_.get(), dst, bytes] { r->hop(dst, bytes); };
  }
  return [this, dst, bytes, slot, u, &written, &consumed] {
    be_.share_copy(dst, slots_[size_t(slot)]->data(), bytes, written, u, consumed);
    if (ring_) ring_->advance(slot, u);
  };
}

SharedTx::SharedTx(Backend& be, const ShareMsg& m, size_t slot_bytes_needed) : be_(be), slot_bytes_(m.slot_bytes) {
  if (m.host != this_host()) fail("the next stage runs on host '{}', this one on '{}'", m.host, this_host());
  if (m.share_kind != be.share_kind())
    fail("the next stage shares memory as '{}', this backend as '{}'", m.share_kind, be.share_kind());
  if (m.slot_bytes < slot_bytes_needed)
    fail("the next stage's slots hold {} bytes, steps here need up to {}", m.slot_bytes, slot_bytes_needed);
  if (m.buffers.size() != m.signals.size() || m.buffers.empty())
    fail("the offer carries {} slots and {} signals", m.buffers.size(), m.signals.size());
  for (size_t i = 0; i < m.buffers.size(); ++i) {
    slots_.push_back(be.share_open(m.buffers[i], size_t(m.slot_bytes)));
    written_.push_back(be.signal_open(m.signals[i]));
    consumed_.push_back(be.signal_create());  // waited for here, so created here
  }
  uses_.assign(slots_.size(), 0);
  credits_ = int(slots_.size());
  ring_ = make_ring(be, false, slots_, consumed_, written_);
}

SharedTx::~SharedTx() {
  for (auto& c : consumed_) c->release_waits();
}

ShareMsg SharedTx::accept() const {
  ShareMsg m;
  m.kind = ShareKind::Accept;
  m.ok = 1;
  for (auto& s : consumed_) m.signals.push_back(s->handle());
  return m;
}

void SharedTx::credit(uint32_t slot, const std::string& what) {
  if (credits_ >= int(slots_.size()) || slot != uint32_t(oldest_))
    fail("{}: credit for shared slot {}, expected {}", what, slot,
         credits_ >= int(slots_.size()) ? std::string("none") : std::to_string(oldest_));
  oldest_ = (oldest_ + 1) % int(slots_.size());
  ++credits_;
}

std::pair<int, std::function<void()>> SharedTx::put_op(const void* src, size_t bytes) {
  RWKVPP_CHECK(credits_ > 0 && bytes <= slot_bytes_);
  const int slot = next_;
  next_ = (next_ + 1) % int(slots_.size());
  --credits_;
  // The u-th write of the slot (from 0) follows the successor's u-th reading of it.
  const uint64_t u = uses_[size_t(slot)]++;
  SharedSignal &consumed = *consumed_[size_t(slot)], &written = *written_[size_t(slot)];
  if (replayable(bytes)) {
    consumed.device_waited(u);
    written.device_recorded();
    return {slot, [r = ring_.get(), src, bytes] { r->hop(const_cast<void*>(src), bytes); }};
  }
  return {slot, [this, src, bytes, slot, u, &consumed, &written] {
            be_.share_copy(slots_[size_t(slot)]->data(), src, bytes, consumed, u, written);
            if (ring_) ring_->advance(slot, u + 1);
          }};
}

}  // namespace rwkvpp
