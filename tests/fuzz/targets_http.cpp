// Fuzz harness of the server's front (coordinator/serve/): raw bytes from a client, parsed by
// Beast's request parser with the server's limits, then routed by ServeApi::handle as an HTTP
// session would (every route, the OpenAI bodies through parse_generation_request, tokenization,
// the job handed to the engine queue). No socket and no engine: the harness checks what the
// client would get back and what the engine would be given.
#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "coordinator/serve/api.h"
#include "coordinator/serve/http_server.h"
#include "coordinator/serve/metrics.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "fuzz/targets.h"

namespace rwkvpp::fuzz {

namespace {

namespace http = boost::beast::http;

std::string_view sv(boost::beast::string_view s) { return {s.data(), s.size()}; }

// The reply a client gets: a real status, and JSON bodies that parse; an error is an OpenAI
// error object.
void check_reply(const HttpReply& r) {
  fuzz_check(r.status >= 200 && r.status < 600, "a reply with an impossible status");
  if (r.content_type != "application/json") return;
  const auto j = nlohmann::json::parse(r.body, nullptr, false);
  fuzz_check(!j.is_discarded(), "a JSON reply that does not parse");
  if (r.status >= 400)
    fuzz_check(j.is_object() && j.contains("error") && j["error"].is_object() &&
                   j["error"].contains("message") && j["error"]["message"].is_string(),
               "an error reply without an OpenAI error object");
}

// What the engine is given is within the server's limits and the model's vocabulary.
void check_job(const Job& job, const ServeConfig& c, int64_t vocab) {
  fuzz_check(!job.choices.empty(), "a job without choices");
  fuzz_check(int(job.choices.size()) <= c.limits.max_choices, "more choices than --max-n");
  fuzz_check(job.text.max_tokens >= 0 && job.text.max_tokens <= c.limits.max_tokens,
             "max_tokens beyond --max-tokens-limit");
  for (const Job::Choice& ch : job.choices) {
    fuzz_check(!ch.prompt.empty(), "an empty prompt reached the engine");
    fuzz_check(int(ch.prompt.size()) <= c.max_prompt_tokens, "a prompt over --max-prompt-tokens");
    for (int32_t id : ch.prompt) fuzz_check(id >= 0 && id < vocab, "a token id out of the vocab");
    for (size_t b : ch.boundaries) fuzz_check(b < ch.prompt.size(), "a boundary past the prompt");
  }
}

}  // namespace

void run_http_api(Bytes b) {
  http::request_parser<http::string_body> p;
  p.body_limit(HttpOptions{}.max_body_bytes);
  p.eager(true);
  boost::beast::error_code ec;
  size_t used = 0;
  while (!ec && !p.is_done() && used < b.size()) {
    const size_t n = p.put(boost::asio::buffer(b.data() + used, b.size() - used), ec);
    if (n == 0 && !ec) break;  // needs more bytes than there are
    used += n;
  }
  if (ec || !p.is_done()) return;  // the session answers 400/413 or waits: nothing routed
  const auto& req = p.get();

  static const auto tok = make_bytes_tokenizer();
  ServeConfig cfg;
  cfg.model_name = "fuzz";
  cfg.fingerprint = "rwkvpp-fuzz";
  cfg.max_prompt_tokens = 4096;
  ServeQueue queue(2);
  queue.set_phase(ServePhase::Serving);
  ServeMetrics metrics;
  ServeApi api(cfg, *tok, tok->vocab_size(), queue, metrics);
  const HttpRequestView v{sv(req.method_string()), sv(req.target()),
                          sv(req[http::field::authorization]), req.body()};
  auto result = api.handle(v, [] {});
  if (const auto* r = std::get_if<HttpReply>(&result)) {
    check_reply(*r);
    fuzz_check(queue.take().jobs.empty(), "a reply, and a job queued too");
    return;
  }
  const auto& g = std::get<StartedGeneration>(result);
  fuzz_check(g.sink != nullptr, "a generation without a sink");
  auto taken = queue.take();
  fuzz_check(taken.jobs.size() == 1, "a started generation queued no job, or several");
  check_job(*taken.jobs[0], api.config(), tok->vocab_size());
}

Seeds seeds_http_api() {
  auto post = [](const std::string& path, const std::string& body) {
    return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  auto get = [](const std::string& path) {
    return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  };
  return {
      {"completion",
       post("/v1/completions",
            R"({"model":"fuzz","prompt":"Once upon a time","max_tokens":8,"temperature":0.7,)"
            R"("top_p":0.9,"seed":7,"stop":["\n"],"logprobs":0})")},
      {"completion-ids", post("/v1/completions",
                              R"({"model":"fuzz","prompt":[[72,105],[33]],"n":2,"max_tokens":4})")},
      {"chat-stream",
       post("/v1/chat/completions",
            R"({"model":"fuzz","messages":[{"role":"system","content":"Be brief."},)"
            R"({"role":"user","content":[{"type":"text","text":"Hi"}]}],"stream":true,)"
            R"("stream_options":{"include_usage":true},"max_completion_tokens":16,)"
            R"("presence_penalty":0.5,"frequency_penalty":0.2,"top_k":40,"min_p":0.05})")},
      {"chat-refused", post("/v1/chat/completions",
                            R"({"model":"fuzz","messages":[{"role":"user","content":"x"}],)"
                            R"("tools":[{"type":"function"}],"logit_bias":{"1":2}})")},
      {"models", get("/v1/models")},
      {"model", get("/v1/models/fuzz")},
      {"metrics-ready", get("/metrics")},
      {"health-keepalive", "GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n"
                           "Authorization: Bearer sk-x\r\n\r\n"},
      {"chunked", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "10\r\n{\"model\":\"fuzz\",\r\nf\r\n\"prompt\":\"abc\"}\r\n0\r\n\r\n"},
  };
}

}  // namespace rwkvpp::fuzz
