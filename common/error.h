// Errors. `Error` is what a user can cause (a bad file, a bad flag, a lost peer): its message
// names the file, dataset, rank or field. RWKVPP_CHECK is an always-on assert for programming
// bugs. Library code throws; only main() turns an error into an exit code.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace rwkvpp {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace rwkvpp

#define RWKVPP_CHECK(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond)) ::rwkvpp::check_failed(#cond, __FILE__, __LINE__, std::string{__VA_ARGS__}); \
  } while (0)
