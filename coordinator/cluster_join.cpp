// Worker daemons and the coordinator's --listen (see cluster_join.h).
#include "coordinator/cluster_join.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/limits.h"
#include "net/control/cluster_key.h"
#include "net/transports.h"
#include "worker/stage_rank.h"  // stretch_worker_timeout

namespace rwkvpp {

using json = nlohmann::json;

void add_listen_options(CLI::App* c, ClusterOptions& o) {
  auto* listen = c->add_option(
      "--listen", o.listen,
      "HOST:PORT: run a cluster of worker daemons instead of mpirun ranks: listen here for "
      "`rwkvpp worker --join HOST:PORT` (the UCX transport; needs --workers and --cluster-key)");
  c->add_option("--workers", o.workers, "with --listen: how many workers to wait for (the stages "
                                        "after this rank's own)")
      ->needs(listen);
  c->add_option("--cluster-key", o.cluster_key,
                "with --listen: the cluster key file (mode 0600; `rwkvpp keygen FILE` makes one); "
                "workers without it cannot join")
      ->needs(listen);
  c->add_option("--join-timeout", o.join_timeout_s,
                "with --listen: seconds to wait for every worker to join")
      ->needs(listen)
      ->capture_default_str();
  auto* standby = c->add_option(
      "--standby", o.standby,
      "with --listen: wait for this many more workers, kept joined and idle (nothing loaded); when a "
      "worker is lost, one takes its layers, every stage's state is restored from the snapshots and "
      "the tokens since them are replayed, and the job goes on (clients see a pause); with none left, "
      "the job ends as without --standby, unless --repartition (docs/cluster.md)");
  standby->needs(listen)->check(CLI::Range(0, 4096));
  c->add_flag("--repartition", o.repartition,
              "with --listen: when a worker is lost and no standby is left (or none was asked for), give "
              "its layers to the neighbouring stages if the memory their workers offered (--memory, or "
              "what their device has free) can hold them: they read those layers themselves, every "
              "stage's state is restored from the snapshots, the tokens since are replayed and the job "
              "goes on with one stage fewer; else the job ends naming the rank and the memory missing. "
              "Turns on the snapshots of --snapshot-tokens (docs/cluster.md)")
      ->needs(listen);
  c->add_option("--snapshot-tokens", o.snapshot_tokens,
                "with --standby or --repartition: every stage sends rank 0 the state of each sequence's "
                "layers every this many tokens of the sequence; a recovery replays at most about this "
                "many tokens per sequence (docs/cluster.md, the choice of the default)")
      ->needs(listen)
      ->check(CLI::Range(1, 1 << 30))
      ->capture_default_str();
}

std::unique_ptr<Transport> make_cluster_transport(const ClusterOptions& o) {
  if (o.listen.empty()) return make_transport(nullptr, nullptr);
#if !defined(RWKVPP_HAVE_UCX)
  fail("--listen {}: a cluster of worker daemons needs the UCX transport: this rwkvpp was built "
       "without UCX (install libucx-dev and rebuild)",
       o.listen);
#else
  if (o.workers < 1 || o.workers > 4096)
    fail("--listen {}: --workers {}; give how many `rwkvpp worker` processes join (1 to 4096)",
         o.listen, o.workers);
  if (o.cluster_key.empty())
    fail("--listen {}: needs --cluster-key FILE (`rwkvpp keygen FILE` makes one): without it "
         "anyone who reaches the port could join the pipeline",
         o.listen);
  if (!(o.join_timeout_s > 0 && o.join_timeout_s <= 1e6))
    fail("--join-timeout {}: a positive number of seconds", o.join_timeout_s);
  RendezvousConfig cfg;
  parse_host_port(o.listen, "--listen", cfg);
  cfg.rank = 0;
  if (o.standby < 0 || o.standby > 4096) fail("--standby {}: 0 to 4096", o.standby);
  cfg.size = o.workers + o.standby + 1;
  cfg.timeout = std::chrono::milliseconds(int64_t(std::llround(o.join_timeout_s * 1000)));
  cfg.key = load_cluster_key(o.cluster_key);
  std::string job = job_to_json(o);
  cfg.job.assign(job.begin(), job.end());
  fmt::print(stderr, "rwkvpp: waiting for {} worker(s){} at {} (rwkvpp worker --join {} --cluster-key ...)\n",
             o.workers, o.standby ? fmt::format(" and {} standby(s)", o.standby) : "", o.listen, o.listen);
  return make_ucx_transport(cfg);
#endif
}

std::string job_to_json(const ClusterOptions& o) {
  json j = {{"model", o.model},
            {"synthetic", o.synthetic},
            {"synthetic_seed", o.synthetic_seed},
            {"measure_floors", o.measure_floors},
            {"layers", o.layers},
            {"coordinator_only", o.coordinator_only},
            {"dtype", o.dtype},
            {"batch_invariant", o.batch_invariant},
            {"extra_slots", o.extra_slots},
            {"stats", o.stats},
            {"trace", o.trace},
            {"trace_steps", o.trace_steps},
            {"workers", o.workers},
            {"standby", o.standby},
            {"repartition", o.repartition},
            {"snapshot_tokens", o.snapshot_tokens},
            {"limits",
             {{"max_slots", o.limits.max_slots},
              {"max_batch", o.limits.max_batch},
              {"max_tokens", o.limits.max_tokens},
              {"chunk", o.limits.chunk},
              {"microbatches", o.limits.microbatches},
              {"max_logit_rows", o.limits.max_logit_rows}}}};
  return j.dump();
}

namespace {

template <typename T>
void take(const json& j, const char* key, T& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) fail("{}: no field '{}'", where, key);
  try {
    out = it->get<T>();
  } catch (const json::exception& e) {
    fail("{}: field '{}': {}", where, key, e.what());
  }
}

}  // namespace

