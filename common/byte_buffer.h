// A byte buffer whose contents start undefined: unlike std::vector<uint8_t>, sizing it writes
// nothing, so a large receive buffer sized for the worst case (a Result with every logit row)
// costs no resident memory until a message fills part of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace rwkvpp {

class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(size_t n) : p_(new uint8_t[n]), n_(n) {}  // default-initialised: untouched
  uint8_t* data() { return p_.get(); }
  const uint8_t* data() const { return p_.get(); }
  size_t size() const { return n_; }

 private:
  std::unique_ptr<uint8_t[]> p_;
  size_t n_ = 0;
};

}  // namespace rwkvpp
