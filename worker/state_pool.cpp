#include "worker/state_pool.h"

#include "common/error.h"

namespace rwkvpp {

StatePool::StatePool(Backend& be, const std::vector<const Block*>& blocks, int max_slots)
    : be_(be), max_slots_(max_slots) {
  RWKVPP_CHECK(max_slots > 0);
  sampling_.resize(size_t(max_slots));
  penalty_.resize(size_t(max_slots));
  for (const Block* b : blocks) {
    int64_t s = b->state_floats();
    sizes_.push_back(s);
    std::vector<float> init(static_cast<size_t>(s));
    b->init_state(init.data());
    // The fresh state stays in backend memory: a reset is then a device copy, not an upload
    // from pageable host memory (a CUDA stage starting 2048 sequences of a 14B model made
    // 20480 such uploads of 100 KB, holding its host for a good part of a second).
    init_.push_back(std::make_unique<DeviceBuffer>(&be, size_t(s) * 4));
    be.upload(init_.back()->get(), init.data(), size_t(s) * 4);
    bufs_.push_back(std::make_unique<DeviceBuffer>(&be, size_t(s) * size_t(max_slots) * 4));
  }
  for (int k = 0; k < max_slots; ++k) reset(k);
}

int64_t StatePool::floats_per_slot() const {
  int64_t n = 0;
  for (int64_t s : sizes_) n += s;
  return n;
}

size_t StatePool::bytes() const { return size_t(floats_per_slot()) * size_t(max_slots_) * 4; }

void StatePool::check(int slot) const {
  if (slot < 0 || slot >= max_slots_) fail("state slot {} is out of range (0..{})", slot, max_slots_ - 1);
}

void StatePool::reset(int slot) {
  check(slot);
  for (size_t i = 0; i < bufs_.size(); ++i)
    be_.copy(bufs_[i]->f32() + sizes_[i] * slot, init_[i]->f32(), size_t(sizes_[i]) * 4);
  penalty_[size_t(slot)] = PenaltyState{};
}

void StatePool::clone(int from, int to) {
  check(from);
  check(to);
  if (from == to) return;
  for (size_t i = 0; i < bufs_.size(); ++i)
    be_.copy(bufs_[i]->f32() + sizes_[i] * to, bufs_[i]->f32() + sizes_[i] * from, size_t(sizes_[i]) * 4);
  penalty_[size_t(to)] = penalty_[size_t(from)];
  sampling_[size_t(to)] = sampling_[size_t(from)];
}

SamplingParams& StatePool::sampling(int slot) {
  check(slot);
  return sampling_[size_t(slot)];
}

PenaltyState& StatePool::penalty(int slot) {
  check(slot);
  return penalty_[size_t(slot)];
}

std::vector<float> StatePool::read(int slot) {
  check(slot);
  std::vector<float> out(static_cast<size_t>(floats_per_slot()));
  size_t o = 0;
  for (size_t i = 0; i < bufs_.size(); ++i) {
    be_.download(out.data() + o, bufs_[i]->f32() + sizes_[i] * slot, size_t(sizes_[i]) * 4);
    o += size_t(sizes_[i]);
  }
  return out;
}

void StatePool::write(int slot, const std::vector<float>& v) {
  check(slot);
  RWKVPP_CHECK(int64_t(v.size()) == floats_per_slot());
  size_t o = 0;
  for (size_t i = 0; i < bufs_.size(); ++i) {
    be_.upload(bufs_[i]->f32() + sizes_[i] * slot, v.data() + o, size_t(sizes_[i]) * 4);
    o += size_t(sizes_[i]);
  }
}

}  // namespace rwkvpp
