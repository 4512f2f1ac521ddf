// The OpenAI response shapes for text generation: what the generation side produces (ChoiceEvent,
// JobEnd), and ResponseRenderer, which turns those into the bodies of /v1/completions and
// /v1/chat/completions, streamed as server-sent events or whole. Also the error object and the
// SSE framing. Like openai_request.h, nothing here knows HTTP or the engine.
//
// Streams (stream: true): every chunk is one event "data: {json}\n\n" (the JSON has no raw
// newline), the stream ends with "data: [DONE]\n\n". Chat: a choice's first chunk carries
// delta.role "assistant"; text chunks carry delta.content; a choice ends with a chunk whose
// delta is {} and whose finish_reason is set. Completions: chunks are text_completion objects
// with choices[].text. With stream_options.include_usage every chunk has "usage": null and one
// more chunk with "choices": [] and the usage comes before [DONE]. A generation cut short (the
// server shutting down, a timeout) ends with an error event {"error": {...}} before [DONE],
// which the official clients raise as an APIError.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/serve/openai_request.h"

namespace rwkvpp {

struct TokenLogprob {
  std::string bytes;  // the token's bytes (possibly not valid UTF-8 on their own)
  float logprob = 0;  // as the sampler gives it (after penalties and temperature)
};

// A piece of one choice, in order: released text, the log probabilities of the tokens generated
// since the previous event (when asked for), and `finish` ("stop", "length") on its last event.
struct ChoiceEvent {
  int index = 0;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  const char* finish = nullptr;
};

// How a generation ended: its token counts, or an error (then the choices may be incomplete).
struct JobEnd {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  std::optional<ApiError> error;
};

struct ResponseMeta {
  Endpoint endpoint = Endpoint::Completions;
  std::string id;           // "cmpl-..." or "chatcmpl-..."
  std::string model;        // the served model's name
  std::string fingerprint;  // system_fingerprint
  int64_t created = 0;      // Unix seconds
  int choices = 1;
  bool stream = false, include_usage = false, logprobs = false;
};

// The system_fingerprint of responses: the model's fingerprint (ModelReader::fingerprint) and a
// hash of the pipeline's numerics (compute dtype, devices per layer range: PipelineNumerics),
// "rwkvpp-<16 hex>-<8 hex>" -- what decides the bytes of a seeded response.
std::string system_fingerprint(uint64_t model_fingerprint, std::string_view dtype,
                               std::string_view layers);

// {"error": {"message", "type", "param", "code"}} (param and code null when empty).
std::string error_body(const ApiError& e);
// "data: " + json + "\n\n"; `json` must not contain a newline (a dumped JSON value never does).
std::string sse_event(std::string_view json);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// Renders one request's response. Not thread-safe; events of several choices may interleave.
class ResponseRenderer {
 public:
  explicit ResponseRenderer(ResponseMeta m);
  // Streaming: the SSE bytes to send for this event (possibly empty). Otherwise: accumulates the
  // choice and returns nothing.
  std::string event(const ChoiceEvent& e);
  // Streaming: the last SSE bytes (usage chunk when asked, an error event when end.error, then
  // [DONE]). Otherwise: the whole body, the completion object or the error object.
  std::string end(const JobEnd& end);
  // The HTTP status of a response that is not streamed: 200, or the error's.
  static int status(const JobEnd& end) { return end.error ? end.error->status() : 200; }
  const ResponseMeta& meta() const { return m_; }

 private:
  struct Choice {
    std::string text;
    std::vector<TokenLogprob> logprobs;
    std::string finish;
    bool started = false;  // streaming chat: the role chunk went out
  };
  using Json = nlohmann::ordered_json;
  // One streamed chunk of choice `index` (chat: role says whether delta carries the role).
  std::string chunk(int index, std::string_view text, const std::vector<TokenLogprob>& lps,
                    const char* finish, bool role);
  // The same bytes for the common chunk, a text delta without log probabilities or finish
  // reason, pasted from pieces made once (a JSON object per token cost the HTTP threads
  // several microseconds per token): text_head_ + index + text key + the text as a JSON
  // string + text_tail_.
  std::string text_chunk(int index, std::string_view text, bool role) const;
  // The "logprobs" of a choice (null when not asked); `offset`: completions' text_offset start.
  Json logprobs_json(const std::vector<TokenLogprob>& lps, size_t offset) const;
  Json head_json(const char* object) const;  // id, object, created, model, system_fingerprint
  ResponseMeta m_;
  std::vector<Choice> choices_;
  std::vector<size_t> offsets_;  // completions: bytes of tokens so far per choice (text_offset)
  std::string text_head_, text_tail_;  // text_chunk's fixed parts (streaming only)
};

}  // namespace rwkvpp
