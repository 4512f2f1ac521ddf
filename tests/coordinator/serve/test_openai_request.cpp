// The OpenAI request schema (coordinator/serve/openai_request.h): what each endpoint accepts,
// the defaults, and the error objects for wrong types, ranges and unsupported fields; the chat
// format that messages become.
#include "catch.h"
#include "helpers.h"
#include "coordinator/serve/openai_request.h"

using namespace rwkvpp;

namespace {

const RequestLimits kLimits{8, 256};

GenerationRequest completions(const std::string& body) {
  return parse_generation_request(body, Endpoint::Completions, kLimits);
}

GenerationRequest chat(const std::string& body) {
  return parse_generation_request(body, Endpoint::ChatCompletions, kLimits);
}

// The ApiError a body gives (fails the test when it parses).
ApiError error_of(const std::string& body, Endpoint ep = Endpoint::Completions) {
  try {
    parse_generation_request(body, ep, kLimits);
  } catch (const ApiError& e) {
    return e;
  }
  FAIL("expected an ApiError for " << body);
  return ApiError(0, "");
}

}  // namespace

TEST_CASE("a minimal completions request gets OpenAI's defaults", "[serve]") {
  GenerationRequest r = completions(R"({"model": "m", "prompt": "Hello"})");
  CHECK(r.endpoint == Endpoint::Completions);
  CHECK(r.model == "m");
  REQUIRE(r.prompts.size() == 1);
  CHECK_FALSE(r.prompts[0].is_ids);
  CHECK(r.prompts[0].text == "Hello");
  CHECK(r.n == 1);
  CHECK(r.max_tokens == -1);
  CHECK(r.sampling.temperature == 1.0f);  // OpenAI's default, not the engine's greedy one
  CHECK(r.sampling.top_p == 1.0f);
  CHECK_FALSE(r.has_seed);
  CHECK_FALSE(r.stream);
  CHECK_FALSE(r.logprobs);
  CHECK(r.stop.empty());
}

TEST_CASE("every accepted field is read; null is the same as absent", "[serve]") {
  GenerationRequest r = chat(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}],
      "n": 2, "max_completion_tokens": 40, "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "stop": ["\n", "END"], "seed": -1, "presence_penalty": 0.5, "frequency_penalty": -0.25,
      "logprobs": true, "top_logprobs": 0, "stream": true, "stream_options": {"include_usage": true},
      "user": "u1", "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "metadata": {"x": 1},
      "logit_bias": null, "tools": [], "response_format": {"type": "text"}})");
  CHECK(r.n == 2);
  CHECK(r.max_tokens == 40);  // max_completion_tokens wins over the deprecated max_tokens
  CHECK(r.sampling.temperature == 0.5f);
  CHECK(r.sampling.top_p == 0.9f);
  CHECK(r.stop == std::vector<std::string>{"\n", "END"});
  CHECK(r.has_seed);
  CHECK(r.sampling.seed == ~uint64_t(0));  // -1 as 64 bits
  CHECK(r.sampling.presence_penalty == 0.5f);
  CHECK(r.sampling.frequency_penalty == -0.25f);
  CHECK(r.logprobs);
  CHECK(r.stream);
  CHECK(r.include_usage);
  CHECK(r.user == "u1");
  CHECK(r.sampling.top_k == 5);
  CHECK(r.sampling.min_p == Approx(0.1f));
  CHECK(r.sampling.repetition_penalty == Approx(1.2f));
  GenerationRequest n = completions(R"({"model": "m", "prompt": "x", "n": null, "temperature": null,
      "stop": null, "seed": null, "stream": null, "logprobs": 0})");
  CHECK(n.n == 1);
  CHECK(n.sampling.temperature == 1.0f);
  CHECK_FALSE(n.has_seed);
  CHECK(n.logprobs);  // logprobs 0: the sampled tokens' log probabilities, no alternatives
  CHECK(completions(R"({"model": "m", "prompt": "x", "stop": "\n\n"})").stop ==
        std::vector<std::string>{"\n\n"});
}

