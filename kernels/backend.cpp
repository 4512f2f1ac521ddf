#include "kernels/backend.h"

#include <utility>

#include "common/error.h"

namespace rwkvpp {

DeviceBuffer::DeviceBuffer(Backend* be, size_t bytes) : be_(be), p_(be->alloc(bytes)), n_(bytes) {}
DeviceBuffer::~DeviceBuffer() {
  if (p_) be_->free(p_);
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : be_(o.be_), p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) be_->free(p_);
    be_ = o.be_;
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

WeightView Backend::load_weight(const HostTensor& t, DType want,
                                std::unique_ptr<DeviceBuffer>& owner) {
  RWKVPP_CHECK(t.shape.size() == 2, "weight must be 2-D");
  HostTensor c = t.converted(want);
  owner = std::make_unique<DeviceBuffer>(this, c.nbytes());
  upload(owner->get(), c.data.data(), c.nbytes());
  return WeightView{owner->get(), want, t.shape[0], t.shape[1]};
}

float* Workspace::get(int id, size_t floats) {
  if (size_t(id) >= bufs_.size()) bufs_.resize(size_t(id) + 1);
  auto& b = bufs_[size_t(id)];
  if (!b || b->bytes() < floats * sizeof(float)) {
    b.reset();
    // Grow by 1.5x so that slowly growing batches do not reallocate every step.
    size_t want = floats * sizeof(float);
    b = std::make_unique<DeviceBuffer>(&be_, want + want / 2 + 64);
  }
  return b->f32();
}

#ifndef RWKVPP_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int) {
  fail("this rwkvpp was built without CUDA (configure with -DRWKVPP_CUDA=ON on a machine with nvcc)");
}
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
#endif

}  // namespace rwkvpp
