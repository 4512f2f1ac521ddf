// The routes of rwkvpp serve (api.h): authentication, /health, /ready, /metrics, /v1/models and
// the two generation endpoints, which validate, tokenize and queue a Job.
#include "coordinator/serve/api.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>
#include <utility>

namespace rwkvpp {

namespace {

using Json = nlohmann::ordered_json;

HttpReply json_reply(int status, const Json& j) {
  HttpReply r;
  r.status = status;
  r.body = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  return r;
}

uint64_t random_u64() {
  thread_local std::mt19937_64 gen{(uint64_t(std::random_device{}()) << 32) ^
                                   std::random_device{}()};
  return gen();
}

// Where the first message ends (often a system prompt that many requests share) and where all
// but the last end (a conversation resent with another last message), as token counts of
// `prompt`, when the tokens of that much text start the prompt's (a token may span the join).
std::vector<size_t> message_boundaries(const Tokenizer& tok, const std::vector<ChatMessage>& msgs,
                                       const std::vector<int32_t>& prompt) {
  std::vector<size_t> out;
  for (size_t count : {size_t(1), msgs.size() - 1}) {
    if (count < 1 || count >= msgs.size()) continue;
    const std::vector<int32_t> head = tok.encode(chat_turns(msgs, count));
    if (head.empty() || head.size() >= prompt.size() ||
        !std::equal(head.begin(), head.end(), prompt.begin()))
      continue;
    if (out.empty() || out.back() < head.size()) out.push_back(head.size());
  }
  return out;
}

}  // namespace

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Every byte of the longer string is visited; the result folds the length difference in.
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= unsigned(x ^ y);
  }
  return diff == 0;
}

bool ApiKeys::allows(std::string_view auth) const {
  if (keys_.empty()) return true;
  constexpr std::string_view kBearer = "Bearer ";
  if (auth.size() <= kBearer.size() || auth.substr(0, kBearer.size()) != kBearer) return false;
  const std::string_view given = auth.substr(kBearer.size());
  bool ok = false;
  for (const std::string& k : keys_) ok |= constant_time_equal(given, k);  // no early exit
  return ok;
}

HttpReply error_reply(const ApiError& e) {
  HttpReply r;
  r.status = e.status();
  r.body = error_body(e);
  return r;
}

void GenerationSink::on_event(ChoiceEvent e) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.events.push_back(std::move(e));
    wake = !std::exchange(woken_, true);
  }
  if (wake) wake_();
}

void GenerationSink::on_end(JobEnd e) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.end = std::move(e);
    wake = !std::exchange(woken_, true);
  }
  if (wake) wake_();
}

void GenerationSink::take(Batch& into) {
  into.events.clear();
  into.end.reset();
  std::lock_guard<std::mutex> lock(mu_);
  woken_ = false;
  into.events.swap(pending_.events);
  into.end.swap(pending_.end);
}

ServeApi::ServeApi(ServeConfig c, const Tokenizer& tok, int64_t vocab, ServeQueue& q,
                   ServeMetrics& m)
    : c_(std::move(c)), keys_(c_.api_keys), tok_(tok), vocab_(vocab), q_(q), m_(m) {}

HttpReply ServeApi::ready() const {
  const ServeStatus s = q_.status();
  if (s.phase == ServePhase::Loading)
    return json_reply(503, {{"status", "loading"},
                            {"message", "the pipeline's stages are loading their layers"}});
  if (s.phase == ServePhase::Stopping)
    return json_reply(503, {{"status", "stopping"}, {"message", "the server is shutting down"}});
  if (!s.not_ready.empty())
    return json_reply(503, {{"status", "unreachable"}, {"message", s.not_ready}});
  return json_reply(200, {{"status", "ready"}, {"running", s.running}, {"waiting", s.waiting}});
}

HttpReply ServeApi::models(std::string_view id) const {
  const Json model = {
      {"id", c_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "rwkvpp"}};
  if (id.empty()) return json_reply(200, {{"object", "list"}, {"data", Json::array({model})}});
  if (id != c_.model_name)
    return error_reply(ApiError(404, fmt::format("The model '{}' does not exist", id), "model",
                                "model_not_found"));
  return json_reply(200, model);
}

