// run_cluster (coordinator/cluster.h): what every rank does first (the transport, the options, the
// weights), then rank 0's side of the pipeline: the stages' Hellos, the plan, their Assigns and
// Readys, the Engine for the body, and the shutdown. The stage's side is worker/stage_rank.h.
#include "coordinator/cluster.h"

#include <algorithm>
#include <csignal>
#include <map>

#include "common/env.h"
#include "common/trace.h"
#include "coordinator/cluster_join.h"
#include "coordinator/partition.h"
#include "protocol/ctrl_io.h"
#include "protocol/trace_session.h"
#include "shards/model_source.h"
#include "worker/shared_ring.h"
#include "worker/stage_rank.h"

namespace rwkvpp {

PipelineNumerics pipeline_numerics(DType dtype, const std::vector<StagePlan>& plan,
                                   const std::vector<ReadyMsg>& readies) {
  PipelineNumerics n;
  n.dtype = dtype_name(dtype);
  n.batch_invariant = true;
  std::vector<std::pair<std::pair<int, int>, std::string>> runs;  // [first, last] layers, numerics
  for (size_t s = 0; s < plan.size() && s < readies.size(); ++s) {
    n.batch_invariant = n.batch_invariant && readies[s].batch_invariant;
    if (plan[s].first >= plan[s].last) continue;
    if (!runs.empty() && runs.back().second == readies[s].numerics)
      runs.back().first.second = plan[s].last - 1;
    else
      runs.push_back({{plan[s].first, plan[s].last - 1}, readies[s].numerics});
  }
  for (size_t i = 0; i < runs.size(); ++i)
    n.layers += fmt::format("{}{}-{} {}", i ? "; " : "", runs[i].first.first, runs[i].first.second, runs[i].second);
  return n;
}

void add_cluster_options(CLI::App* c, ClusterOptions& o) {
  c->add_option("--model,-m", o.model, "converted model: its directory or model.h5")->required();
  add_cluster_tuning_options(c, o);
}

void add_cluster_tuning_options(CLI::App* c, ClusterOptions& o) {
  c->add_option("--layers", o.layers,
                "layer ranges per stage: 'auto' (balance compute and memory) or e.g. 0-2,3-3,4-5")
      ->capture_default_str();
  c->add_flag("--coordinator-only", o.coordinator_only, "rank 0 holds no layers (K ranks give K-1 stages)");
  c->add_option("--device", o.device, "auto (a GPU per rank when present), cpu or cuda")->capture_default_str();
  c->add_option("--compute-dtype", o.dtype, "matrix dtype on the devices: fp32, fp16, bf16, int8 (per-row scales) or int4 (groups of 32 columns with an fp16 scale and offset, the head in fp16; CPU only so far); int8 and int4 are quantised when a stage loads its layers, the embedding stays fp16 (default: as stored)");
  c->add_option("--threads", o.threads, "CPU threads per rank (0: the host's cores shared among its ranks)");
  c->add_option("--batch-invariant", o.batch_invariant,
                "on: products whose results do not depend on what shares a step (the CPU's always are; "
                "CUDA: kernels/cuda/imma.cuh, opt-in); off: the device's fastest; auto: the device's default "
                "(RWKVPP_INVARIANT on CUDA)")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  c->add_option("--max-batch", o.limits.max_batch, "most sequences in one step")->capture_default_str();
  c->add_option("--microbatches", o.limits.microbatches, "steps in flight (0: two per stage, one for a single stage)")->capture_default_str();
  c->add_option("--chunk", o.limits.chunk, "prompt tokens per sequence per step")->capture_default_str();
  c->add_flag("--stats", o.stats, "print per-stage statistics at the end (stderr)");
  add_listen_options(c, o);
  c->add_option("--trace", o.trace,
                "write the run's timeline to this file (Chrome/Perfetto trace-event JSON: open it in "
                "ui.perfetto.dev or chrome://tracing); rank 0 writes it");
  c->add_option("--trace-steps", o.trace_steps, "steps the trace keeps (the last ones; bounds its memory)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

namespace {

// Checked on every rank, so that every rank reports a bad option the same way.
void check_options(const ClusterOptions& opt, int size) {
  if (opt.coordinator_only && size < 2) fail("--coordinator-only needs at least 2 ranks (mpirun -np K with K >= 2)");
  if (opt.limits.max_batch < 1)
    fail("--max-batch: {} sequences per step; at least 1", opt.limits.max_batch);
  if (opt.limits.chunk < 1)
    fail("--chunk: {} prompt tokens per step; at least 1", opt.limits.chunk);
  if (opt.limits.microbatches < 0)
    fail("--microbatches: {}; 0 (two per stage, one for a single stage) or more",
         opt.limits.microbatches);
  if (opt.threads < 0)
    fail("--threads: {}; 0 (the host's cores shared among its ranks) or more", opt.threads);
  if (opt.standby < 0 || opt.standby >= size)
    fail("--standby: {} standby worker(s) of {} rank(s)", opt.standby, size);
  if (opt.snapshot_tokens < 1) fail("--snapshot-tokens: {}; at least 1", opt.snapshot_tokens);
}

// The last `standby` ranks of a --listen job are standbys.
bool is_standby(const ClusterOptions& o, int rank, int size) { return o.standby > 0 && rank >= size - o.standby; }

StageRankOptions stage_options(const ClusterOptions& o, int rank = 0, int size = 1) {
  StageRankOptions s;
  // A standby waits for a lost stage for as long as the job runs (bounded by the liveness of
  // the coordinator, whose silence ends the wait with PeerLost).
  if (is_standby(o, rank, size)) s.assign_timeout_s = 30 * 24 * 3600;
  s.device = o.device;
  s.threads = o.threads;
  s.batch_invariant = o.batch_invariant;
  s.memory_limit = o.memory_limit;
  s.measure_floors = o.measure_floors;
  s.progress = o.progress;
  return s;
}

// Rank 0: a rank's Hello, checked against rank 0's protocol and model (then, with --trace, its
// clock exchange).
HelloMsg recv_hello(Transport& t, int r, uint64_t fingerprint) {
  Completion c;
  auto b = recv_ctrl(t, r, kCtrlCap, 120, "its Hello", &c);
  std::string what = fmt::format("Hello from rank {}", r);
  Message m = decode_message(b, kCtrlCap);
  if (m.header.msg_type() == MsgType::Error) fail("rank {}: {}", r, decode_error(m, what));
  HelloMsg h = decode_hello(m, what);
  if (h.protocol != kProtocolVersion)
    fail("rank {} (host {}) speaks protocol version {}, rank 0 speaks {}: run the same rwkvpp on every rank", r,
         h.host, h.protocol, kProtocolVersion);
  if (h.fingerprint != fingerprint)
    fail("rank {} (host {}) opened a different model (fingerprint {:016x}, rank 0 has {:016x}): every rank must "
         "see the same model files", r, h.host, h.fingerprint, fingerprint);
  if (trace::on() && r != t.rank()) serve_clock(t, r);
  return h;
}

// Rank 0: every stage rank's Hello, the partition, and every stage rank's Assign.
std::vector<StagePlan> plan_stages(Transport& t, const ClusterOptions& opt, const ModelConfig& cfg, DType dtype,
                                   const EngineLimits& lim, const std::vector<int>& stage_ranks,
                                   uint64_t fingerprint, std::map<int, HelloMsg>& hellos) {
  const int coord = t.rank();
  PlanInputs in;
  in.cfg = cfg;
  in.dtype = dtype;
  in.max_slots = lim.max_slots;
  in.ranks = stage_ranks;
  for (int r : stage_ranks) in.free_memory.push_back((hellos[r] = recv_hello(t, r, fingerprint)).free_memory);
  std::vector<StagePlan> plan = plan_partition(in, opt.layers);
  for (size_t s = 0; s < stage_ranks.size(); ++s) {
    AssignMsg a;
    a.stage = int(s);
    a.n_stages = int(stage_ranks.size());
    a.first = plan[s].first;
    a.last = plan[s].last;
    a.embed = plan[s].embed;
    a.head = plan[s].head;
    a.prev_rank = s == 0 ? coord : stage_ranks[s - 1];
    a.next_rank = s + 1 < stage_ranks.size() ? stage_ranks[s + 1] : coord;
    a.coord_rank = coord;
    a.max_slots = lim.max_slots;
    a.max_tokens = lim.max_tokens;
    a.dtype = dtype;
    send_blocking(t, stage_ranks[s], kTagCtrl, encode_assign(a));
  }
  return plan;
}

// Rank 0: every stage's Ready; when one failed to load, stops every rank and throws its error.
std::vector<ReadyMsg> wait_ready(Transport& t, const ClusterOptions& opt, const std::vector<int>& stage_ranks,
                                 const std::vector<StagePlan>& plan) {
  const int coord = t.rank();
  std::vector<ReadyMsg> readies;
  std::string load_error;
  for (int r : stage_ranks) {
    auto b = recv_ctrl(t, r, kCtrlCap, 3600, "its Ready (loading layers)");
    Message m = decode_message(b, kCtrlCap);
    std::string what = fmt::format("Ready from rank {}", r);
    if (m.header.msg_type() == MsgType::Error) {
      if (load_error.empty()) load_error = fmt::format("rank {}: {}", r, decode_error(m, what));
      readies.emplace_back();
      continue;
    }
    readies.push_back(decode_ready(m, what));
  }
  if (!load_error.empty()) {
    for (int r : stage_ranks)
      if (r != coord) send_blocking(t, r, kTagCtrl, encode_shutdown());
    fail("{}", load_error);
  }
  if (opt.stats)
    for (size_t s = 0; s < stage_ranks.size(); ++s)
      fmt::print(stderr, "[stats] rank {} stage {} layers {}-{}{}{}: read {} bytes from {} file(s) in {:.2f} s\n",
                 stage_ranks[s], s, plan[s].first, plan[s].last - 1, plan[s].embed ? " +emb" : "",
                 plan[s].head ? " +head" : "", readies[s].bytes_read, readies[s].files.size(), readies[s].load_seconds);
  if (opt.stats)
    for (size_t s = 0; s < stage_ranks.size(); ++s)
      for (auto& f : readies[s].files) fmt::print(stderr, "[stats] rank {} opened {}\n", stage_ranks[s], f);
  return readies;
}

void print_stats(const Engine& engine, const std::vector<int>& stage_ranks, const std::vector<StatsMsg>& stats) {
  double wall = std::max(engine.run_seconds(), 1e-9);
  fmt::print(stderr, "[stats] {} stage(s), {} tokens in {:.3f} s ({:.1f} tokens/s), {} generated\n",
             stats.size(), engine.tokens_processed(), wall, double(engine.tokens_processed()) / wall,
             engine.tokens_generated());
  for (size_t s = 0; s < stats.size(); ++s) {
    auto& st = stats[s];
    fmt::print(stderr,
               "[stats] stage {} rank {} ({}) layers {}-{}: compute {:.3f} s, wait {:.3f} s, sent {} B, "
               "received {} B (and {} B through shared slots), {} tokens in {} steps, {:.1f} tokens/s\n",
               st.stage, stage_ranks[s], st.backend, st.first, st.last - 1, st.compute_s, st.wait_s,
               st.bytes_sent, st.bytes_received, st.bytes_shared, st.tokens, st.steps,
               double(st.tokens) / std::max(st.compute_s, 1e-9));
  }
}

// Rank 0, after the body: Shutdown to every stage rank, then their Stats (and --trace events);
// writes the trace, hands the report over and prints --stats.
void shut_down(Transport& t, const ClusterOptions& opt, const Engine& engine, StageRank* local,
               const std::vector<int>& stage_ranks, const std::vector<StagePlan>& plan,
               const std::vector<ReadyMsg>& readies, const std::vector<int>& standbys) {
  const int coord = t.rank();
  for (int r : stage_ranks)
    if (r != coord) send_blocking(t, r, kTagCtrl, encode_shutdown());
  for (int r : standbys)  // unused: still waiting for an Assign
    if (!t.peer_failed(r)) send_blocking(t, r, kTagCtrl, encode_shutdown());
  std::vector<StatsMsg> stats;
  std::vector<std::string> traces;  // --trace: every other rank's events
  for (int r : stage_ranks) {
    if (r == coord) {
      local->loop()->drain();
      stats.push_back(local->loop()->stats());
      continue;
    }
    std::vector<uint8_t> b;
    try {
      b = recv_ctrl(t, r, kCtrlCap, 60, "its statistics at shutdown");
    } catch (const PeerLost& e) {
      // The work is done: with --standby (UCX, whose other peers keep working) a stage lost
      // now, e.g. one cut off from this rank while the pipeline still ran through it, costs
      // its statistics, not the job.
      if (opt.standby == 0 && !opt.repartition) throw;
      fmt::print(stderr, "rwkvpp: {} (at shutdown: its statistics are missing)\n", e.what());
      StatsMsg none;
      none.stage = int32_t(stats.size());
      none.first = plan[stats.size()].first;
      none.last = plan[stats.size()].last;
      stats.push_back(none);
      continue;
    }
    stats.push_back(decode_stats(decode_message(b, kCtrlCap), fmt::format("Stats from rank {}", r)));
    if (trace::on()) traces.push_back(recv_trace(t, r));
  }
  if (trace::on()) {
    const std::string label = local ? local->trace_label() : trace_label(coord, -1, 0, 0, this_host());
    traces.insert(traces.begin(), trace::events_json(coord, label));
    trace::write_file(opt.trace, traces, fmt::format("rwkvpp, {} rank(s), the last {} steps", t.size(), opt.trace_steps));
    fmt::print(stderr, "rwkvpp: trace written to {} (open it in ui.perfetto.dev or chrome://tracing)\n", opt.trace);
  }
  if (opt.on_report) opt.on_report(ClusterReport{stage_ranks, plan, readies, stats});
  if (opt.stats) print_stats(engine, stage_ranks, stats);
}

// Rank 0, with --standby or --repartition: how the engine recovers a lost stage. `replace` hands
// the lost layers to the first standby still there (its Assign; it loads them and answers Ready)
// and takes it off `standbys`; a standby lost or failing on the way is skipped. `hellos`: every
// stage's and standby's Hello (what each offered, for a re-partition). The engine keeps
// `readies` in step with its stages.
RecoveryOptions recovery_options(Transport& t, const ClusterOptions& opt, const ModelConfig& cfg, DType dtype,
                                 const EngineLimits& lim, std::vector<ReadyMsg>& readies, std::vector<int>& standbys,
                                 const std::map<int, HelloMsg>& hellos, const Engine& engine, StageRank* local) {
  RecoveryOptions ro;
  ro.snapshot_tokens = opt.snapshot_tokens;
  ro.dtype = dtype;
  uint64_t per_slot = 0;
  for (const ReadyMsg& r : readies) per_slot = std::max<uint64_t>(per_slot, r.state_bytes / uint64_t(lim.max_slots));
  // A re-partitioned stage may hold up to every layer.
  if (opt.repartition) per_slot = std::max<uint64_t>(per_slot, layer_state_bytes(cfg) * uint64_t(cfg.n_layer));
  ro.snapshot_capacity = kHeaderBytes + 4096 + size_t(per_slot) + size_t(cfg.vocab_size) * 8;
  ro.repartition = opt.repartition;
  for (const auto& [r, h] : hellos) ro.offered[r] = h.free_memory;
  ro.readies = &readies;
  if (local)
    ro.recover_local = [local](const RecoverMsg& m, const std::vector<SlotRestore>& s) { return local->recover(m, s); };
  ro.replace = [&t, &readies, &standbys, &hellos, &engine, lim, dtype](int lost, int stage) {
    const std::vector<StagePlan>& plan = engine.plan();  // as a re-partition left it
    while (!standbys.empty()) {
      const int r = standbys.front();
      standbys.erase(standbys.begin());
      if (t.peer_failed(r)) continue;
      const uint64_t need = readies[size_t(stage)].weight_bytes + readies[size_t(stage)].state_bytes;
      if (hellos.at(r).free_memory < need)
        fmt::print(stderr, "rwkvpp: standby rank {} offers {:.2f} GB, the lost stage held {:.2f} GB; trying it\n", r,
                   double(hellos.at(r).free_memory) / 1e9, double(need) / 1e9);
      AssignMsg a;
      a.stage = stage;
      a.n_stages = int32_t(plan.size());
      a.first = plan[size_t(stage)].first;
      a.last = plan[size_t(stage)].last;
      a.embed = plan[size_t(stage)].embed;
      a.head = plan[size_t(stage)].head;
      a.prev_rank = a.next_rank = a.coord_rank = t.rank();  // the Recover that follows wires it
      a.max_slots = lim.max_slots;
      a.max_tokens = lim.max_tokens;
      a.dtype = dtype;
      a.epoch = engine.epoch() + 1;
      fmt::print(stderr, "rwkvpp: standby rank {} takes rank {}'s layers {}-{}\n", r, lost, a.first, a.last - 1);
      try {
        send_blocking(t, r, kTagCtrl, encode_assign(a));
        // The bytes must outlive the Message, which points into them.
        const std::vector<uint8_t> b = recv_ctrl(t, r, kCtrlCap, 3600, "its Ready (loading a lost stage's layers)");
        Message m = decode_message(b, kCtrlCap);
        const std::string what = fmt::format("Ready from standby rank {}", r);
        if (m.header.msg_type() == MsgType::Error) {
          fmt::print(stderr, "rwkvpp: standby rank {} could not load them: {}\n", r, decode_error(m, what));
          send_blocking(t, r, kTagCtrl, encode_shutdown());
          continue;
        }
        readies[size_t(stage)] = decode_ready(m, what);
        return r;
      } catch (const PeerLost& e) {
        if (e.peer() != r) throw;
        fmt::print(stderr, "rwkvpp: standby {}\n", e.what());
      }
    }
    return -1;
  };
  return ro;
}

// Rank 0: plans the pipeline, loads stage 0 unless --coordinator-only, runs `body` on an
// Engine and shuts the pipeline down.
int run_coordinator(Transport& t, const ClusterOptions& opt, const ModelSource& source,
                    const std::function<int(Engine&)>& body) {
  const int coord = t.rank();
  std::vector<int> stage_ranks, standbys;
  for (int r = opt.coordinator_only ? 1 : 0; r < t.size(); ++r)
    (is_standby(opt, r, t.size()) ? standbys : stage_ranks).push_back(r);
  const ModelConfig cfg = source.get().config();
  const DType dtype = opt.dtype.empty() ? cfg.dtype : parse_dtype(opt.dtype);
  EngineLimits lim = opt.limits;
  if (lim.microbatches <= 0) lim.microbatches = default_microbatches(int(stage_ranks.size()));
  lim.max_slots = std::max(lim.max_slots, lim.max_batch * lim.microbatches) + std::max(0, opt.extra_slots);
  lim.max_tokens = std::max(lim.max_tokens, lim.chunk);
  lim.max_logit_rows = max_logit_rows(cfg);

  // Stage 0 on this rank: its Hello now (to itself), its Assign after the plan.
  std::unique_ptr<StageRank> local;
  if (!opt.coordinator_only) local = std::make_unique<StageRank>(t, coord, source, stage_options(opt));
  std::map<int, HelloMsg> hellos;  // every rank's: what it offered (a re-partition's memory)
  const std::vector<StagePlan> plan = plan_stages(t, opt, cfg, dtype, lim, stage_ranks, source.fingerprint, hellos);
  // The standbys' now, so that a wrong standby stops the start.
  for (int r : standbys) hellos[r] = recv_hello(t, r, source.fingerprint);
  // A failed load has sent Error (to this rank), which wait_ready reports.
  if (local && !local->load()) local.reset();
  std::vector<ReadyMsg> readies = wait_ready(t, opt, stage_ranks, plan);

  StageRank* lp = local.get();  // its loop is replaced by a recovery: looked up on every poll
  Engine engine(t, cfg, stage_ranks, plan, lim,
                lp ? std::function<bool()>([lp] { return lp->loop()->poll(); }) : nullptr);
  engine.set_numerics(pipeline_numerics(dtype, plan, readies));
  if (lp) engine.set_local_stats([lp] { return lp->loop()->stats(); });
  // Stage 0 waiting for stage 1 (its shared-slot credit) must not wait for a stage that waits
  // for a recovery: it gives up when a stage is lost, and the engine recovers.
  const bool recovery = !standbys.empty() || opt.repartition;
  if (lp && recovery) lp->set_wait_hook([&engine] { return engine.stage_lost(); });
  if (recovery)
    engine.enable_recovery(recovery_options(t, opt, cfg, dtype, lim, readies, standbys, hellos, engine, lp));
  const int code = body(engine);
  shut_down(t, opt, engine, lp, engine.stage_ranks(), engine.plan(), readies, standbys);
  return code;
}

}  // namespace

int run_cluster(const ClusterOptions& opt, const std::function<int(Engine&)>& body) {
  // The transport takes its liveness timeout (RWKVPP_PEER_TIMEOUT_S, env_options()) when it is
  // made, so the stretch comes first.
  if (!opt.transport && opt.listen.empty() &&
      env_int({"RWKVPP_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}, 0) != 0)
    stretch_worker_timeout();
  auto tp = opt.transport ? opt.transport() : make_cluster_transport(opt);
  Transport& t = *tp;
  const int rank = t.rank(), size = t.size(), coord = 0;
  // mpirun and Slurm pass SIGTERM to every rank: a worker must keep serving steps until the
  // coordinator, which may be finishing a job gracefully (rwkvpp batch), sends Shutdown.
  if (rank != coord) std::signal(SIGTERM, SIG_IGN);
  try {
    as_input_error([&] { check_options(opt, size); });
    if (rank == coord && opt.on_coordinator_start) opt.on_coordinator_start();
    if (!opt.trace.empty()) trace::start(opt.trace_steps);
    // The weights: a converted model (only its attributes now; layers after the assignment), or
    // random weights generated on each rank. A model that cannot be opened is the command's.
    const ModelSource source = as_input_error(
        [&] { return open_model_source(opt.model, opt.synthetic, opt.synthetic_seed, opt.dtype); });
    if (rank != coord) return run_stage_rank(t, coord, source, stage_options(opt, rank, size));
    return run_coordinator(t, opt, source, body);
  } catch (const PeerLost& e) {
    fmt::print(stderr, "rwkvpp: error on rank {}: {}\n", rank, e.what());
    if (rank != coord && e.peer() == coord && (opt.standby > 0 || opt.repartition)) {
      // Cut off from the coordinator, which may have given this rank's layers to a standby and
      // go on with the others (a cut link, not a dead box): leave without aborting them. If the
      // coordinator is gone, every rank finds that out by itself.
      fmt::print(stderr, "rwkvpp: rank {} leaves without stopping the others ({}: the coordinator "
                 "recovers without this rank)\n", rank, opt.standby > 0 ? "--standby" : "--repartition");
      std::fflush(stderr);
      return 1;
    }
    std::fflush(stderr);
    t.abort(1);
  } catch (const std::exception& e) {
    if (size == 1) throw;
    fmt::print(stderr, "rwkvpp: error on rank {}: {}\n", rank, e.what());
    std::fflush(stderr);
    // The code every rank ends with (mpirun and srun pass it on): see kExitBadInput.
    t.abort(dynamic_cast<const InputError*>(&e) ? kExitBadInput : 1);
  }
  return 1;  // not reached: abort() does not return
}

}  // namespace rwkvpp
