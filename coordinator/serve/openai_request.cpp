// Parsing and validation of OpenAI generation requests (openai_request.h).
#include "coordinator/serve/openai_request.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/limits.h"
#include "coordinator/textgen.h"

namespace rwkvpp {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message,
                      const std::string& code = "invalid_value") {
  throw ApiError(400, message, param, code);
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a decimal number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    default:
      return "null";
  }
}

[[noreturn]] void wrong_type(const std::string& param, const json& v, const char* want) {
  bad(param, fmt::format("invalid type for '{}': expected {}, got {}", param, want, type_name(v)),
      "invalid_type");
}

// The field, or nullptr when it is absent or null (OpenAI treats null as "not given").
const json* field(const json& o, const char* name) {
  auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& o, const char* name, bool dflt) {
  const json* v = field(o, name);
  if (!v) return dflt;
  if (!v->is_boolean()) wrong_type(name, *v, "a boolean");
  return v->get<bool>();
}

double get_number(const json& o, const char* name, double dflt, double lo, double hi,
                  bool lo_open = false) {
  const json* v = field(o, name);
  if (!v) return dflt;
  if (!v->is_number()) wrong_type(name, *v, "a number");
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    bad(name,
        fmt::format("'{}' must be in {}{}, {}], got {}", name, lo_open ? "(" : "[", lo, hi, x));
  return x;
}

int64_t get_int(const json& o, const char* name, int64_t dflt, int64_t lo, int64_t hi) {
  const json* v = field(o, name);
  if (!v) return dflt;
  if (!v->is_number_integer()) wrong_type(name, *v, "an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    bad(name, fmt::format("'{}' must be at most {}", name, hi));
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) bad(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x));
  return x;
}

std::string get_string(const json& o, const char* name) {
  const json* v = field(o, name);
  if (!v) return {};
  if (!v->is_string()) wrong_type(name, *v, "a string");
  return v->get<std::string>();
}

std::vector<std::string> parse_stop(const json& o) {
  const json* v = field(o, "stop");
  std::vector<std::string> out;
  if (!v) return out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 4)
      bad("stop", fmt::format("'stop' takes at most 4 sequences, got {}", v->size()));
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) wrong_type(fmt::format("stop[{}]", i), (*v)[i], "a string");
      out.push_back((*v)[i].get<std::string>());
    }
  } else {
    wrong_type("stop", *v, "a string or an array of strings");
  }
  for (const auto& s : out)
    if (s.empty()) bad("stop", "a stop sequence must not be empty");
  return out;
}

// Token ids as given in a prompt: non-negative integers (the vocabulary is checked later).
std::vector<int32_t> parse_ids(const json& a, const std::string& param) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < a.size(); ++i) {
    const json& t = a[i];
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
      bad(fmt::format("{}[{}]", param, i),
          fmt::format("'{}[{}]' must be a token id (a non-negative integer)", param, i));
    ids.push_back(t.get<int32_t>());
  }
  return ids;
}

std::vector<PromptInput> parse_prompts(const json& o) {
  const json* v = field(o, "prompt");
  if (!v) bad("prompt", "'prompt' is required", "missing_required_parameter");
  std::vector<PromptInput> out;
  auto text = [](std::string s) {
    PromptInput p;
    p.text = std::move(s);
    return p;
  };
  auto ids = [](std::vector<int32_t> t) {
    PromptInput p;
    p.is_ids = true;
    p.ids = std::move(t);
    return p;
  };
  if (v->is_string()) {
    out.push_back(text(v->get<std::string>()));
  } else if (v->is_array() && !v->empty()) {
    const json& first = (*v)[0];
    if (first.is_number()) {
      out.push_back(ids(parse_ids(*v, "prompt")));
    } else {
      for (size_t i = 0; i < v->size(); ++i) {
        const json& p = (*v)[i];
        if (p.is_string() && first.is_string())
          out.push_back(text(p.get<std::string>()));
        else if (p.is_array() && first.is_array())
          out.push_back(ids(parse_ids(p, fmt::format("prompt[{}]", i))));
        else
          wrong_type(fmt::format("prompt[{}]", i), p,
                     first.is_string() ? "a string" : "an array of token ids");
      }
    }
  } else {
    wrong_type("prompt", *v, "a string, an array of strings, or token ids");
  }
  for (size_t i = 0; i < out.size(); ++i)
    if ((out[i].is_ids && out[i].ids.empty()) || (!out[i].is_ids && out[i].text.empty()))
      bad(out.size() == 1 ? "prompt" : fmt::format("prompt[{}]", i), "a prompt must not be empty");
  return out;
}

