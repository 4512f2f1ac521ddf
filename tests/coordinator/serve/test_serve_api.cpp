// The routes of rwkvpp serve without a pipeline (coordinator/serve/api.h): API keys, /health and
// /ready by phase, /v1/models, errors for unknown routes, methods, models, long prompts and
// token ids, 429 when the queue is full; the jobs a request becomes (choices, seeds, chat stop
// strings); and the Prometheus text of the metrics.
#include <nlohmann/json.hpp>

#include "catch.h"
#include "coordinator/serve/api.h"
#include "coordinator/tokenizer/tokenizer.h"

using namespace rwkvpp;
using nlohmann::json;

namespace {

struct Fixture {
  std::unique_ptr<Tokenizer> tok = make_bytes_tokenizer();
  ServeQueue queue{2};
  ServeMetrics metrics;
  ServeConfig cfg;
  std::unique_ptr<ServeApi> api;
  explicit Fixture(std::vector<std::string> keys = {}) {
    cfg.model_name = "tiny";
    cfg.api_keys = std::move(keys);
    cfg.max_prompt_tokens = 24;
    api = std::make_unique<ServeApi>(cfg, *tok, 256, queue, metrics);
  }
  // A request that must get a whole reply.
  HttpReply reply(std::string_view method, std::string_view target, std::string_view body = {},
                  std::string_view auth = {}) {
    auto r = api->handle({method, target, auth, body}, [] {});
    REQUIRE(std::holds_alternative<HttpReply>(r));
    return std::get<HttpReply>(r);
  }
};

std::string code_of(const HttpReply& r) {
  return json::parse(r.body)["error"]["code"].get<std::string>();
}

}  // namespace

TEST_CASE("constant-time comparison and Bearer keys", "[serve]") {
  CHECK(constant_time_equal("secret", "secret"));
  CHECK_FALSE(constant_time_equal("secret", "secreT"));
  CHECK_FALSE(constant_time_equal("secret", "secret2"));
  CHECK_FALSE(constant_time_equal("", "x"));
  CHECK(constant_time_equal("", ""));
  ApiKeys none({});
  CHECK(none.allows(""));
  ApiKeys keys({"k1", "key-two"});
  CHECK(keys.allows("Bearer k1"));
  CHECK(keys.allows("Bearer key-two"));
  for (const char* bad :
       {"", "Bearer", "Bearer ", "Bearer k", "Bearer k1 ", "bearer k1", "k1", "Basic k1"}) {
    INFO(bad);
    CHECK_FALSE(keys.allows(bad));
  }
}

TEST_CASE("/health always, /ready by phase, /metrics, /v1/models", "[serve]") {
  Fixture f;
  CHECK(f.reply("GET", "/health").status == 200);
  HttpReply loading = f.reply("GET", "/ready");
  CHECK(loading.status == 503);
  CHECK(json::parse(loading.body)["status"] == "loading");
  f.queue.set_phase(ServePhase::Serving);
  CHECK(f.reply("GET", "/ready").status == 200);
  f.queue.publish("stage 2 (rank 2, layers 3-3) has not been heard from for 6.0 s", 0);
  HttpReply silent = f.reply("GET", "/ready");
  CHECK(silent.status == 503);
  CHECK(json::parse(silent.body)["message"].get<std::string>().find("stage 2 (rank 2") == 0);
  f.queue.publish("", 0);
  f.queue.set_phase(ServePhase::Stopping);
  CHECK(json::parse(f.reply("GET", "/ready").body)["status"] == "stopping");
  HttpReply metrics = f.reply("GET", "/metrics");
  CHECK(metrics.content_type.rfind("text/plain", 0) == 0);
  CHECK(metrics.body.find("rwkvpp_requests_running 0") != std::string::npos);
  json models = json::parse(f.reply("GET", "/v1/models").body);
  CHECK(models["object"] == "list");
  CHECK(models["data"][0]["id"] == "tiny");
  CHECK(json::parse(f.reply("GET", "/v1/models/tiny").body)["object"] == "model");
  CHECK(f.reply("GET", "/v1/models/other").status == 404);
  CHECK(f.reply("GET", "/v1/models?x=1").status == 200);  // the query is not part of the route
}

