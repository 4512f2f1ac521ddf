// The routes of `rwkvpp serve`, independent of the HTTP library: a request (method, path,
// Authorization header, body) becomes either a whole reply or a started generation whose output
// arrives through a GenerationSink. Runs on the HTTP threads; reaches the engine only through
// the ServeQueue.
//
//   GET  /health               200 while the process is up (also while loading)
//   GET  /ready                200 when serving; 503 while loading, stopping, or while a stage
//                              has been silent for --ready-silence seconds (naming it)
//   GET  /metrics              Prometheus text (metrics.h)
//   GET  /v1/models[/ID]       the one served model
//   POST /v1/completions       openai_request.h / openai_response.h
//   POST /v1/chat/completions
// With API keys configured, every /v1/ route needs "Authorization: Bearer KEY" (401 otherwise;
// keys compared in constant time); /health, /ready and /metrics stay open (the server binds
// 127.0.0.1 unless told otherwise).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "coordinator/serve/serve_loop.h"

namespace rwkvpp {

// Bearer-token check: true when no key is configured, or `authorization` is "Bearer K" for one
// of the keys. Every key is compared, each in time that depends only on the lengths.
class ApiKeys {
 public:
  explicit ApiKeys(std::vector<std::string> keys) : keys_(std::move(keys)) {}
  bool enabled() const { return !keys_.empty(); }
  bool allows(std::string_view authorization) const;

 private:
  std::vector<std::string> keys_;
};

// Compares two strings in time that depends only on their lengths, not on where they differ.
bool constant_time_equal(std::string_view a, std::string_view b);

struct ServeConfig {
  std::string model_name;   // what clients put in "model"
  std::string fingerprint;  // system_fingerprint: the model's and the pipeline's numerics
  std::vector<std::string> api_keys;
  RequestLimits limits;
  int max_prompt_tokens = 16384;
  int default_max_tokens = 16;  // /v1/completions without max_tokens (OpenAI's default)
  int chat_default_max_tokens = 1024;
  double request_timeout_s = 600;
  std::vector<int32_t> stop_ids;  // the model's end-of-text id, where its tokenizer has one
};

// A whole HTTP reply.
struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra, e.g. Retry-After
};

// A job's output on its way from the engine thread to the HTTP session that serves it.
class GenerationSink : public JobSink {
 public:
  // `wake` is called (from the engine thread, outside any lock) when output arrives and the
  // session has taken everything before; it must only schedule the session's work.
  explicit GenerationSink(std::function<void()> wake) : wake_(std::move(wake)) {}
  void on_event(ChoiceEvent e) override;
  void on_end(JobEnd e) override;
  struct Batch {
    std::vector<ChoiceEvent> events;
    std::optional<JobEnd> end;
  };
  // HTTP side: what arrived since the last take, into `into` (emptied first; the two event
  // vectors trade places, so neither side allocates per token). The next arrival wakes the
  // session again.
  void take(Batch& into);

 private:
  std::mutex mu_;
  Batch pending_;
  bool woken_ = false;
  std::function<void()> wake_;
};

struct StartedGeneration {
  std::shared_ptr<GenerationSink> sink;
  ResponseMeta meta;
  uint64_t job_id = 0;
};

struct HttpRequestView {
  std::string_view method, target, authorization, body;
};

class ServeApi {
 public:
  ServeApi(ServeConfig c, const Tokenizer& tok, int64_t vocab, ServeQueue& q, ServeMetrics& m);
  // Never throws: every failure is an error reply. `wake` goes to the generation's sink.
  std::variant<HttpReply, StartedGeneration> handle(const HttpRequestView& r,
                                                    std::function<void()> wake);
  void cancel(uint64_t job_id) { q_.cancel(job_id, CancelReason::Disconnect); }
  const ServeConfig& config() const { return c_; }
  // Set once the pipeline is up, before the queue opens (ServeQueue::set_phase(Serving), whose
  // lock orders it before any generation reads it).
  void set_fingerprint(std::string f) { c_.fingerprint = std::move(f); }

 private:
  std::variant<HttpReply, StartedGeneration> generate(const HttpRequestView& r, Endpoint ep,
                                                      std::function<void()> wake);
  std::shared_ptr<Job> make_job(const GenerationRequest& g);
  HttpReply ready() const;
  HttpReply models(std::string_view id) const;

  ServeConfig c_;
  ApiKeys keys_;
  const Tokenizer& tok_;
  int64_t vocab_;
  ServeQueue& q_;
  ServeMetrics& m_;
};

// An error reply: the OpenAI error object with the error's status.
HttpReply error_reply(const ApiError& e);

}  // namespace rwkvpp
