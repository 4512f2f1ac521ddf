// Messages a rank sends to itself, matched without any network library: the whole of the
// local transport, and the self path of the MPI one (which keeps self-sends out of MPI: it is
// cheaper, and Open MPI 4.1's ob1 self path does not report a truncated receive).
//
// Matching follows MPI's rules for one (source, tag) pair: a message goes to the oldest
// waiting receive with its tag, else it is copied into a queue that later receives take from,
// oldest first. A message larger than the receive's capacity is consumed and reported as
// truncated (the owner turns that into an error).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <vector>

namespace rwkvpp {

class Loopback {
 public:
  using Id = uint64_t;  // the owner's request id

  struct Delivery {
    Id id = 0;               // the receive that got the message
    size_t bytes = 0;        // the message's size
    bool truncated = false;  // bytes > the receive's capacity (nothing was copied)
  };

  // Sends `bytes` from `buf` to oneself. Offers the message to the waiting receives with `tag`,
  // oldest first; `claim(id)` may refuse one (return false), e.g. a receive from any peer that
  // the owner could not withdraw from the network because a remote message got there first;
  // a refused receive stops waiting here. Returns the delivery, or nullopt when the message
  // was queued. The caller's buffer is free on return either way.
  std::optional<Delivery> send(int tag, const void* buf, size_t bytes,
                               const std::function<bool(Id)>& claim);
  // Takes the oldest queued message with `tag` into `buf` (as receive `id`), or returns
  // nullopt when there is none.
  std::optional<Delivery> take(Id id, int tag, void* buf, size_t capacity);
  // Registers receive `id` as waiting for a message with `tag`.
  void wait(Id id, int tag, void* buf, size_t capacity);
  // Stops receive `id` waiting (cancelled, or completed by other means). No-op if not waiting.
  void forget(Id id);

  size_t queued() const { return queue_.size(); }

 private:
  struct Waiting {
    Id id;
    int tag;
    void* buf;
    size_t capacity;
  };
  struct Queued {
    int tag;
    std::vector<uint8_t> data;
  };
  static Delivery deliver(Id id, void* buf, size_t capacity, const void* data, size_t bytes);

  std::vector<Waiting> waiting_;  // oldest first
  std::deque<Queued> queue_;      // oldest first
};

}  // namespace rwkvpp