TEST_CASE("completions prompts: text, several texts, token ids, several id lists", "[serve]") {
  auto texts = completions(R"({"model": "m", "prompt": ["a", "bc"], "n": 2})").prompts;
  REQUIRE(texts.size() == 2);
  CHECK(texts[1].text == "bc");
  auto ids = completions(R"({"model": "m", "prompt": [1, 2, 3]})").prompts;
  REQUIRE(ids.size() == 1);
  CHECK(ids[0].is_ids);
  CHECK(ids[0].ids == std::vector<int32_t>{1, 2, 3});
  auto lists = completions(R"({"model": "m", "prompt": [[5], [6, 7]]})").prompts;
  REQUIRE(lists.size() == 2);
  CHECK(lists[1].ids == std::vector<int32_t>{6, 7});

  CHECK(error_of(R"({"model": "m", "prompt": ["a", 1]})").param() == "prompt[1]");
  CHECK(error_of(R"({"model": "m", "prompt": [1, -2]})").param() == "prompt[1]");
  CHECK(error_of(R"({"model": "m", "prompt": ""})").param() == "prompt");
  CHECK(error_of(R"({"model": "m", "prompt": []})").param() == "prompt");
  CHECK(error_of(R"({"model": "m", "prompt": 5})").code() == "invalid_type");
  CHECK(error_of(R"({"model": "m"})").code() == "missing_required_parameter");
  // 3 prompts x n = 3 is 9 choices, above the limit of 8.
  CHECK(error_of(R"({"model": "m", "prompt": ["a", "b", "c"], "n": 3})").param() == "prompt");
}

TEST_CASE("wrong types and values are 400s that name the field", "[serve]") {
  struct Case {
    const char* body;
    const char* param;
    const char* code;
  };
  const Case cases[] = {
      {R"({"model": "m", "prompt": "x", "temperature": "hot"})", "temperature", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "temperature": 2.5})", "temperature", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "top_p": 0})", "top_p", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "n": 0})", "n", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "n": 9})", "n", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "n": 1.5})", "n", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "max_tokens": 257})", "max_tokens", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "max_tokens": -1})", "max_tokens", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "max_tokens": "10"})", "max_tokens", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]})", "stop",
       "invalid_value"},
      {R"({"model": "m", "prompt": "x", "stop": [""]})", "stop", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "stop": [1]})", "stop[0]", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "seed": 1.5})", "seed", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "presence_penalty": 3})", "presence_penalty",
       "invalid_value"},
      {R"({"model": "m", "prompt": "x", "stream": "yes"})", "stream", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "stream_options": {"include_usage": true}})",
       "stream_options", "invalid_value"},
      {R"({"model": "m", "prompt": "x", "logprobs": true})", "logprobs", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "logprobs": 2})", "logprobs", "unsupported_parameter"},
      {R"({"model": "m", "prompt": "x", "echo": true})", "echo", "unsupported_parameter"},
      {R"({"model": "m", "prompt": "x", "best_of": 3})", "best_of", "unsupported_parameter"},
      {R"({"model": "m", "prompt": "x", "suffix": "s"})", "suffix", "unsupported_parameter"},
      {R"({"model": "m", "prompt": "x", "logit_bias": {"5": 10}})", "logit_bias",
       "unsupported_parameter"},
      {R"({"model": 7, "prompt": "x"})", "model", "invalid_type"},
      {R"({"model": "m", "prompt": "x", "user": 5})", "user", "invalid_type"},
  };
  for (const Case& c : cases) {
    INFO(c.body);
    ApiError e = error_of(c.body);
    CHECK(e.status() == 400);
    CHECK(e.type() == "invalid_request_error");
    CHECK(e.param() == c.param);
    CHECK(e.code() == c.code);
  }
}

TEST_CASE("chat fields: top_logprobs is refused clearly; tools and formats too", "[serve]") {
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  ApiError top = error_of(R"({"model": "m", )" + msgs + R"(, "logprobs": true, "top_logprobs": 3})",
                          Endpoint::ChatCompletions);
  CHECK(top.param() == "top_logprobs");
  CHECK(top.code() == "unsupported_parameter");
  CHECK(std::string(top.what()).find("not supported yet") != std::string::npos);
  CHECK(error_of(R"({"model": "m", )" + msgs + R"(, "top_logprobs": 2})", Endpoint::ChatCompletions)
            .param() == "top_logprobs");
  CHECK(
      error_of(R"({"model": "m", )" + msgs + R"(, "top_logprobs": 21})", Endpoint::ChatCompletions)
          .code() == "invalid_value");
  CHECK(error_of(R"({"model": "m", )" + msgs + R"(, "tools": [{"type": "function"}]})",
                 Endpoint::ChatCompletions)
            .param() == "tools");
  CHECK(error_of(R"({"model": "m", )" + msgs + R"(, "response_format": {"type": "json_object"}})",
                 Endpoint::ChatCompletions)
            .param() == "response_format");
  CHECK(error_of(R"({"model": "m", )" + msgs + R"(, "logprobs": 1})", Endpoint::ChatCompletions)
            .code() == "invalid_type");
}

