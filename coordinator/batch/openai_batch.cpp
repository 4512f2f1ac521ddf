// OpenAI Batch lines: parsing through the server's request schema, rendering through its
// response renderer (openai_batch.h).
#include "coordinator/batch/openai_batch.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>

#include "coordinator/serve/openai_response.h"
#include "shards/model_format.h"

namespace rwkvpp {

namespace {

using nlohmann::json;

const json* field(const json& o, const char* name) {
  auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::string shown(const json& v) {
  std::string d = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return d.size() > 60 ? d.substr(0, 57) + "..." : d;
}

uint64_t mix(uint64_t x) {  // splitmix64's finaliser: one hash, three unrelated ids
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The envelope of an output line around `response` (a JSON text) and `error` (a JSON text).
std::string envelope(uint64_t h, const json& custom_id, const std::string& response,
                     const std::string& error) {
  return fmt::format(R"({{"id":"batch_req_{:016x}","custom_id":{},"response":{},"error":{}}})", h,
                     custom_id.dump(), response, error);
}

std::string response_json(uint64_t h, int status, const std::string& body) {
  return fmt::format(R"({{"status_code":{},"request_id":"req_{:016x}","body":{}}})", status,
                     mix(h), body);
}

}  // namespace

bool is_openai_batch_line(const json& j) {
  return j.is_object() && (j.contains("custom_id") || j.contains("method") || j.contains("url") ||
                           j.contains("body"));
}

BatchItem parse_openai_line(const json& j, int64_t line, const BatchDefaults& d) {
  BatchItem it;
  it.line = line;
  it.format = InputFormat::OpenAI;
  const json* cid = field(j, "custom_id");
  if (!cid) throw LineError("'custom_id' is missing", "missing_custom_id");
  if (!cid->is_string() || cid->get_ref<const std::string&>().empty())
    throw LineError(fmt::format("'custom_id' must be a non-empty string, got {}", shown(*cid)),
                    "invalid_custom_id");
  it.id = *cid;
  it.key = it.id.dump();
  auto bad = [&](const std::string& code, const std::string& message) {
    throw LineError(message, code, it.id);
  };
  const json* method = field(j, "method");
  if (!method) bad("missing_method", "'method' is missing (it must be \"POST\")");
  if (!method->is_string() || method->get<std::string>() != "POST")
    bad("invalid_method", fmt::format("'method' must be \"POST\", got {}", shown(*method)));
  const json* url = field(j, "url");
  if (!url) bad("missing_url", "'url' is missing");
  const std::string u = url->is_string() ? url->get<std::string>() : url->dump();
  if (u == "/v1/chat/completions")
    it.endpoint = Endpoint::ChatCompletions;
  else if (u == "/v1/completions")
    it.endpoint = Endpoint::Completions;
  else
    bad("invalid_url", fmt::format("'url' {} is not supported: use \"/v1/chat/completions\" or "
                                   "\"/v1/completions\"",
                                   shown(*url)));
  const json* body = field(j, "body");
  if (!body) bad("missing_body", "'body' is missing");
  if (!body->is_object()) bad("invalid_body", fmt::format("'body' must be an object, got {}", shown(*body)));

  GenerationRequest g;
  try {
    g = parse_generation_request(*body, it.endpoint, RequestLimits{kMaxSamples, kMaxTokens});
    if (g.stream)
      throw ApiError(400, "'stream' is not supported in a batch: every response is written whole",
                     "stream", "unsupported_parameter");
    for (const PromptInput& p : g.prompts)
      for (int32_t id : p.ids)
        if (d.vocab_size > 0 && id >= d.vocab_size)
          throw ApiError(400,
                         fmt::format("token id {} is out of range (the model has {} ids)", id,
                                     d.vocab_size),
                         "prompt");
  } catch (const ApiError& e) {
    throw LineError(e.what(), e.code().empty() ? "invalid_request" : e.code(), it.id, e.status(),
                    e.param());
  }
  it.model = g.model;
  it.n = g.n;
  it.max_tokens = g.max_tokens >= 0 ? g.max_tokens : d.max_tokens;
  it.sampling = g.sampling;
  it.has_seed = g.has_seed;
  if (!g.has_seed) it.sampling.seed = d.sampling.seed;
  it.stop = g.stop;
  it.logprobs = g.logprobs;
  if (it.endpoint == Endpoint::ChatCompletions) {
    PromptInput p;
    p.text = chat_prompt(g.messages);
    it.prompts.push_back(std::move(p));
    for (const std::string& s : chat_stop_strings())  // as the server does
      if (std::find(it.stop.begin(), it.stop.end(), s) == it.stop.end()) it.stop.push_back(s);
  } else {
    it.prompts = std::move(g.prompts);
  }
  try {
    validate(it.sampling);
  } catch (const Error& e) {
    throw LineError(fmt::format("bad sampling values: {}", e.what()), "invalid_value", it.id, 400);
  }
  return it;
}

std::string openai_output_line(const BatchItem& it, const std::vector<TextResult>& results,
                               int prompt_tokens, const OpenAIOutput& o) {
  const uint64_t h = fnv1a64(it.key.data(), it.key.size(), o.input_hash);
  ResponseMeta m;
  m.endpoint = it.endpoint;
  const bool chat = it.endpoint == Endpoint::ChatCompletions;
  m.id = fmt::format("{}-{:016x}", chat ? "chatcmpl" : "cmpl", mix(mix(h)));
  m.model = it.model;
  m.fingerprint = o.fingerprint;
  m.created = int64_t(std::time(nullptr));
  m.choices = int(results.size());
  m.logprobs = it.logprobs;
  ResponseRenderer r(m);
  int completion_tokens = 0;
  for (size_t c = 0; c < results.size(); ++c) {
    const TextResult& res = results[c];
    ChoiceEvent e;
    e.index = int(c);
    e.text = res.text;
    e.finish = res.finish == Finish::Stop ? "stop" : "length";
    if (it.logprobs)
      for (size_t k = 0; k < res.ids.size() && k < res.logprobs.size(); ++k)
        if (std::find(o.stop_ids.begin(), o.stop_ids.end(), res.ids[k]) == o.stop_ids.end())
          e.logprobs.push_back({token_bytes_or_empty(*o.tok, res.ids[k]), res.logprobs[k]});
    r.event(e);
    completion_tokens += res.completion_tokens;
  }
  const std::string body = r.end(JobEnd{prompt_tokens, completion_tokens, std::nullopt});
  return envelope(h, it.id, response_json(h, 200, body), "null");
}

std::string openai_reject_line(const Reject& r) {
  const uint64_t h =
      fnv1a64(r.text.data(), r.text.size(), fnv1a64(&r.line, sizeof r.line));
  const std::string message = fmt::format("line {}: {}", r.line, r.reason);
  if (r.status > 0)  // what the server would have answered
    return envelope(h, r.custom_id,
                    response_json(h, r.status, error_body(ApiError(r.status, message, r.param,
                                                                   r.code))),
                    "null");
  const json error = {{"code", r.code.empty() ? "invalid_request" : r.code}, {"message", message}};
  return envelope(h, r.custom_id, "null", error.dump(-1, ' ', false, json::error_handler_t::replace));
}

}  // namespace rwkvpp
