// The OpenAI response shapes (coordinator/serve/openai_response.h): SSE framing, stream chunks of
// both endpoints (role chunk, text chunks, finish chunk, usage chunk, [DONE]), whole bodies with
// interleaved choices, log probabilities, error objects, and text that is not valid UTF-8.
#include <nlohmann/json.hpp>
#include <sstream>

#include "catch.h"
#include "coordinator/serve/openai_response.h"

using namespace rwkvpp;
using nlohmann::json;

namespace {

ResponseMeta meta(Endpoint ep, bool stream, int choices = 1) {
  ResponseMeta m;
  m.endpoint = ep;
  m.id = ep == Endpoint::ChatCompletions ? "chatcmpl-1" : "cmpl-1";
  m.model = "tiny";
  m.fingerprint = "fp";
  m.created = 1700000000;
  m.choices = choices;
  m.stream = stream;
  return m;
}

// Splits an SSE byte stream into its events' data, checking the framing on the way: every
// event is exactly one "data: " line followed by a blank line.
std::vector<std::string> sse_data(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < s.size()) {
    const size_t end = s.find("\n\n", at);
    REQUIRE(end != std::string::npos);
    const std::string event = s.substr(at, end - at);
    REQUIRE(event.rfind("data: ", 0) == 0);
    REQUIRE(event.find('\n') == std::string::npos);
    out.push_back(event.substr(6));
    at = end + 2;
  }
  return out;
}

}  // namespace

TEST_CASE("an SSE event is one data line and a blank line, whatever the text holds", "[serve]") {
  const std::string text = "line one\nline two\r\n\n\"quoted\"";
  const std::string event = sse_event(json({{"text", text}}).dump());
  auto data = sse_data(event);
  REQUIRE(data.size() == 1);
  CHECK(json::parse(data[0])["text"] == text);
  CHECK(kSseDone == "data: [DONE]\n\n");
}

TEST_CASE("error objects have message, type, param and code (null when empty)", "[serve]") {
  json a = json::parse(error_body(ApiError(400, "bad n", "n", "invalid_value")));
  CHECK(a ==
        json::parse(R"({"error": {"message": "bad n", "type": "invalid_request_error", "param": "n",
                                       "code": "invalid_value"}})"));
  json b = json::parse(error_body(ApiError(503, "going", {}, {}, "server_error")));
  CHECK(b["error"]["param"].is_null());
  CHECK(b["error"]["code"].is_null());
  CHECK(b["error"]["type"] == "server_error");
}

TEST_CASE("a streamed chat: role first, text deltas, an empty finish delta, usage, [DONE]",
          "[serve]") {
  ResponseMeta m = meta(Endpoint::ChatCompletions, true);
  m.include_usage = true;
  ResponseRenderer r(m);
  std::string s = r.event({0, "Hel", {}, nullptr});
  s += r.event({0, "lo", {}, nullptr});
  s += r.event({0, "", {}, "stop"});
  s += r.end(JobEnd{3, 4, std::nullopt});
  auto data = sse_data(s);
  REQUIRE(data.size() == 5);
  CHECK(data.back() == "[DONE]");
  std::vector<json> chunks;
  for (size_t i = 0; i + 1 < data.size(); ++i) chunks.push_back(json::parse(data[i]));
  for (const json& c : chunks) {
    CHECK(c["id"] == "chatcmpl-1");
    CHECK(c["object"] == "chat.completion.chunk");
    CHECK(c["model"] == "tiny");
    CHECK(c["created"] == 1700000000);
    CHECK(c["system_fingerprint"] == "fp");
    CHECK(c.contains("usage"));  // null on every chunk but the last, with include_usage
  }
  CHECK(chunks[0]["choices"][0]["delta"] == json({{"role", "assistant"}, {"content", "Hel"}}));
  CHECK(chunks[0]["choices"][0]["finish_reason"].is_null());
  CHECK(chunks[0]["usage"].is_null());
  CHECK(chunks[1]["choices"][0]["delta"] == json({{"content", "lo"}}));
  CHECK(chunks[2]["choices"][0]["delta"] == json::object());
  CHECK(chunks[2]["choices"][0]["finish_reason"] == "stop");
  CHECK(chunks[3]["choices"] == json::array());
  CHECK(chunks[3]["usage"] ==
        json({{"prompt_tokens", 3}, {"completion_tokens", 4}, {"total_tokens", 7}}));
}

