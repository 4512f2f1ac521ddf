// `rwkvpp serve`: an OpenAI-compatible HTTP API on the pipeline (docs/serve.md). Every rank runs
// the pipeline as other commands do (run_cluster); rank 0 also binds the HTTP port before the
// stages load (so /health and /ready answer while they do), then runs the ServeLoop on its main
// thread while the HTTP threads serve connections. SIGTERM/SIGINT: stop accepting, let running
// generations finish for --shutdown-grace seconds, cut the rest with a final error event, shut
// the pipeline down, exit 0.
#include <fmt/format.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <memory>
#include <sstream>

#include "coordinator/cluster.h"
#include "coordinator/commands.h"
#include "coordinator/partition.h"
#include "coordinator/serve/http_server.h"
#include "coordinator/signals.h"
#include "shards/model_format.h"
#include "shards/model_reader.h"

namespace rwkvpp {

namespace {

struct ServeArgs {
  ClusterOptions cluster;
  std::string tokenizer, served_name;
  HttpOptions http;
  std::vector<std::string> api_keys;
  ServeConfig config;
  int max_waiting = 1024;
  ServeLoopOptions loop;
  double state_cache_mb = 1024;
};

// The model's name as clients give it: its directory's name.
std::string default_model_name(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path.size() > 8 && path.compare(path.size() - 8, 8, "/model.h5") == 0)
    path.resize(path.size() - 8);
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::vector<std::string> keys_from_env() {
  std::vector<std::string> keys;
  const char* e = std::getenv("RWKVPP_API_KEYS");
  if (!e) return keys;
  std::stringstream ss(e);
  std::string k;
  while (std::getline(ss, k, ','))
    if (!k.empty()) keys.push_back(k);
  return keys;
}

// True for addresses only this machine can reach: 127.0.0.0/8, ::1, localhost.
bool loopback_host(const std::string& h) {
  return h.rfind("127.", 0) == 0 || h == "::1" || h == "[::1]" || h == "localhost";
}

void check_args(const ServeArgs& a) {
  if (a.http.threads < 1) fail("--http-threads must be at least 1 (got {})", a.http.threads);
  if (a.config.limits.max_choices < 1)
    fail("--max-n must be at least 1 (got {})", a.config.limits.max_choices);
  if (a.config.limits.max_tokens < 1) fail("--max-tokens-limit must be at least 1");
  if (a.config.max_prompt_tokens < 1) fail("--max-prompt-tokens must be at least 1");
  if (a.max_waiting < 0) fail("--max-waiting must not be negative");
  if (!(a.state_cache_mb >= 0)) fail("--state-cache-mb must not be negative");
  for (const std::string& k : a.api_keys)
    if (k.empty()) fail("--api-key must not be empty");
}

int serve(ServeArgs& a) {
  check_args(a);
  std::signal(SIGPIPE, SIG_IGN);  // a client that closes its socket must not end the server
  install_stop_handlers();        // run_cluster makes the worker ranks ignore SIGTERM
  auto tok = tokenizer_for(a.cluster.model, a.tokenizer);
  ModelReader reader(a.cluster.model);
  const int64_t vocab = reader.config().vocab_size;
  ServeConfig cfg = a.config;
  cfg.api_keys = a.api_keys;
  for (auto& k : keys_from_env()) cfg.api_keys.push_back(k);
  if (cfg.api_keys.empty() && !loopback_host(a.http.host))
    fmt::print(stderr,
               "rwkvpp serve: warning: listening on {} without an API key: anyone who can reach "
               "this address can use the model (give --api-key or RWKVPP_API_KEYS)\n",
               a.http.host);
  cfg.model_name = a.served_name.empty() ? default_model_name(a.cluster.model) : a.served_name;
  cfg.stop_ids = end_of_text_ids(*tok);
  const uint64_t model_fp = reader.fingerprint();
  // The state cache's entries get state slots of their own on every stage (planned into each
  // stage's memory like the running sequences' slots).
  ServeLoopOptions loop = a.loop;
  const ModelConfig& mc = reader.config();
  loop.state_cache_bytes = uint64_t(a.state_cache_mb * 1024 * 1024);
  loop.state_cache_entries =
      state_cache_entries(loop.state_cache_bytes, uint64_t(mc.n_layer) * layer_state_bytes(mc));

  ServeMetrics metrics;
  ServeQueue queue(a.max_waiting);
  std::unique_ptr<ServeApi> api;
  std::unique_ptr<HttpServer> http;
  ClusterOptions cluster = a.cluster;
  cluster.extra_slots = int(loop.state_cache_entries);
  cluster.on_coordinator_start = [&] {
    api = std::make_unique<ServeApi>(cfg, *tok, vocab, queue, metrics);
    http = std::make_unique<HttpServer>(a.http, *api, metrics);
    http->start();
    fmt::print(
        stderr,
        "rwkvpp serve: listening on http://{}:{} (model '{}', pid {}){}; loading the pipeline\n",
        http->host(), http->port(), cfg.model_name, getpid(),
        cfg.api_keys.empty() ? "" : ", API keys required");
    std::fflush(stderr);
  };
  const int code = run_cluster(cluster, [&](Engine& e) {
    const PipelineNumerics& num = e.numerics();
    // Set before the queue opens (set_phase below): no generation reads it earlier.
    api->set_fingerprint(system_fingerprint(model_fp, num.dtype, num.layers));
    fmt::print(stderr,
               "rwkvpp serve: ready: {} stage(s) ({}), {} slots for requests, {} for the state "
               "cache ({:.0f} MiB)\n",
               e.stage_ranks().size(), num.layers,
               e.limits().max_slots - int(loop.state_cache_entries), loop.state_cache_entries,
               double(loop.state_cache_bytes) / (1 << 20));
    std::fflush(stderr);
    ServeLoop serve_loop(e, *tok, queue, metrics, loop);
    bool told = false;
    serve_loop.run([&] {
      if (!stop_requested()) return false;
      if (!told) {
        told = true;
        http->stop_accepting();
        fmt::print(stderr,
                   "rwkvpp serve: {}: not accepting; running requests get {:.1f} s to finish\n",
                   stop_signal_name(stop_signal()), a.loop.shutdown_grace_s);
        std::fflush(stderr);
      }
      return true;
    });
    return 0;
  });
  if (http) {
    http->shutdown(std::chrono::milliseconds(2000));  // the last chunks go out
    fmt::print(stderr, "rwkvpp serve: stopped\n");
  }
  return code;
}

}  // namespace

void add_serve_command(CLI::App& app, Action& run) {
  auto a = std::make_shared<ServeArgs>();
  auto* c = app.add_subcommand(
      "serve",
      "Serve the model over an OpenAI-compatible HTTP API (/v1/completions, "
      "/v1/chat/completions, /v1/models, /health, /ready, /metrics). Alone or "
      "under mpirun -np K (rank 0 serves HTTP and coordinates). See docs/serve.md.");
  add_cluster_options(c, a->cluster);
  c->add_option("--tokenizer", a->tokenizer,
                "tokenizer file or 'bytes' (default: the model's embedded one)");
  c->add_option("--host", a->http.host, "address to listen on (127.0.0.1: this machine only)")
      ->capture_default_str();
  c->add_option("--port", a->http.port, "TCP port (0: any free one; the chosen port is printed)")
      ->capture_default_str();
  c->add_option("--served-model-name", a->served_name,
                "the model's name in requests (default: its directory's name)");
  c->add_option("--api-key", a->api_keys,
                "require 'Authorization: Bearer KEY' on /v1/ routes (repeatable; also "
                "RWKVPP_API_KEYS, comma separated)");
  c->add_option("--http-threads", a->http.threads, "threads serving HTTP connections")
      ->capture_default_str();
  c->add_option("--max-body-bytes", a->http.max_body_bytes, "largest request body (413 above)")
      ->capture_default_str();
  c->add_option("--max-prompt-tokens", a->config.max_prompt_tokens,
                "longest prompt, in tokens (400 above)")
      ->capture_default_str();
  c->add_option("--max-tokens-limit", a->config.limits.max_tokens,
                "largest max_tokens a request may ask for (400 above)")
      ->capture_default_str();
  c->add_option("--max-n", a->config.limits.max_choices,
                "most choices per request (n times prompts)")
      ->capture_default_str();
  c->add_option("--max-waiting", a->max_waiting,
                "requests that may wait for slots (429 with Retry-After beyond)")
      ->capture_default_str();
  c->add_option("--idle-timeout", a->http.idle_timeout_s,
                "seconds a connection may stay silent while sending a request or between requests, "
                "or not read a "
                "reply")
      ->capture_default_str();
  c->add_option("--request-timeout", a->config.request_timeout_s,
                "seconds a generation may take from its arrival, waiting included (0: no limit)")
      ->capture_default_str();
  c->add_option("--shutdown-grace", a->loop.shutdown_grace_s,
                "after SIGTERM, seconds running generations may go on before they are cut")
      ->capture_default_str();
  c->add_option("--state-cache-mb", a->state_cache_mb,
                "MiB of recurrent states kept between requests at prompt prefixes (every stage "
                "holds its layers' part; 0: no cache); a prompt that starts like a kept one reads "
                "only the rest")
      ->capture_default_str();
  c->add_option("--ready-silence", a->loop.ready_silence_s,
                "/ready answers 503 when a stage has not been heard from for this many seconds")
      ->capture_default_str();
  c->callback([a, &run] { run = [a] { return serve(*a); }; });
}

}  // namespace rwkvpp