std::string content_text(const json& c, const std::string& param) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) wrong_type(param, c, "a string or an array of content parts");
  std::string text;
  for (size_t i = 0; i < c.size(); ++i) {
    const std::string p = fmt::format("{}[{}]", param, i);
    const json& part = c[i];
    if (!part.is_object()) wrong_type(p, part, "an object");
    const std::string type = get_string(part, "type");
    if (type != "text")
      bad(p + ".type",
          fmt::format("content parts of type '{}' are not supported (only 'text')", type));
    const json* t = field(part, "text");
    if (!t || !t->is_string()) bad(p + ".text", "a text content part needs a string 'text'");
    text += t->get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& o) {
  const json* v = field(o, "messages");
  if (!v) bad("messages", "'messages' is required", "missing_required_parameter");
  if (!v->is_array()) wrong_type("messages", *v, "an array");
  if (v->empty()) bad("messages", "'messages' must not be empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const std::string p = fmt::format("messages[{}]", i);
    const json& m = (*v)[i];
    if (!m.is_object()) wrong_type(p, m, "an object");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad(p + ".role", "every message needs a string 'role'");
    ChatMessage cm;
    cm.role = role->get<std::string>();
    if (cm.role != "system" && cm.role != "developer" && cm.role != "user" &&
        cm.role != "assistant")
      bad(p + ".role",
          fmt::format("role '{}' is not supported (system, developer, user, assistant)", cm.role));
    const json* c = field(m, "content");
    if (c)
      cm.content = content_text(*c, p + ".content");
    else if (cm.role != "assistant")
      bad(p + ".content", "a message needs 'content'", "missing_required_parameter");
    out.push_back(std::move(cm));
  }
  return out;
}

// Fields whose meaning this server cannot honour: refused rather than ignored.
void refuse_unsupported(const json& o, Endpoint ep) {
  auto refuse = [](const char* name, const std::string& why) {
    bad(name, fmt::format("'{}' is not supported by this server: {}", name, why),
        "unsupported_parameter");
  };
  if (const json* v = field(o, "tools"); v && !(v->is_array() && v->empty()))
    refuse("tools", "no tool calling");
  if (const json* v = field(o, "functions"); v && !(v->is_array() && v->empty()))
    refuse("functions", "no function calling");
  if (const json* v = field(o, "tool_choice");
      v && !(v->is_string() && v->get<std::string>() == "none"))
    refuse("tool_choice", "no tool calling");
  if (const json* v = field(o, "logit_bias"); v && !(v->is_object() && v->empty()))
    refuse("logit_bias", "no logit bias yet");
  if (const json* v = field(o, "response_format")) {
    const json* t = v->is_object() ? field(*v, "type") : nullptr;
    if (!t || !t->is_string() || t->get<std::string>() != "text")
      refuse("response_format", "only {\"type\": \"text\"}");
  }
  if (ep == Endpoint::Completions) {
    if (get_bool(o, "echo", false)) refuse("echo", "the prompt is not echoed");
    if (get_int(o, "best_of", 1, 1, 1000) != 1) refuse("best_of", "only 1");
    if (field(o, "suffix")) refuse("suffix", "no insertion");
  }
}

void parse_sampling(const json& o, GenerationRequest& r) {
  SamplingParams& s = r.sampling;
  s.temperature = float(get_number(o, "temperature", 1.0, 0.0, 2.0));
  s.top_p = float(get_number(o, "top_p", 1.0, 0.0, 1.0, true));
  s.presence_penalty = float(get_number(o, "presence_penalty", 0.0, -2.0, 2.0));
  s.frequency_penalty = float(get_number(o, "frequency_penalty", 0.0, -2.0, 2.0));
  // rwkvpp's extensions (as `rwkvpp generate` has them).
  s.top_k = int(get_int(o, "top_k", 0, 0, 1 << 20));
  s.min_p = float(get_number(o, "min_p", 0.0, 0.0, 1.0));
  if (s.min_p >= 1.0f) bad("min_p", "'min_p' must be below 1");
  s.repetition_penalty = float(get_number(o, "repetition_penalty", 1.0, 0.0, 10.0, true));
  if (const json* v = field(o, "seed")) {
    if (!v->is_number_integer()) wrong_type("seed", *v, "an integer");
    r.has_seed = true;
    s.seed = v->is_number_unsigned() ? v->get<uint64_t>() : uint64_t(v->get<int64_t>());
  }
}

