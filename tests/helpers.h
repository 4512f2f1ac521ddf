// Shared test helpers: where the reference data lives, reading float64 fixtures, temporary
// directories, running the rwkvpp binary.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace rwkvpp::test {

// The reference data folder: $RWKVPP_SHARED, else ../shared beside the project.
std::string shared_dir();
std::string fixture(const std::string& rel);  // shared_dir() + "/fixtures/" + rel
std::vector<double> read_f64(const std::string& path);
std::vector<float> read_f32(const std::string& path);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& data);

// A fresh empty directory, removed with its contents at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Path of the built rwkvpp executable.
std::string rwkvpp_binary();

struct RunResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs a shell command, capturing stdout and stderr; `timeout_s` kills it after that long.
RunResult run(const std::string& cmd, int timeout_s = 300);

// The message of the exception (an Error, usually) that f throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Max |a - b| over all elements (sizes must match).
double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b);
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace rwkvpp::test