TEST_CASE("a streamed completion without include_usage has no usage field", "[serve]") {
  ResponseRenderer r(meta(Endpoint::Completions, true));
  std::string s = r.event({0, "abc", {}, "length"});
  s += r.end(JobEnd{1, 3, std::nullopt});
  auto data = sse_data(s);
  REQUIRE(data.size() == 3);
  json text = json::parse(data[0]), fin = json::parse(data[1]);
  CHECK(text["object"] == "text_completion");
  CHECK(text["choices"][0]["text"] == "abc");
  CHECK_FALSE(text.contains("usage"));
  CHECK(fin["choices"][0]["text"] == "");
  CHECK(fin["choices"][0]["finish_reason"] == "length");
  CHECK(data[2] == "[DONE]");
}

TEST_CASE("a stream cut short ends with an error event, then [DONE]", "[serve]") {
  ResponseMeta m = meta(Endpoint::ChatCompletions, true);
  m.include_usage = true;
  ResponseRenderer r(m);
  std::string s = r.event({0, "part", {}, nullptr});
  s += r.end(JobEnd{2, 1, ApiError(503, "shutting down", {}, "server_shutdown", "server_error")});
  auto data = sse_data(s);
  REQUIRE(data.size() == 3);
  json e = json::parse(data[1]);
  CHECK(e["error"]["code"] == "server_shutdown");
  CHECK(e["error"]["message"] == "shutting down");
  CHECK(data[2] == "[DONE]");
}

TEST_CASE("whole bodies: interleaved choices in index order, usage, the error status", "[serve]") {
  ResponseRenderer r(meta(Endpoint::ChatCompletions, false, 2));
  CHECK(r.event({1, "b1", {}, nullptr}).empty());
  CHECK(r.event({0, "a1", {}, nullptr}).empty());
  r.event({1, "b2", {}, "length"});
  r.event({0, "a2", {}, "stop"});
  JobEnd end{5, 4, std::nullopt};
  CHECK(ResponseRenderer::status(end) == 200);
  json j = json::parse(r.end(end));
  CHECK(j["object"] == "chat.completion");
  REQUIRE(j["choices"].size() == 2);
  CHECK(j["choices"][0]["index"] == 0);
  CHECK(j["choices"][0]["message"] ==
        json({{"role", "assistant"}, {"content", "a1a2"}, {"refusal", nullptr}}));
  CHECK(j["choices"][0]["finish_reason"] == "stop");
  CHECK(j["choices"][1]["message"]["content"] == "b1b2");
  CHECK(j["choices"][1]["finish_reason"] == "length");
  CHECK(j["choices"][0]["logprobs"].is_null());
  CHECK(j["usage"]["total_tokens"] == 9);

  ResponseRenderer c(meta(Endpoint::Completions, false));
  c.event({0, "x", {}, "stop"});
  json cj = json::parse(c.end(end));
  CHECK(cj["object"] == "text_completion");
  CHECK(cj["choices"][0]["text"] == "x");

  ResponseRenderer f(meta(Endpoint::Completions, false));
  JobEnd failed{0, 0, ApiError(504, "too slow", {}, "timeout", "server_error")};
  CHECK(ResponseRenderer::status(failed) == 504);
  CHECK(json::parse(f.end(failed))["error"]["code"] == "timeout");
}

