// The input of a batch job: a JSON Lines file of prompts, one object per line:
//   {"id": "q1", "prompt": "...", "max_tokens": 64, "temperature": 0.8, "top_p": 0.9,
//    "top_k": 40, "seed": 7, "n": 4, "stop": ["\n\n"]}
// "id" (a string or an integer, unique in the file) and "prompt" (a non-empty string) are
// required; the other fields override the job's defaults for that line; unknown fields are
// ignored; blank lines are skipped. A bad line is not fatal: it is reported (line number and
// reason) and the job goes on without it.
//
// scan_input() reads the whole file once: it validates every line, hashes the bytes (the
// journal refuses to resume from another input), and keeps only where each valid line is, so
// that a file of millions of prompts is never held in memory; read_item() parses one again.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/sampling.h"

namespace rwkvpp {

// Bounds of the counts a line (or the command line) may give.
inline constexpr int kMaxSamples = 100000;  // "n", --n
inline constexpr int kMaxTokens = 1 << 24;  // "max_tokens", --max-tokens

// What a line may override, with the job's values (command-line flags) as defaults.
struct BatchDefaults {
  int n = 1;            // samples per prompt
  int max_tokens = 32;  // tokens per sample
  SamplingParams sampling;
  std::vector<std::string> stop;
};

// One valid input line, parsed.
struct BatchItem {
  int64_t line = 0;   // 1-based line number in the input
  nlohmann::json id;  // as given (string or integer)
  std::string key;    // id.dump(): the id as the journal matches it
  std::string prompt;
  int n = 1;
  int max_tokens = 32;
  SamplingParams sampling;  // seed: the job's seed, or the line's when has_seed
  bool has_seed = false;
  std::vector<std::string> stop;
};

// Parses one line against the defaults; throws Error whose message is the reason (it names the
// field: "field 'top_p' must be in (0, 1], got 1.5").
BatchItem parse_batch_line(const std::string& text, int64_t line, const BatchDefaults& d);

// Where a valid line is, and what the journal needs to know about it without parsing it again.
struct LineRef {
  uint64_t offset = 0;  // byte offset of the line in the file
  uint32_t length = 0;  // bytes, without the newline
  int64_t line = 0;     // 1-based line number
  int n = 1;            // samples
  std::string key;      // BatchItem::key
};

struct InputScan {
  std::vector<LineRef> lines;  // valid lines in file order
  uint64_t bytes = 0;
  uint64_t hash = 0;  // FNV-1a 64 of every byte of the file
  int64_t rejected = 0;
  uint64_t samples = 0;  // sum of n over the valid lines
};

// A rejected line: its number, the reason and the text as read.
struct Reject {
  int64_t line;
  std::string reason;
  const std::string& text;
};

// Reads `path`, validating every line; `on_reject` receives each bad line (invalid JSON, a
// missing or bad field, an id seen before). `should_stop` is polled now and then; when it
// returns true the scan ends early and its result must not be used. Throws Error naming the
// file when it cannot be read.
InputScan scan_input(const std::string& path, const BatchDefaults& d,
                     const std::function<void(const Reject&)>& on_reject,
                     const std::function<bool()>& should_stop = nullptr);

// The same on a stream (scan_input's body; the fuzz harness and tests feed it bytes): lines
// longer than `max_line` bytes are rejected without being held in memory.
InputScan scan_lines(std::istream& in, const BatchDefaults& d,
                     const std::function<void(const Reject&)>& on_reject,
                     const std::function<bool()>& should_stop, uint64_t max_line);

// Reads the lines of a scan again, by position.
class InputReader {
 public:
  explicit InputReader(const std::string& path);
  BatchItem read(const LineRef& ref, const BatchDefaults& d);

 private:
  std::string path_;
  std::ifstream f_;
};

}  // namespace rwkvpp