TEST_CASE("chat messages: roles, content parts, and what is refused", "[serve]") {
  GenerationRequest r = chat(R"({"model": "m", "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null},
      {"role": "developer", "content": "x"}]})");
  REQUIRE(r.messages.size() == 4);
  CHECK(r.messages[1].content == "Hello, there");
  CHECK(r.messages[2].content.empty());
  auto err = [](const std::string& messages) {
    return error_of(R"({"model": "m", "messages": )" + messages + "}", Endpoint::ChatCompletions);
  };
  CHECK(err(R"([])").param() == "messages");
  CHECK(err(R"("hi")").code() == "invalid_type");
  CHECK(err(R"([{"role": "tool", "content": "x"}])").param() == "messages[0].role");
  CHECK(err(R"([{"content": "x"}])").param() == "messages[0].role");
  CHECK(err(R"([{"role": "user"}])").param() == "messages[0].content");
  CHECK(err(R"([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}])")
            .param() == "messages[0].content[0].type");
  CHECK(err(R"([{"role": "user", "content": 5}])").param() == "messages[0].content");
  CHECK(error_of(R"({"model": "m", "prompt": "x"})", Endpoint::ChatCompletions).param() ==
        "messages");
}

TEST_CASE("bodies that are not a JSON object are 400 invalid_json / invalid_type", "[serve]") {
  for (const char* body : {"", "{", "{\"model\": }", "nul", "\xff\xfe"}) {
    INFO(body);
    ApiError e = error_of(body);
    CHECK(e.status() == 400);
    CHECK(e.code() == "invalid_json");
  }
  for (const char* body : {"[]", "\"text\"", "42", "null"}) {
    INFO(body);
    CHECK(error_of(body).code() == "invalid_type");
  }
}

TEST_CASE("hostile bodies: deep nesting and numbers beyond double are 400s, not crashes",
          "[serve][hostile]") {
  // 100000 nested arrays (a 200 KB body) would make a recursive dump() run out of stack.
  const std::string deep = R"({"model": "m", "prompt": "x", "user": )" +
                           std::string(100000, '[') + std::string(100000, ']') + "}";
  ApiError e = error_of(deep);
  CHECK(e.status() == 400);
  CHECK(e.code() == "invalid_json");
  CHECK(test::contains(e.what(), "deep"));
  // 64 deep is still read (and then refused for the type of the field, as any wrong type).
  const std::string ok = R"({"model": "m", "prompt": "x", "user": )" + std::string(63, '[') +
                         std::string(63, ']') + "}";
  CHECK(error_of(ok).param() == "user");
  // nlohmann's parser throws out_of_range, not parse_error, for 1e999.
  ApiError big = error_of(R"({"model": "m", "prompt": "x", "temperature": 1e999})");
  CHECK(big.status() == 400);
  CHECK(big.code() == "invalid_json");
}

TEST_CASE("messages become the User:/Assistant: chat format of rwkvpp chat", "[serve]") {
  std::vector<ChatMessage> m = {{"system", "You are terse."},
                                {"user", "  Hi!\r\nHow are you?  "},
                                {"assistant", "Fine.\n\n\nThanks"},
                                {"developer", "Answer in French."},
                                {"user", "Bonjour"}};
  CHECK(chat_prompt(m) ==
        "System: You are terse.\n\n"
        "User: Hi!\nHow are you?\n\n"
        "Assistant: Fine.\nThanks\n\n"  // blank lines would end the turn: collapsed
        "System: Answer in French.\n\n"
        "User: Bonjour\n\n"
        "Assistant:");
  CHECK(chat_prompt({{"user", "x"}}) == "User: x\n\nAssistant:");
}
