#include "helpers.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace rwkvpp::test {

std::string shared_dir() {
  if (const char* e = std::getenv("RWKVPP_SHARED"); e && *e) return e;
  return RWKVPP_SHARED_DEFAULT;
}

std::string fixture(const std::string& rel) { return shared_dir() + "/fixtures/" + rel; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), std::streamsize(data.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::vector<double> read_f64(const std::string& path) {
  std::string s = read_file(path);
  std::vector<double> v(s.size() / 8);
  std::memcpy(v.data(), s.data(), v.size() * 8);
  return v;
}

std::vector<float> read_f32(const std::string& path) {
  std::string s = read_file(path);
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "rwkvpp-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string rwkvpp_binary() { return RWKVPP_BINARY; }

RunResult run(const std::string& cmd, int timeout_s) {
  TempDir d;
  std::string full = "timeout -s KILL " + std::to_string(timeout_s) + " bash -c '" + [&] {
    std::string q;
    for (char c : cmd) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
    return q;
  }() + "' >" + d / "out" + " 2>" + d / "err" + " </dev/null";
  int st = std::system(full.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = read_file(d / "out");
  r.err = read_file(d / "err");
  return r;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::fabs(double(a[i]) - b[i]);
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

}  // namespace rwkvpp::test
