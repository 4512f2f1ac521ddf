// The input of a batch job: a JSON Lines file of prompts, one object per line, in one of two
// formats, detected per file from its first line that is a JSON object (detect_input_format):
// - rwkvpp records:
//     {"id": "q1", "prompt": "...", "max_tokens": 64, "temperature": 0.8, "top_p": 0.9,
//      "top_k": 40, "seed": 7, "n": 4, "stop": ["\n\n"]}
//   "id" (a string or an integer, unique in the file) and "prompt" (a non-empty string) are
//   required; the other fields override the job's defaults for that line.
// - OpenAI Batch (a line has "custom_id", "method", "url" or "body"):
//     {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
//   the body is a request of rwkvpp serve's endpoint (openai_request.h: one schema, one
//   validator; chat bodies get the server's chat format and stop strings); custom_id (a
//   non-empty string) is unique in the file.
// Unknown fields are ignored; blank lines are skipped. A bad line is not fatal: it is reported
// (line number, reason, and for OpenAI lines an error code and the custom_id when known) and the
// job goes on without it.
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

#include "common/error.h"
#include "coordinator/serve/openai_request.h"
#include "common/sampling_params.h"

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
  int64_t vocab_size = 0;  // token-id prompts (OpenAI completions) are checked against it; 0: not
};

enum class InputFormat {
  Auto,     // scan_lines: decide from the first line that is a JSON object
  Records,  // rwkvpp's {"id", "prompt", ...}
  OpenAI,   // OpenAI Batch {"custom_id", "method", "url", "body"}
};
const char* format_name(InputFormat f);  // "rwkvpp", "openai"

// One valid input line, parsed.
struct BatchItem {
  int64_t line = 0;   // 1-based line number in the input
  InputFormat format = InputFormat::Records;
  nlohmann::json id;  // as given (string or integer); OpenAI: the custom_id (a string)
  std::string key;    // id.dump(): the id as the journal matches it
  // The prompts: records: one text. OpenAI completions: as given (texts or token ids), each with
  // n choices, choice p * n + i for sample i of prompt p; chat: the chat_prompt() text.
  std::vector<PromptInput> prompts;
  int n = 1;          // samples per prompt
  int max_tokens = 32;
  SamplingParams sampling;  // seed: the job's seed, or the line's when has_seed
  bool has_seed = false;
  std::vector<std::string> stop;
  // OpenAI lines.
  Endpoint endpoint = Endpoint::Completions;
  std::string model;      // the body's "model", echoed in the response
  bool logprobs = false;  // the body asked for log probabilities
  // Records the line writes in the output: its samples (records), or 1 (OpenAI: one line with
  // every choice).
  int records() const { return format == InputFormat::OpenAI ? 1 : n; }
  int choices() const { return n * int(prompts.size()); }
};

// Why a line was refused: the message names the field ("field 'top_p' must be in (0, 1], got
// 1.5"); for OpenAI lines also an error code ("invalid_json", "missing_custom_id",
// "duplicate_custom_id", "invalid_url", "invalid_method", "invalid_body", or the server's code
// for a body it would refuse, whose `status` is then the server's HTTP status, else 0) and the
// custom_id when the line had a usable one (else null).
class LineError : public Error {
 public:
  LineError(const std::string& message, std::string code = {}, nlohmann::json custom_id = nullptr,
            int status = 0, std::string param = {})
      : Error(message),
        code_(std::move(code)),
        param_(std::move(param)),
        custom_id_(std::move(custom_id)),
        status_(status) {}
  const std::string& code() const { return code_; }
  const std::string& param() const { return param_; }  // the body's field, for status > 0
  const nlohmann::json& custom_id() const { return custom_id_; }
  int status() const { return status_; }

 private:
  std::string code_, param_;
  nlohmann::json custom_id_;
  int status_;
};

// Parses one line of a file in `format` (Records or OpenAI) against the defaults; throws
// LineError whose message is the reason.
BatchItem parse_batch_line(const std::string& text, int64_t line, const BatchDefaults& d,
                           InputFormat format = InputFormat::Records);

// The format of a file: that of its first line that is a JSON object (Records when there is
// none among the first 1000 lines). Reads from the stream's current position.
InputFormat detect_input_format(std::istream& in);

// Where a valid line is, and what the journal needs to know about it without parsing it again.
struct LineRef {
  uint64_t offset = 0;  // byte offset of the line in the file
  uint32_t length = 0;  // bytes, without the newline
  int64_t line = 0;     // 1-based line number
  int n = 1;            // records it writes (BatchItem::records())
  std::string key;      // BatchItem::key
};

struct InputScan {
  std::vector<LineRef> lines;  // valid lines in file order
  uint64_t bytes = 0;
  uint64_t hash = 0;  // FNV-1a 64 of every byte of the file
  int64_t rejected = 0;
  uint64_t samples = 0;  // records the valid lines write (sum of LineRef::n)
  InputFormat format = InputFormat::Records;
};

// A rejected line: its number, the reason and the text as read; for OpenAI lines the error code,
// the HTTP status (0: not a request the server would answer) and the custom_id (or null).
struct Reject {
  int64_t line;
  std::string reason;
  const std::string& text;
  std::string code;
  int status = 0;
  nlohmann::json custom_id;
  std::string param;
};

// Reads `path`, validating every line; `on_reject` receives each bad line (invalid JSON, a
// missing or bad field, an id seen before). `should_stop` is polled now and then; when it
// returns true the scan ends early and its result must not be used. Throws Error naming the
// file when it cannot be read.
InputScan scan_input(const std::string& path, const BatchDefaults& d,
                     const std::function<void(const Reject&)>& on_reject,
                     const std::function<bool()>& should_stop = nullptr,
                     InputFormat format = InputFormat::Auto);

// The same on a stream (scan_input's body; the fuzz harness and tests feed it bytes): lines
// longer than `max_line` bytes are rejected without being held in memory. With Auto, the format
// is decided by the first line that is a JSON object (InputScan::format says which).
InputScan scan_lines(std::istream& in, const BatchDefaults& d,
                     const std::function<void(const Reject&)>& on_reject,
                     const std::function<bool()>& should_stop, uint64_t max_line,
                     InputFormat format = InputFormat::Auto);

// Reads the lines of a scan again, by position.
class InputReader {
 public:
  InputReader(const std::string& path, InputFormat format);
  BatchItem read(const LineRef& ref, const BatchDefaults& d);

 private:
  std::string path_;
  InputFormat format_;
  std::ifstream f_;
};

}  // namespace rwkvpp
