// The OpenAI request schema for text generation: parsing and validation of the bodies of
// POST /v1/completions and POST /v1/chat/completions into one GenerationRequest, with errors as
// OpenAI-style error objects (ApiError: HTTP status, message, type, param, code). Nothing here
// knows about HTTP or the engine, so that other front ends (the OpenAI Batch file format of
// `rwkvpp batch`) can read the same schema.
//
// Accepted (both endpoints unless marked): model (required), n, max_tokens,
// max_completion_tokens (chat), temperature, top_p, stop, seed, presence_penalty,
// frequency_penalty, logprobs (chat: a boolean; completions: an integer, the number of top
// alternatives), top_logprobs (chat), stream, stream_options.include_usage, user; rwkvpp's own
// extensions top_k, min_p and repetition_penalty. A null value is the same as an absent field.
// Unknown fields are ignored; fields that would change the output in a way this server cannot
// honour (tools, a non-text response_format, logit_bias, echo, best_of > 1, suffix, and any
// top-k log probabilities, which the sampler does not report yet) are refused with a 400 that
// names them, never silently dropped.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/sampling_params.h"

namespace rwkvpp {

// An error with the HTTP status and the fields of an OpenAI error object:
// {"error": {"message", "type", "param", "code"}}. Empty param/code are written as null.
class ApiError : public Error {
 public:
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {},
           std::string type = "invalid_request_error")
      : Error(message),
        status_(status),
        type_(std::move(type)),
        param_(std::move(param)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string type_, param_, code_;
};

enum class Endpoint { Completions, ChatCompletions };

struct ChatMessage {
  std::string role;     // "system", "developer", "user" or "assistant"
  std::string content;  // the text (content parts of type "text" joined)
};

// One prompt of a completions request: text, or token ids as given.
struct PromptInput {
  bool is_ids = false;
  std::string text;
  std::vector<int32_t> ids;
};

// What the server enforces while parsing (the rest, prompt length and token ids, needs the
// tokenizer: see ServeLimits).
struct RequestLimits {
  int max_choices = 16;   // n times the number of prompts
  int max_tokens = 4096;  // the most max_tokens a request may ask for
};

struct GenerationRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  std::vector<PromptInput> prompts;   // completions: one or more prompts
  std::vector<ChatMessage> messages;  // chat
  int n = 1;                          // choices per prompt
  int max_tokens = -1;                // -1: not given (the server's default applies)
  SamplingParams sampling;            // OpenAI defaults: temperature 1, top_p 1
  bool has_seed = false;              // sampling.seed holds it; choice i uses seed + i
  std::vector<std::string> stop;      // up to 4, none empty
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // the sampled tokens' log probabilities
  std::string user;
};

// Parses and validates a request body. Throws ApiError (400 for bad JSON, a wrong type or an
// out-of-range value, naming the field in `param`; the model name is checked by the caller).
GenerationRequest parse_generation_request(std::string_view body, Endpoint endpoint,
                                           const RequestLimits& limits);
// The same on a body already parsed (the "body" of an OpenAI Batch line).
GenerationRequest parse_generation_request(const nlohmann::json& body, Endpoint endpoint,
                                           const RequestLimits& limits);

// The chat format of `rwkvpp chat` (textgen.h, chat_turn): each message becomes a turn
// "Role: text\n\n" (System, User, Assistant; "developer" is a System turn), and the prompt ends
// with "Assistant:", after which the model answers (until one of chat_stop_strings()). A message's
// text is trimmed, CRLF becomes LF and runs of blank lines become one newline, because "\n\n" ends
// a turn in this format.
std::string chat_prompt(const std::vector<ChatMessage>& messages);
// The turns of the first `count` messages, without the answer cue: where chat_prompt's text
// ends a message (the state cache keeps states at such points).
std::string chat_turns(const std::vector<ChatMessage>& messages, size_t count);

}  // namespace rwkvpp