void job_from_json(const std::string& text, ClusterOptions& o) {
  const std::string where = "the job from the coordinator";
  if (json_depth(text) > kMaxJsonDepth) fail("{}: JSON nested too deep", where);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not JSON: {}", where, e.what());
  }
  if (!j.is_object() || !j.contains("limits") || !j["limits"].is_object())
    fail("{}: not a job object (a coordinator of another rwkvpp version?)", where);
  take(j, "model", o.model, where);
  take(j, "synthetic", o.synthetic, where);
  take(j, "synthetic_seed", o.synthetic_seed, where);
  take(j, "measure_floors", o.measure_floors, where);
  take(j, "layers", o.layers, where);
  take(j, "coordinator_only", o.coordinator_only, where);
  take(j, "dtype", o.dtype, where);
  take(j, "batch_invariant", o.batch_invariant, where);
  take(j, "extra_slots", o.extra_slots, where);
  take(j, "stats", o.stats, where);
  take(j, "trace", o.trace, where);  // on the workers: whether to record (rank 0 writes the file)
  take(j, "trace_steps", o.trace_steps, where);
  take(j, "workers", o.workers, where);
  take(j, "standby", o.standby, where);  // ranks above workers are standbys
  take(j, "repartition", o.repartition, where);  // a worker cut off from rank 0 leaves quietly
  take(j, "snapshot_tokens", o.snapshot_tokens, where);
  const json& l = j["limits"];
  const std::string lw = where + " (limits)";
  take(l, "max_slots", o.limits.max_slots, lw);
  take(l, "max_batch", o.limits.max_batch, lw);
  take(l, "max_tokens", o.limits.max_tokens, lw);
  take(l, "chunk", o.limits.chunk, lw);
  take(l, "microbatches", o.limits.microbatches, lw);
  take(l, "max_logit_rows", o.limits.max_logit_rows, lw);
}

