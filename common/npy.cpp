#include "common/npy.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>

#include "common/error.h"

namespace rwkvpp {

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  size_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dims += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) dims += ",";
    if (i + 1 < shape.size()) dims += " ";
    n *= size_t(shape[i]);
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic (6) + version (2) + header length (2) + header + '\n' padded to a multiple of 64.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail("cannot open '{}' for writing", path);
  const char magic[] = "\x93NUMPY\x01\x00";
  f.write(magic, 8);
  uint16_t hl = uint16_t(header.size());
  f.write(reinterpret_cast<const char*>(&hl), 2);
  f.write(header.data(), std::streamsize(header.size()));
  f.write(reinterpret_cast<const char*>(data), std::streamsize(n * 4));
  f.flush();
  if (!f) fail("error writing '{}'", path);
}

std::vector<float> read_npy_f32(const std::string& path, std::vector<int64_t>* shape) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open '{}'", path);
  char head[10];
  if (!f.read(head, 10) || std::memcmp(head, "\x93NUMPY", 6) != 0) fail("'{}' is not a .npy file", path);
  uint16_t hl;
  std::memcpy(&hl, head + 8, 2);
  std::string header(hl, '\0');
  if (!f.read(header.data(), hl)) fail("'{}': truncated .npy header", path);
  if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    fail("'{}': only '<f4' C-order arrays are supported", path);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"(\(([0-9, ]*)\))"))) fail("'{}': no shape in header", path);
  std::vector<int64_t> dims;
  std::string s = m[1];
  size_t n = 1;
  for (size_t p = 0; p < s.size();) {
    while (p < s.size() && (s[p] == ',' || s[p] == ' ')) ++p;
    if (p >= s.size()) break;
    size_t q = p;
    while (q < s.size() && s[q] >= '0' && s[q] <= '9') ++q;
    dims.push_back(std::stoll(s.substr(p, q - p)));
    n *= size_t(dims.back());
    p = q;
  }
  std::vector<float> v(n);
  if (!f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * 4))) fail("'{}': truncated data", path);
  if (shape) *shape = dims;
  return v;
}

}  // namespace rwkvpp