void parse_logprobs(const json& o, GenerationRequest& r) {
  if (r.endpoint == Endpoint::ChatCompletions) {
    r.logprobs = get_bool(o, "logprobs", false);
    const int64_t top = get_int(o, "top_logprobs", 0, 0, 20);
    if (top > 0 && !r.logprobs) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (top > 0)
      bad("top_logprobs",
          "top_logprobs > 0 is not supported yet: the sampler reports the log probability of the "
          "sampled token only (use top_logprobs 0 or leave it out)",
          "unsupported_parameter");
  } else {
    const json* v = field(o, "logprobs");
    if (!v) return;
    if (v->is_boolean()) wrong_type("logprobs", *v, "an integer (0 to 5)");
    const int64_t k = get_int(o, "logprobs", 0, 0, 5);
    if (k > 0)
      bad("logprobs",
          "logprobs > 0 (top alternatives) is not supported yet: the sampler reports the log "
          "probability of the sampled token only (use logprobs 0)",
          "unsupported_parameter");
    r.logprobs = true;
  }
}

}  // namespace

GenerationRequest parse_generation_request(std::string_view body, Endpoint ep,
                                           const RequestLimits& lim) {
  if (size_t depth = json_depth(body); depth > kMaxJsonDepth)
    throw ApiError(400,
                   fmt::format("the request body nests JSON {} deep, over the limit of {}", depth,
                               kMaxJsonDepth),
                   {}, "invalid_json");
  json o;
  try {
    o = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e999
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()), {},
                   "invalid_json");
  }
  return parse_generation_request(o, ep, lim);
}

GenerationRequest parse_generation_request(const json& o, Endpoint ep, const RequestLimits& lim) {
  if (!o.is_object())
    throw ApiError(400, "the request body must be a JSON object", {}, "invalid_type");
  GenerationRequest r;
  r.endpoint = ep;
  const json* model = field(o, "model");
  if (!model) bad("model", "'model' is required", "missing_required_parameter");
  if (!model->is_string()) wrong_type("model", *model, "a string");
  r.model = model->get<std::string>();
  refuse_unsupported(o, ep);
  if (ep == Endpoint::Completions)
    r.prompts = parse_prompts(o);
  else
    r.messages = parse_messages(o);
  r.n = int(get_int(o, "n", 1, 1, lim.max_choices));
  const size_t prompts = ep == Endpoint::Completions ? r.prompts.size() : 1;
  if (prompts * size_t(r.n) > size_t(lim.max_choices))
    bad(prompts > 1 ? "prompt" : "n",
        fmt::format("{} prompt(s) times n = {} makes {} choices; this server allows at most {}",
                    prompts, r.n, prompts * size_t(r.n), lim.max_choices));
  const char* max_name = "max_tokens";
  if (ep == Endpoint::ChatCompletions && field(o, "max_completion_tokens"))
    max_name = "max_completion_tokens";
  const int64_t mt = get_int(o, max_name, -1, 0, std::numeric_limits<int32_t>::max());
  if (mt > lim.max_tokens)
    bad(max_name, fmt::format("'{}' is {}, this server allows at most {} (--max-tokens-limit)",
                              max_name, mt, lim.max_tokens));
  r.max_tokens = int(mt);
  parse_sampling(o, r);
  r.stop = parse_stop(o);
  r.stream = get_bool(o, "stream", false);
  if (const json* so = field(o, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", *so, "an object");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = get_bool(*so, "include_usage", false);
  }
  parse_logprobs(o, r);
  r.user = get_string(o, "user");
  return r;
}

namespace {

// Trimmed, CRLF -> LF, blank lines collapsed (a "\n\n" would end the turn early).
std::string normalise_turn_text(std::string_view in) {
  std::string s;
  for (size_t i = 0; i < in.size(); ++i)
    if (!(in[i] == '\r' && i + 1 < in.size() && in[i + 1] == '\n')) s += in[i];
  const size_t b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return {};
  const size_t e = s.find_last_not_of(" \t\n\r");
  std::string out;
  for (size_t i = b; i <= e; ++i) {
    if (s[i] == '\n' && !out.empty() && out.back() == '\n') continue;
    out += s[i];
  }
  return out;
}

}  // namespace

std::string chat_turns(const std::vector<ChatMessage>& messages, size_t count) {
  std::string p;
  for (size_t i = 0; i < count && i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const char* role = m.role == "user" ? "User" : m.role == "assistant" ? "Assistant" : "System";
    p += chat_turn(role, normalise_turn_text(m.content));
  }
  return p;
}

std::string chat_prompt(const std::vector<ChatMessage>& messages) {
  std::string p = chat_turns(messages, messages.size());
  p += kChatAnswerCue;
  return p;
}

}  // namespace rwkvpp
