// Starting and stopping the pipeline: every rank calls run_cluster() with the same options.
// Rank 0 coordinates (and holds stage 0 unless --coordinator-only); the other ranks run the
// stage's own entry point (worker/stage_rank.h) and return when the coordinator shuts the
// pipeline down. `body` runs on rank 0 only, with an Engine ready to take requests.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

#include "common/progress.h"
#include "coordinator/engine.h"
#include "net/transport.h"

namespace rwkvpp {

// What the coordinator knows about the stages at the end of a run (benchmarks, --stats).
struct ClusterReport {
  std::vector<int> stage_ranks;
  std::vector<StagePlan> plan;
  std::vector<ReadyMsg> ready;  // per stage: bytes, files, floors
  std::vector<StatsMsg> stats;  // per stage: compute, wait, traffic
};

struct ClusterOptions {
  std::string model;
  std::string synthetic;         // instead of a model: random weights of this shape (no file)
  uint64_t synthetic_seed = 1;
  bool measure_floors = false;   // every stage measures its device's copy and GEMM rates
  std::function<void(const ClusterReport&)> on_report;  // rank 0, after shutdown
  // Rank 0, once the transport is up and before any stage loads (a server starts answering
  // /health and /ready here, while the layers load).
  std::function<void()> on_coordinator_start;
  std::string layers = "auto";
  bool coordinator_only = false;
  std::string device = "auto";  // auto, cpu, cuda
  std::string dtype;            // matrix dtype on the devices; default: as stored
  int threads = 0;              // CPU threads per rank; 0 = cores / ranks on this host
  std::string batch_invariant = "auto";  // on, off or auto (Backend::set_batch_invariant)
  EngineLimits limits;
  // State slots on every stage beyond those of the running sequences (limits.max_slots, at
  // least max_batch x microbatches), for states kept between requests (rwkvpp serve's cache).
  int extra_slots = 0;
  bool stats = false;
  // A cluster of worker daemons instead of a launcher (coordinator/cluster_join.h): rank 0
  // listens here for `rwkvpp worker --join`, waits for `workers` of them (the cluster key's
  // handshake), and tells them what to run.
  std::string listen;
  int workers = 0;
  std::string cluster_key;  // the key file (net/control/cluster_key.h)
  double join_timeout_s = 600;
  // With --listen: this many more workers join as standbys (idle, nothing loaded); when a stage
  // is lost, one takes its layers and the pipeline recovers from the stages' state snapshots,
  // taken every snapshot_tokens tokens of each sequence (coordinator/engine.h, RecoveryOptions).
  int standby = 0;
  // With --listen: when a stage is lost and no standby is left, its layers go to the
  // neighbouring stages where the memory their ranks offered allows (the pipeline goes on with
  // one stage fewer; coordinator/partition.h, plan_repartition). Turns the snapshots on also
  // without standbys.
  bool repartition = false;
  int snapshot_tokens = 1024;
  // A worker daemon: the most memory it offers for layers (bytes; 0: what its device has free).
  uint64_t memory_limit = 0;
  // A worker daemon: the transport it already joined through (else run_cluster makes one).
  std::function<std::unique_ptr<Transport>()> transport;
  // --trace FILE.json: the run's timeline in trace-event JSON, written by rank 0
  // (protocol/trace_session.h); the last trace_steps steps are kept.
  std::string trace;
  uint64_t trace_steps = 4096;
  // Loading progress of every stage (common/progress.h); batch's --progress sets it too.
  ProgressMode progress = ProgressMode::Auto;
};

// Registers the options above on a CLI11 subcommand (shared by every command that runs a model).
void add_cluster_options(CLI::App* cmd, ClusterOptions& o);
// The same without --model (for commands that may run without a model file, e.g. bench).
void add_cluster_tuning_options(CLI::App* cmd, ClusterOptions& o);

// The pipeline's arithmetic from the plan and the stages' Ready messages (PipelineNumerics).
PipelineNumerics pipeline_numerics(DType dtype, const std::vector<StagePlan>& plan,
                                   const std::vector<ReadyMsg>& readies);

// Runs the pipeline; returns the exit code (body's on rank 0, 0 on workers).
int run_cluster(const ClusterOptions& opt, const std::function<int(Engine&)>& body);

}  // namespace rwkvpp
