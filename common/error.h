// Errors. `Error` is what a user can cause (a bad file, a bad flag, a lost peer): its message
// names the file, dataset, rank or field; `InputError` is the part of it that rerunning the same
// command cannot cure (what the command was given). RWKVPP_CHECK is an always-on assert for
// programming bugs. Library code throws; only main() (and, on a multi-rank job, the abort that
// ends every rank) turns an error into an exit code.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace rwkvpp {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// What the command was given cannot be used, found before any work is done: a bad option value,
// or a model, input, prefix file or output journal that cannot be opened, read or continued.
// Rerunning the same command fails the same way, so the process exits kExitBadInput rather than
// 1, and a scheduler that requeues a job after a failure (cluster/*.sbatch) leaves it alone.
class InputError : public Error {
 public:
  using Error::Error;
};

// What RWKVPP_CHECK throws: a bug, never the input's fault.
class InternalError : public Error {
 public:
  using Error::Error;
};

// rwkvpp's exit codes: 0 done; 1 an error while running (a rank lost, an I/O error, ...);
// kExitBadInput an InputError; 75 `rwkvpp batch` stopped by SIGTERM/SIGINT (run it again to
// resume); 100-127 CLI11's, for a command line that does not parse. cluster/README.md relies on
// them.
constexpr int kExitBadInput = 2;

// Runs `f`, for a stretch that only reads what the command was given: an Error it throws comes
// out as an InputError with the same message.
template <typename F>
auto as_input_error(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const InputError&) {
    throw;
  } catch (const InternalError&) {
    throw;
  } catch (const Error& e) {
    throw InputError(e.what());
  }
}

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// fail() for what the command was given (an InputError).
template <typename... Args>
[[noreturn]] void fail_input(fmt::format_string<Args...> f, Args&&... args) {
  throw InputError(fmt::format(f, std::forward<Args>(args)...));
}

[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace rwkvpp

#define RWKVPP_CHECK(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond)) ::rwkvpp::check_failed(#cond, __FILE__, __LINE__, std::string{__VA_ARGS__}); \
  } while (0)