TEST_CASE("unknown routes are 404, wrong methods 405, with error objects", "[serve]") {
  Fixture f;
  CHECK(f.reply("GET", "/nope").status == 404);
  CHECK(code_of(f.reply("GET", "/v1/embeddings")) == "not_found");
  CHECK(f.reply("GET", "/v1/completions").status == 405);
  CHECK(f.reply("POST", "/health").status == 405);
}

TEST_CASE("with keys, every /v1/ route needs the Bearer key; the others stay open", "[serve]") {
  Fixture f({"sk-test"});
  f.queue.set_phase(ServePhase::Serving);
  HttpReply missing = f.reply("GET", "/v1/models");
  CHECK(missing.status == 401);
  CHECK(code_of(missing) == "invalid_api_key");
  CHECK(missing.headers ==
        std::vector<std::pair<std::string, std::string>>{{"WWW-Authenticate", "Bearer"}});
  CHECK(f.reply("GET", "/v1/models", {}, "Bearer wrong").status == 401);
  CHECK(f.reply("POST", "/v1/completions", R"({"model": "tiny", "prompt": "x"})").status == 401);
  CHECK(f.reply("GET", "/v1/models", {}, "Bearer sk-test").status == 200);
  CHECK(f.reply("GET", "/health").status == 200);
  CHECK(f.reply("GET", "/metrics").status == 200);
}

TEST_CASE("generation requests: refused while loading, unknown model, limits, queue full",
          "[serve]") {
  Fixture f;
  const std::string ok = R"({"model": "tiny", "prompt": "abc"})";
  HttpReply loading = f.reply("POST", "/v1/completions", ok);
  CHECK(loading.status == 503);
  CHECK(json::parse(loading.body)["error"]["message"].get<std::string>().find("loading") !=
        std::string::npos);
  f.queue.set_phase(ServePhase::Serving);
  HttpReply model = f.reply("POST", "/v1/completions", R"({"model": "gpt-4", "prompt": "abc"})");
  CHECK(model.status == 404);
  CHECK(code_of(model) == "model_not_found");
  CHECK(code_of(f.reply("POST", "/v1/completions",
                        R"({"model": "tiny", "prompt": "twenty-five bytes of text"})")) ==
        "context_length_exceeded");
  HttpReply id = f.reply("POST", "/v1/completions", R"({"model": "tiny", "prompt": [1, 256]})");
  CHECK(id.status == 400);
  CHECK(json::parse(id.body)["error"]["param"] == "prompt");
  CHECK(f.reply("POST", "/v1/completions", "{oops").status == 400);
  // The queue takes 2; the third waits for nothing and is told to retry.
  for (int i = 0; i < 2; ++i)
    CHECK(std::holds_alternative<StartedGeneration>(
        f.api->handle({"POST", "/v1/completions", {}, ok}, [] {})));
  HttpReply full = f.reply("POST", "/v1/completions", ok);
  CHECK(full.status == 429);
  CHECK(code_of(full) == "rate_limit_exceeded");
  CHECK(full.headers == std::vector<std::pair<std::string, std::string>>{{"Retry-After", "1"}});
}

TEST_CASE("a request becomes a job: choices, seeds, defaults and chat stop strings", "[serve]") {
  Fixture f;
  f.queue.set_phase(ServePhase::Serving);
  auto started =
      f.api->handle({"POST",
                     "/v1/chat/completions",
                     {},
                     R"({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                    "n": 3, "seed": 40, "stop": "END", "stream": true})"},
                    [] {});
  REQUIRE(std::holds_alternative<StartedGeneration>(started));
  const StartedGeneration& g = std::get<StartedGeneration>(started);
  CHECK(g.meta.stream);
  CHECK(g.meta.choices == 3);
  CHECK(g.meta.id.rfind("chatcmpl-", 0) == 0);
  ServeQueue::Taken t = f.queue.take();
  REQUIRE(t.jobs.size() == 1);
  const Job& job = *t.jobs[0];
  CHECK(job.id == g.job_id);
  REQUIRE(job.choices.size() == 3);
  const std::string prompt = "User: hi\n\nAssistant:";
  for (int i = 0; i < 3; ++i) {
    CHECK(job.choices[size_t(i)].seed == 40u + uint64_t(i));  // choice i uses seed + i
    CHECK(job.choices[size_t(i)].prompt == std::vector<int32_t>(prompt.begin(), prompt.end()));
  }
  CHECK(job.text.stop == std::vector<std::string>{"END", "\n\n", "\nUser:"});
  CHECK(job.text.max_tokens == f.cfg.chat_default_max_tokens);
  CHECK(job.text.sampling.temperature == 1.0f);
  CHECK(job.choices[0].boundaries.empty());  // one message: no message ends inside the prompt

  f.api->handle({"POST",
                 "/v1/completions",
                 {},
                 R"({"model": "tiny", "prompt": ["a", "b"], "n": 2, "seed": 7})"},
                [] {});
  ServeQueue::Taken t2 = f.queue.take();
  REQUIRE(t2.jobs.size() == 1);
  const Job& two = *t2.jobs[0];
  REQUIRE(two.choices.size() == 4);  // prompt p, choice i: index p * n + i, seed 7 + index
  CHECK(two.choices[2].prompt == std::vector<int32_t>{'b'});
  CHECK(two.choices[3].seed == 10u);
  CHECK(two.text.max_tokens == 16);  // OpenAI's default for completions
  CHECK(two.text.stop.empty());
}