TEST_CASE("log probabilities in the shape of each endpoint", "[serve]") {
  ResponseMeta m = meta(Endpoint::ChatCompletions, false);
  m.logprobs = true;
  ResponseRenderer chat(m);
  chat.event({0, "hi", {{"h", -0.5f}, {"i", -1.25f}}, "stop"});
  json c = json::parse(chat.end(JobEnd{1, 2, std::nullopt}))["choices"][0]["logprobs"];
  REQUIRE(c["content"].size() == 2);
  CHECK(
      c["content"][1] ==
      json(
          {{"token", "i"}, {"logprob", -1.25}, {"bytes", {105}}, {"top_logprobs", json::array()}}));
  CHECK(c["refusal"].is_null());

  m.endpoint = Endpoint::Completions;
  m.stream = true;
  ResponseRenderer comp(m);
  std::string s = comp.event({0, "ab", {{"a", -1}, {"b", -2}}, nullptr});
  s += comp.event({0, "c", {{"c", -3}}, "length"});
  auto data = sse_data(s);
  json first = json::parse(data[0])["choices"][0]["logprobs"];
  CHECK(first["tokens"] == json({"a", "b"}));
  CHECK(first["token_logprobs"] == json({-1.0, -2.0}));
  CHECK(first["text_offset"] == json({0, 1}));
  json second = json::parse(data[1])["choices"][0]["logprobs"];
  CHECK(second["text_offset"] == json({2}));  // continues where the first chunk's tokens ended
}

TEST_CASE("text that is not valid UTF-8 goes out with U+FFFD", "[serve]") {
  ResponseRenderer r(meta(Endpoint::Completions, false));
  r.event({0, std::string("a\xff") + "b", {}, "length"});
  json j = json::parse(r.end(JobEnd{1, 3, std::nullopt}));
  CHECK(j["choices"][0]["text"] ==
        "a\xef\xbf\xbd"
        "b");
}

TEST_CASE("streamed text chunks are the bytes of the whole JSON object, for any text", "[serve]") {
  // The renderer pastes text chunks from fixed pieces; they must equal the object dumped whole
  // (the order of its fields included), for both endpoints, with and without usage, for text
  // that needs escaping and for bytes that are not UTF-8.
  using ojson = nlohmann::ordered_json;
  const std::vector<std::string> texts = {"plain",        "",
                                          "\"q\" \\ /",   "tab\tnl\ncr\r\x01\x1f\x7f",
                                          "caf\xc3\xa9",  std::string("a\xff\xfe") + "b\xe2\x82",
                                          "\xf0\x9f\x98\x80 emoji"};
  for (Endpoint ep : {Endpoint::Completions, Endpoint::ChatCompletions})
    for (bool usage : {false, true}) {
      ResponseMeta m = meta(ep, true, 2);
      m.include_usage = usage;
      m.id = "id \"with\" quotes";
      ResponseRenderer r(m);
      const bool chat = ep == Endpoint::ChatCompletions;
      for (int index : {0, 1})
        for (size_t t = 0; t < texts.size(); ++t) {
          const bool role = chat && t == 0;  // a choice's first chat chunk carries the role
          ojson c;
          c["index"] = index;
          if (chat) {
            ojson delta = ojson::object();
            if (role) delta["role"] = "assistant";
            delta["content"] = texts[t];
            c["delta"] = delta;
          } else {
            c["text"] = texts[t];
          }
          c["logprobs"] = nullptr;
          c["finish_reason"] = nullptr;
          ojson j;
          j["id"] = m.id;
          j["object"] = chat ? "chat.completion.chunk" : "text_completion";
          j["created"] = m.created;
          j["model"] = m.model;
          j["system_fingerprint"] = m.fingerprint;
          j["choices"] = ojson::array({c});
          if (usage) j["usage"] = nullptr;
          const std::string want =
              "data: " + j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n\n";
          // An empty text goes out only as the role chunk (chat), never on its own.
          if (texts[t].empty() && !role) continue;
          CHECK(r.event({index, texts[t], {}, nullptr}) == want);
        }
    }
}
