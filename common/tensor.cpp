#include "common/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "common/limits.h"

namespace rwkvpp {

int64_t shape_numel(const std::vector<int64_t>& shape) { return checked_numel(shape, "tensor"); }

std::string shape_to_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

int64_t HostTensor::numel() const { return shape_numel(shape); }
std::string HostTensor::shape_str() const { return shape_to_string(shape); }

std::vector<float> HostTensor::to_f32() const {
  RWKVPP_CHECK(data.size() == size_t(numel()) * dtype_size(dtype));
  std::vector<float> out(numel());
  rwkvpp::to_f32(dtype, data.data(), out.data(), out.size());
  return out;
}

HostTensor HostTensor::converted(DType t) const {
  if (t == dtype) return *this;
  HostTensor r;
  r.dtype = t;
  r.shape = shape;
  r.data.resize(size_t(numel()) * dtype_size(t));
  auto f = to_f32();
  rwkvpp::from_f32(t, f.data(), r.data.data(), f.size());
  return r;
}

HostTensor HostTensor::from_f32(const std::vector<float>& v, std::vector<int64_t> shape) {
  RWKVPP_CHECK(int64_t(v.size()) == shape_numel(shape));
  HostTensor r;
  r.dtype = DType::F32;
  r.shape = std::move(shape);
  r.data.resize(v.size() * 4);
  std::memcpy(r.data.data(), v.data(), r.data.size());
  return r;
}

}  // namespace rwkvpp