TEST_CASE("a chat job says where its first message and all but its last end (state cache)",
          "[serve][state_cache]") {
  auto tok = make_bytes_tokenizer();
  ServeQueue queue(2);
  ServeMetrics metrics;
  ServeConfig cfg;
  cfg.model_name = "tiny";
  ServeApi api(cfg, *tok, 256, queue, metrics);
  queue.set_phase(ServePhase::Serving);
  api.handle({"POST",
              "/v1/chat/completions",
              {},
              R"({"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."},
                     {"role": "user", "content": "Why?"}]})"},
             [] {});
  ServeQueue::Taken t3 = queue.take();
  REQUIRE(t3.jobs.size() == 1);
  CHECK(t3.jobs[0]->choices[0].boundaries ==
        std::vector<size_t>{
            std::string("System: Be brief.\n\n").size(),
            std::string("System: Be brief.\n\nUser: hi\n\nAssistant: Hello.\n\n").size()});
}

TEST_CASE("histograms are cumulative; the exposition names every series", "[serve]") {
  Histogram h({0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 5.0, 50.0}) h.observe(v);
  std::string out;
  h.render(out, "x_seconds", "help text");
  CHECK(out ==
        "# HELP x_seconds help text\n# TYPE x_seconds histogram\n"
        "x_seconds_bucket{le=\"0.1\"} 2\nx_seconds_bucket{le=\"1\"} 3\nx_seconds_bucket{le=\"10\"} "
        "4\n"
        "x_seconds_bucket{le=\"+Inf\"} 5\nx_seconds_sum 55.65\nx_seconds_count 5\n");
  ServeMetrics m;
  m.count_cancel(CancelReason::Disconnect);
  m.count_response(429);
  m.set_stages({StageMetrics{1, 1, 2, 4, 1.5, 0.25, 0.5, 10, 2}});
  const std::string text = m.render();
  for (const char* line :
       {"rwkvpp_requests_cancelled_total{reason=\"disconnect\"} 1",
        "rwkvpp_requests_cancelled_total{reason=\"shutdown\"} 0",
        "rwkvpp_http_responses_total{code=\"429\"} 1",
        "rwkvpp_stage_compute_seconds_total{stage=\"1\",rank=\"1\",layers=\"2-3\"} 1.5",
        "rwkvpp_stage_wait_seconds_total{stage=\"1\",rank=\"1\",layers=\"2-3\"} 0.25",
        "# TYPE rwkvpp_time_to_first_token_seconds histogram",
        "# TYPE rwkvpp_inter_token_latency_seconds histogram",
        "# TYPE rwkvpp_e2e_request_latency_seconds histogram", "rwkvpp_prompt_tokens_total 0",
        "rwkvpp_generation_tokens_total 0", "rwkvpp_state_cache_hits_total 0",
        "rwkvpp_state_cache_misses_total 0", "rwkvpp_state_cache_hit_tokens_total 0",
        "rwkvpp_state_cache_bytes 0", "rwkvpp_state_cache_evictions_total 0"}) {
    INFO(line);
    CHECK(text.find(std::string(line) + "\n") != std::string::npos);
  }
}
