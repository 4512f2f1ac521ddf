// The OpenAI Batch file format of `rwkvpp batch` (docs/batch.md): input lines
//   {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
// whose body is read by rwkvpp serve's request parser (openai_request.h: one schema, one
// validator), and output lines as OpenAI's Batch API writes them (its BatchRequestOutput):
//   {"id": "batch_req_...", "custom_id": "r1",
//    "response": {"status_code": 200, "request_id": "req_...", "body": <completion object>},
//    "error": null}
// with the body rendered by the server's ResponseRenderer (openai_response.h). A line that is
// refused goes to the rejects file as an output line too: a body the server would answer with an
// HTTP error gets {"response": {"status_code": 400, "request_id", "body": {"error": {...}}},
// "error": null}; a line that is no request at all (not JSON, no custom_id, an unknown url, a
// repeated custom_id) gets {"response": null, "error": {"code", "message"}}.
//
// Every id is a hash of the input's bytes and the custom_id (or the line), so that a resumed job
// writes the lines an uninterrupted one would; only "created" (Unix seconds) differs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coordinator/batch/batch_input.h"
#include "coordinator/textgen.h"

namespace rwkvpp {

// Whether a line (a JSON object) is an OpenAI Batch line: it has custom_id, method, url or body.
bool is_openai_batch_line(const nlohmann::json& j);

// Parses an OpenAI Batch line (a JSON object) of line number `line`; throws LineError with the
// code and, once known, the custom_id. Choices follow the server: choice p * n + i is sample i
// of prompt p; without max_tokens in the body the job's default applies; chat bodies get the
// server's chat prompt and stop strings.
BatchItem parse_openai_line(const nlohmann::json& j, int64_t line, const BatchDefaults& d);

struct OpenAIOutput {
  uint64_t input_hash = 0;        // InputScan::hash: part of every id
  std::string fingerprint;        // system_fingerprint
  const Tokenizer* tok = nullptr;  // the bytes of logprobs' tokens
  std::vector<int32_t> stop_ids;  // ids that end a choice without text (no logprob entry)
};

// The output line of a complete OpenAI line: results[c] is choice c; prompt_tokens the usage's
// prompt tokens (counted per choice, as the server does).
std::string openai_output_line(const BatchItem& it, const std::vector<TextResult>& results,
                               int prompt_tokens, const OpenAIOutput& o);

// The rejects file's line for a refused line of an OpenAI Batch file.
std::string openai_reject_line(const Reject& r);

}  // namespace rwkvpp
