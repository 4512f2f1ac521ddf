// HostTensor: an owning, row-major tensor in host memory, in one of the weight dtypes.
// It is the exchange type between the converters, the HDF5 format and the backends.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace rwkvpp {

struct HostTensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // outermost first (C order)
  std::vector<uint8_t> data;   // numel() * dtype_size(dtype) bytes, little-endian

  int64_t numel() const;
  size_t nbytes() const { return data.size(); }
  std::string shape_str() const;  // "[64, 256]"

  // The values as fp32 (converted if stored as fp16/bf16).
  std::vector<float> to_f32() const;
  // A copy converted to `t` (round to nearest even).
  HostTensor converted(DType t) const;

  static HostTensor from_f32(const std::vector<float>& v, std::vector<int64_t> shape);
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(data.data()); }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(data.data()); }
};

// The element count; throws Error for a negative dimension or a product over int64 (readers
// check shapes from files first with checked_numel(), common/limits.h, naming the tensor).
int64_t shape_numel(const std::vector<int64_t>& shape);
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace rwkvpp
