// Rendering of OpenAI generation responses and stream chunks (openai_response.h).
#include "coordinator/serve/openai_response.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "shards/model_format.h"

namespace rwkvpp {

namespace {

using Json = nlohmann::ordered_json;

// Text that is not valid UTF-8 (a byte-level model may stop inside a character) is written
// with U+FFFD for the bad bytes, as `rwkvpp batch` does.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json null_or(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

}  // namespace

std::string system_fingerprint(uint64_t model_fp, std::string_view dtype,
                               std::string_view layers) {
  return fmt::format("rwkvpp-{:016x}-{:08x}", model_fp,
                     fnv1a64(layers.data(), layers.size(), fnv1a64(dtype.data(), dtype.size())) &
                         0xffffffffu);
}

std::string error_body(const ApiError& e) {
  Json j;
  j["error"] = {{"message", e.what()},
                {"type", e.type()},
                {"param", null_or(e.param())},
                {"code", null_or(e.code())}};
  return dump(j);
}

std::string sse_event(std::string_view json) {
  std::string s = "data: ";
  s += json;
  s += "\n\n";
  return s;
}

ResponseRenderer::ResponseRenderer(ResponseMeta m)
    : m_(std::move(m)), choices_(size_t(std::max(1, m_.choices))), offsets_(choices_.size(), 0) {
  if (!m_.stream) return;
  // What chunk() dumps, cut around the index and the text: the head object without its closing
  // brace, then the choices array up to the index; after the text, the rest of the object.
  const bool chat = m_.endpoint == Endpoint::ChatCompletions;
  text_head_ = "data: " + dump(head_json(chat ? "chat.completion.chunk" : "text_completion"));
  text_head_.pop_back();
  text_head_ += R"(,"choices":[{"index":)";
  text_tail_ = chat ? "}" : "";
  text_tail_ += R"(,"logprobs":null,"finish_reason":null}])";
  if (m_.include_usage) text_tail_ += R"(,"usage":null)";
  text_tail_ += "}\n\n";
}

std::string ResponseRenderer::text_chunk(int index, std::string_view text, bool role) const {
  const bool chat = m_.endpoint == Endpoint::ChatCompletions;
  const std::string value = dump(Json(std::string(text)));  // escaped as chunk() escapes it
  std::string out;
  out.reserve(text_head_.size() + text_tail_.size() + value.size() + 48);
  out += text_head_;
  out += std::to_string(index);
  out += !chat ? R"(,"text":)"
        : role ? R"(,"delta":{"role":"assistant","content":)"
               : R"(,"delta":{"content":)";
  out += value;
  out += text_tail_;
  return out;
}

ResponseRenderer::Json ResponseRenderer::head_json(const char* object) const {
  Json j;
  j["id"] = m_.id;
  j["object"] = object;
  j["created"] = m_.created;
  j["model"] = m_.model;
  j["system_fingerprint"] = m_.fingerprint;
  return j;
}

ResponseRenderer::Json ResponseRenderer::logprobs_json(const std::vector<TokenLogprob>& lps,
                                                       size_t offset) const {
  if (!m_.logprobs) return nullptr;
  if (m_.endpoint == Endpoint::ChatCompletions) {
    Json content = Json::array();
    for (const TokenLogprob& t : lps) {
      Json bytes = Json::array();
      for (unsigned char c : t.bytes) bytes.push_back(int(c));
      content.push_back({{"token", t.bytes},
                         {"logprob", t.logprob},
                         {"bytes", bytes},
                         {"top_logprobs", Json::array()}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  Json tokens = Json::array(), values = Json::array(), offsets = Json::array();
  for (const TokenLogprob& t : lps) {
    tokens.push_back(t.bytes);
    values.push_back(t.logprob);
    offsets.push_back(offset);
    offset += t.bytes.size();
  }
  return {{"tokens", tokens},
          {"token_logprobs", values},
          {"top_logprobs", nullptr},
          {"text_offset", offsets}};
}

std::string ResponseRenderer::chunk(int index, std::string_view text,
                                    const std::vector<TokenLogprob>& lps, const char* finish,
                                    bool role) {
  const bool chat = m_.endpoint == Endpoint::ChatCompletions;
  Json c;
  c["index"] = index;
  if (chat) {
    Json delta = Json::object();
    if (role) delta["role"] = "assistant";
    if (!finish || !text.empty()) delta["content"] = std::string(text);
    c["delta"] = delta;
  } else {
    c["text"] = std::string(text);
  }
  c["logprobs"] = logprobs_json(lps, offsets_[size_t(index)]);
  c["finish_reason"] = finish ? Json(finish) : Json(nullptr);
  for (const TokenLogprob& t : lps) offsets_[size_t(index)] += t.bytes.size();
  Json j = head_json(chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = Json::array({c});
  if (m_.include_usage) j["usage"] = nullptr;
  return sse_event(dump(j));
}

std::string ResponseRenderer::event(const ChoiceEvent& e) {
  if (e.index < 0 || size_t(e.index) >= choices_.size()) return {};
  Choice& ch = choices_[size_t(e.index)];
  if (!m_.stream) {
    ch.text += e.text;
    ch.logprobs.insert(ch.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
    if (e.finish) ch.finish = e.finish;
    return {};
  }
  const bool chat = m_.endpoint == Endpoint::ChatCompletions;
  std::string out;
  const bool role = chat && !ch.started;
  ch.started = true;
  if (!e.text.empty() || !e.logprobs.empty() || role)
    out += m_.logprobs ? chunk(e.index, e.text, e.logprobs, nullptr, role)
                       : text_chunk(e.index, e.text, role);
  if (e.finish) out += chunk(e.index, "", {}, e.finish, false);
  return out;
}

std::string ResponseRenderer::end(const JobEnd& e) {
  Json usage = {{"prompt_tokens", e.prompt_tokens},
                {"completion_tokens", e.completion_tokens},
                {"total_tokens", e.prompt_tokens + e.completion_tokens}};
  const bool chat = m_.endpoint == Endpoint::ChatCompletions;
  if (m_.stream) {
    std::string out;
    if (e.error) {
      out += sse_event(error_body(*e.error));
    } else if (m_.include_usage) {
      Json j = head_json(chat ? "chat.completion.chunk" : "text_completion");
      j["choices"] = Json::array();
      j["usage"] = usage;
      out += sse_event(dump(j));
    }
    out += kSseDone;
    return out;
  }
  if (e.error) return error_body(*e.error);
  Json choices = Json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& ch = choices_[i];
    Json c;
    c["index"] = int(i);
    if (chat)
      c["message"] = {{"role", "assistant"}, {"content", ch.text}, {"refusal", nullptr}};
    else
      c["text"] = ch.text;
    c["logprobs"] = logprobs_json(ch.logprobs, 0);
    c["finish_reason"] = ch.finish.empty() ? Json(nullptr) : Json(ch.finish);
    choices.push_back(c);
  }
  Json j = head_json(chat ? "chat.completion" : "text_completion");
  j["choices"] = choices;
  j["usage"] = usage;
  return dump(j);
}

}  // namespace rwkvpp
