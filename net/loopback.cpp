// Self-message matching (see loopback.h).
#include "net/loopback.h"

#include <cstring>

namespace rwkvpp {

Loopback::Delivery Loopback::deliver(Id id, void* buf, size_t capacity, const void* data,
                                     size_t bytes) {
  Delivery d{id, bytes, bytes > capacity};
  if (!d.truncated && bytes > 0) std::memcpy(buf, data, bytes);
  return d;
}

std::optional<Loopback::Delivery> Loopback::send(int tag, const void* buf, size_t bytes,
                                                 const std::function<bool(Id)>& claim) {
  for (size_t i = 0; i < waiting_.size();) {
    if (waiting_[i].tag != tag) {
      ++i;
      continue;
    }
    Waiting w = waiting_[i];
    waiting_.erase(waiting_.begin() + std::ptrdiff_t(i));
    if (claim && !claim(w.id)) continue;  // completed elsewhere; `i` now names the next one
    return deliver(w.id, w.buf, w.capacity, buf, bytes);
  }
  const auto* b = static_cast<const uint8_t*>(buf);
  queue_.push_back({tag, std::vector<uint8_t>(b, b + bytes)});
  return std::nullopt;
}

std::optional<Loopback::Delivery> Loopback::take(Id id, int tag, void* buf, size_t capacity) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->tag != tag) continue;
    Delivery d = deliver(id, buf, capacity, it->data.data(), it->data.size());
    queue_.erase(it);
    return d;
  }
  return std::nullopt;
}

void Loopback::wait(Id id, int tag, void* buf, size_t capacity) {
  waiting_.push_back({id, tag, buf, capacity});
}

void Loopback::forget(Id id) {
  std::erase_if(waiting_, [id](const Waiting& w) { return w.id == id; });
}

}  // namespace rwkvpp