std::variant<HttpReply, StartedGeneration> ServeApi::handle(const HttpRequestView& r,
                                                            std::function<void()> wake) {
  try {
    std::string_view path = r.target.substr(0, r.target.find('?'));
    const bool get = r.method == "GET", post = r.method == "POST";
    if (path == "/health" && get) return json_reply(200, {{"status", "ok"}});
    if (path == "/ready" && get) return ready();
    if (path == "/metrics" && get) {
      HttpReply m;
      m.content_type = "text/plain; version=0.0.4; charset=utf-8";
      m.body = m_.render();
      return m;
    }
    if (path.substr(0, 4) == "/v1/") {
      if (!keys_.allows(r.authorization)) {
        HttpReply e = error_reply(ApiError(401,
                                           keys_.enabled() && r.authorization.empty()
                                               ? "missing API key: send 'Authorization: Bearer KEY'"
                                               : "incorrect API key",
                                           {}, "invalid_api_key"));
        e.headers.emplace_back("WWW-Authenticate", "Bearer");
        return e;
      }
      if (path == "/v1/models" && get) return models({});
      if (path.substr(0, 11) == "/v1/models/" && get) return models(path.substr(11));
      if (path == "/v1/completions" && post)
        return generate(r, Endpoint::Completions, std::move(wake));
      if (path == "/v1/chat/completions" && post)
        return generate(r, Endpoint::ChatCompletions, std::move(wake));
    }
    for (std::string_view known :
         {"/health", "/ready", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"})
      if (path == known)
        return error_reply(ApiError(405, fmt::format("{} does not take {}", path, r.method), {},
                                    "method_not_allowed"));
    return error_reply(
        ApiError(404, fmt::format("no route {} {}", r.method, path), {}, "not_found"));
  } catch (const ApiError& e) {
    return error_reply(e);
  } catch (const std::exception& e) {
    return error_reply(ApiError(500, fmt::format("internal error: {}", e.what()), {},
                                "internal_error", "server_error"));
  }
}

std::shared_ptr<Job> ServeApi::make_job(const GenerationRequest& g) {
  auto job = std::make_shared<Job>();
  std::vector<std::vector<int32_t>> prompts;
  std::vector<size_t> boundaries;
  if (g.endpoint == Endpoint::ChatCompletions) {
    prompts.push_back(tok_.encode(chat_prompt(g.messages)));
    boundaries = message_boundaries(tok_, g.messages, prompts.back());
  } else {
    for (size_t p = 0; p < g.prompts.size(); ++p) {
      const std::string param = g.prompts.size() == 1 ? "prompt" : fmt::format("prompt[{}]", p);
      const PromptInput& in = g.prompts[p];
      if (in.is_ids)
        for (int32_t id : in.ids)
          if (id >= vocab_)
            throw ApiError(400,
                           fmt::format("{}: token id {} is out of range (the model has {} ids)",
                                       param, id, vocab_),
                           param);
      prompts.push_back(in.is_ids ? in.ids : tok_.encode(in.text));
    }
  }
  for (size_t p = 0; p < prompts.size(); ++p) {
    if (int64_t(prompts[p].size()) > c_.max_prompt_tokens)
      throw ApiError(
          400,
          fmt::format(
              "the prompt has {} tokens; this server takes at most {} (--max-prompt-tokens)",
              prompts[p].size(), c_.max_prompt_tokens),
          g.endpoint == Endpoint::ChatCompletions ? "messages" : "prompt",
          "context_length_exceeded");
    if (prompts[p].empty()) throw ApiError(400, "the prompt encodes to no tokens", "prompt");
  }
  // Choice i of prompt p uses seed + (p * n + i): the same request gives the same choices.
  const uint64_t seed = g.has_seed ? g.sampling.seed : random_u64();
  for (size_t p = 0; p < prompts.size(); ++p)
    for (int i = 0; i < g.n; ++i)
      job->choices.push_back(
          {prompts[p], seed + uint64_t(p * size_t(g.n) + size_t(i)), boundaries});
  TextOptions& t = job->text;
  t.sampling = g.sampling;
  t.max_tokens = g.max_tokens >= 0
                     ? g.max_tokens
                     : std::min(c_.limits.max_tokens, g.endpoint == Endpoint::ChatCompletions
                                                          ? c_.chat_default_max_tokens
                                                          : c_.default_max_tokens);
  t.stop = g.stop;
  if (g.endpoint == Endpoint::ChatCompletions)
    for (const std::string& s : chat_stop_strings())
      if (std::find(t.stop.begin(), t.stop.end(), s) == t.stop.end()) t.stop.push_back(s);
  t.stop_ids = c_.stop_ids;
  t.logprobs = g.logprobs;
  job->timeout_s = c_.request_timeout_s;
  return job;
}

std::variant<HttpReply, StartedGeneration> ServeApi::generate(const HttpRequestView& r, Endpoint ep,
                                                              std::function<void()> wake) {
  const GenerationRequest g = parse_generation_request(r.body, ep, c_.limits);
  if (g.model != c_.model_name)
    throw ApiError(404,
                   fmt::format("The model '{}' does not exist (this server serves '{}')", g.model,
                               c_.model_name),
                   "model", "model_not_found");
  std::shared_ptr<Job> job = make_job(g);
  auto sink = std::make_shared<GenerationSink>(std::move(wake));
  job->sink = sink;
  const int choices = int(job->choices.size());
  switch (q_.submit(job)) {
    case Admission::Queued:
      break;
    case Admission::QueueFull: {
      HttpReply e =
          error_reply(ApiError(429, "too many requests are waiting (--max-waiting); retry shortly",
                               {}, "rate_limit_exceeded", "rate_limit_error"));
      e.headers.emplace_back("Retry-After", "1");
      return e;
    }
    case Admission::NotServing:
      throw ApiError(503,
                     q_.status().phase == ServePhase::Loading
                         ? "the model is still loading; retry shortly"
                         : "the server is shutting down",
                     {}, "unavailable", "server_error");
  }
  StartedGeneration s;
  s.sink = std::move(sink);
  s.job_id = job->id;
  s.meta.endpoint = ep;
  s.meta.id = fmt::format("{}-{:016x}", ep == Endpoint::ChatCompletions ? "chatcmpl" : "cmpl",
                          random_u64());
  s.meta.model = c_.model_name;
  s.meta.fingerprint = c_.fingerprint;
  s.meta.created = int64_t(std::time(nullptr));
  s.meta.choices = choices;
  s.meta.stream = g.stream;
  s.meta.include_usage = g.include_usage;
  s.meta.logprobs = g.logprobs;
  return s;
}

}  // namespace rwkvpp