namespace {

struct WorkerArgs {
  std::string join, key, device = "auto", model;
  int threads = 0;
  double memory_gb = 0;
  double timeout_s = 3600;
};

int run_worker(const WorkerArgs& a) {
#if !defined(RWKVPP_HAVE_UCX)
  (void)a;
  fail("rwkvpp worker needs the UCX transport: this rwkvpp was built without UCX (install "
       "libucx-dev and rebuild)");
#else
  if (!(a.memory_gb >= 0 && a.memory_gb < 1e6)) fail("--memory {}: gigabytes, 0 or more", a.memory_gb);
  if (!(a.timeout_s > 0 && a.timeout_s <= 1e7)) fail("--timeout {}: a positive number of seconds", a.timeout_s);
  RendezvousConfig cfg;
  parse_host_port(a.join, "--join", cfg);
  cfg.rank = -1;
  cfg.size = 0;
  cfg.timeout = std::chrono::milliseconds(int64_t(std::llround(a.timeout_s * 1000)));
  cfg.key = load_cluster_key(a.key);
  stretch_worker_timeout();
  std::vector<uint8_t> job;
  std::unique_ptr<Transport> t = make_ucx_transport(cfg, &job);
  ClusterOptions o;
  job_from_json(std::string(job.begin(), job.end()), o);
  if (!a.model.empty()) o.model = a.model;
  o.device = a.device;
  o.threads = a.threads;
  o.memory_limit = uint64_t(a.memory_gb * 1e9);
  fmt::print(stderr, "rwkvpp worker: joined {} as rank {} of {}{}; model {}\n", a.join, t->rank(), t->size(),
             o.standby > 0 && t->rank() >= t->size() - o.standby ? " (a standby: idle until a stage is lost)" : "",
             o.synthetic.empty() ? o.model : "synthetic " + o.synthetic);
  o.transport = [&t] { return std::move(t); };
  return run_cluster(o, [](Engine&) { return 0; });
#endif
}

}  // namespace

void add_worker_command(CLI::App& app, Action& run) {
  auto a = std::make_shared<WorkerArgs>();
  CLI::App* c = app.add_subcommand(
      "worker",
      "Join a coordinator as a pipeline stage (a cluster without mpirun). The coordinator is any "
      "model command run with --listen HOST:PORT --workers N --cluster-key FILE; it numbers the "
      "workers in join order, assigns their layers by the memory they offer, and tells them the "
      "model and options. The worker dials out and listens on no port of its own (UCX may open "
      "ports for the data between stages). It exits when the coordinator's job ends.");
  c->add_option("--join", a->join, "the coordinator's HOST:PORT (its --listen)")->required();
  c->add_option("--cluster-key", a->key, "the cluster key file (mode 0600; the coordinator's)")->required();
  c->add_option("--device", a->device, "auto (a GPU when present), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  c->add_option("--threads", a->threads, "CPU threads (0: all of this host's cores)");
  c->add_option("--memory", a->memory_gb,
                "most gigabytes of weights and states to hold (0: what the device has free); the "
                "coordinator sizes this worker's layers by it, and a re-partition after a lost worker "
                "(--repartition) gives it more layers only within it");
  c->add_option("--model,-m", a->model,
                "this box's copy of the model (default: the coordinator's path, e.g. on a shared "
                "file system); it must be the same model");
  c->add_option("--timeout", a->timeout_s, "seconds to wait for the coordinator and the other workers")
      ->capture_default_str();
  c->callback([a, &run] { run = [a] { return run_worker(*a); }; });
}

void add_keygen_command(CLI::App& app, Action& run) {
  auto path = std::make_shared<std::string>();
  CLI::App* c = app.add_subcommand(
      "keygen", "Write a new cluster key (32 random bytes as hex, mode 0600) for --cluster-key; "
                "copy the same file to every box of the cluster.");
  c->add_option("file", *path, "where to write it (must not exist)")->required();
  c->callback([path, &run] {
    run = [path] {
      write_new_cluster_key(*path);
      fmt::print(stderr, "rwkvpp keygen: wrote {} (mode 0600)\n", *path);
      return 0;
    };
  });
}

}  // namespace rwkvpp
