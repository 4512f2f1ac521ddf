// Hidden vectors between neighbouring stages on one host, without host copies: the receiving
// stage owns a ring of slots in memory its predecessor maps too (Backend::share_alloc; GPU
// memory through CUDA IPC, POSIX shared memory on the CPU). The predecessor's device copies a
// step's output straight into the next slot and records that slot's "written" signal; its host
// sends only the Step's header, at once, without waiting for its device. The receiver's device
// waits for "written", copies the slot into the stage's hidden buffer and records "consumed";
// its host returns the slot with a Credit message, and the predecessor's device waits for
// "consumed" before it writes the slot again. So neither host waits for a device on the way,
// and a token's hop costs a device-to-device copy and a signal instead of two copies through
// host memory and a message of the whole payload. Each signal is created by the side that waits
// for it (the offer carries the "written" signals, the accept the "consumed" ones): a memory
// flag lives in the waiter's memory and is polled there, and only the recorder's store crosses
// the link. Each wait, copy and record is one Backend::share_copy (on CUDA, one kernel for
// small copies). Handshake and messages: protocol/protocol.h (ShareMsg).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "protocol/protocol.h"

namespace rwkvpp {

// The host name as the peers compare it (slots are only offered within one host).
std::string this_host();

// The receiving stage's side.
class SharedRx {
 public:
  static constexpr int kSlots = 3;
  // Allocates the slots; throws Error when the backend cannot share.
  SharedRx(Backend& be, size_t slot_bytes);
  ~SharedRx();  // releases the waits still queued (SharedSignal::release_waits) before any free
  ShareMsg offer() const;
  // The predecessor's answer: opens its "consumed" signals. Throws Error on a malformed one.
  void accept(const ShareMsg& m);
  bool accepted() const { return accepted_; }
  // Queues, on the device: wait for slot `slot`'s write, copy `bytes` of it to `dst`, record
  // that the slot is consumed. Slots must be taken in ring order (checked).
  void take(int slot, void* dst, size_t bytes, const std::string& what) {
    take_op(slot, dst, bytes, what)();
  }
  // The same checks and counts now; returns the operation that queues the device's part. Where
  // replayable(bytes), that operation is the same at every step and may be recorded for replay
  // (Stage::forward's hooks); otherwise it holds this step's counts and must run once, now.
  std::function<void()> take_op(int slot, void* dst, size_t bytes, const std::string& what);
  // Whether the device sequences hops of `bytes` itself (Backend::share_ring; small copies).
  bool replayable(size_t bytes) const { return ring_ && ring_->takes(bytes); }

 private:
  Backend& be_;
  size_t slot_bytes_;
  std::vector<std::unique_ptr<SharedBuffer>> slots_;
  std::vector<std::unique_ptr<SharedSignal>> consumed_, written_;
  std::unique_ptr<SharedRing> ring_;  // the device sequences the hops (Backend::share_ring)
  bool accepted_ = false;
  int next_ = 0;
  uint64_t uses_[kSlots] = {};  // times each slot has been taken
};

// The sending stage's side: the successor's slots, opened here.
class SharedTx {
 public:
  // Opens the offered slots and signals; throws Error (the reason to refuse) when it cannot.
  SharedTx(Backend& be, const ShareMsg& offer, size_t slot_bytes_needed);
  ~SharedTx();
  ShareMsg accept() const;
  bool has_credit() const { return credits_ > 0; }
  // A Credit from the successor: the slot it names must be the oldest one in use.
  void credit(uint32_t slot, const std::string& what);
  // Queues, on the device: wait until the successor is done with the next slot, copy `bytes`
  // from `src` into it, record that it is written. Needs a credit; returns the slot.
  int put(const void* src, size_t bytes) {
    auto [slot, op] = put_op(src, bytes);
    op();
    return slot;
  }
  // As SharedRx::take_op: the slot, and the operation that queues the device's part.
  std::pair<int, std::function<void()>> put_op(const void* src, size_t bytes);
  bool replayable(size_t bytes) const { return ring_ && ring_->takes(bytes); }

 private:
  Backend& be_;
  size_t slot_bytes_;
  std::vector<std::unique_ptr<SharedBuffer>> slots_;
  std::vector<std::unique_ptr<SharedSignal>> consumed_, written_;
  std::vector<uint64_t> uses_;  // times each slot has been written
  std::unique_ptr<SharedRing> ring_;
  int credits_ = 0, next_ = 0, oldest_ = 0;
};

}  // namespace rwkvpp
