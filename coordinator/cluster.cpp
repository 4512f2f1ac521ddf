#include "coordinator/cluster.h"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

#include "common/memory_use.h"
#include "common/progress.h"
#include "common/trace.h"
#include "coordinator/cluster_join.h"
#include "protocol/ctrl_io.h"
#include "coordinator/partition.h"
#include "protocol/trace_session.h"
#include "kernels/backend.h"
#include "shards/model_reader.h"
#include "shards/synthetic.h"
#include "worker/shared_ring.h"
#include "worker/stage.h"
#include "worker/step_loop.h"

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

using Clock = std::chrono::steady_clock;

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

int env_int(std::initializer_list<const char*> names, int dflt) {
  for (const char* n : names)
    if (const char* v = std::getenv(n); v && *v) return std::atoi(v);
  return dflt;
}

std::unique_ptr<Backend> choose_backend(const ClusterOptions& o, int threads) {
  int local = env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}, 0);
  if (o.device == "cuda" || (o.device == "auto" && cuda_available())) {
    int n = cuda_device_count();
    if (n == 0) fail("--device cuda: no CUDA device is available on this host");
    return make_cuda_backend(local % n);
  }
  if (o.device != "cpu" && o.device != "auto") fail("--device must be auto, cpu or cuda (got '{}')", o.device);
  return make_cpu_backend(threads);
}


// A worker's life after the handshake: run steps until Shutdown arrives.
void serve_steps(Transport& t, StepLoop& loop, int coord, const std::string& label) {
  std::vector<uint8_t> buf(kCtrlCap);
  RequestId r = t.post_recv(coord, kTagCtrl, buf.data(), buf.size());
  Completion c;
  for (;;) {
    bool busy = loop.poll();
    if (t.test(r, &c)) {
      Message m = decode_message({buf.data(), c.bytes}, kCtrlCap);
      if (m.header.msg_type() == MsgType::Shutdown) break;
      r = t.post_recv(coord, kTagCtrl, buf.data(), buf.size());
    }
    if (!busy) t.wait_some(std::chrono::milliseconds(1));
  }
  loop.drain();
  send_blocking(t, coord, kTagCtrl, encode_stats(loop.stats()));
  if (trace::on()) send_trace(t, coord, label);
}

}  // namespace

void stretch_worker_timeout() {
  double base = 20;
  if (const char* e = std::getenv("RWKVPP_PEER_TIMEOUT_S"); e && *e) base = std::atof(e);
  if (base <= 0) return;  // disabled
  setenv("RWKVPP_PEER_TIMEOUT_S", fmt::format("{:.3f}", base * 1.5).c_str(), 1);
}

int run_cluster(const ClusterOptions& opt, const std::function<int(Engine&)>& body) {
  // The transport reads RWKVPP_PEER_TIMEOUT_S when it is made, so the stretch comes first.
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
    if (rank == coord && opt.on_coordinator_start) opt.on_coordinator_start();
    if (!opt.trace.empty()) trace::start(opt.trace_steps);
    std::vector<int> stage_ranks;
    for (int r = opt.coordinator_only ? 1 : 0; r < size; ++r) stage_ranks.push_back(r);
    const bool is_stage = !(opt.coordinator_only && rank == coord);
    const int ranks_here = env_int({"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"}, 1);
    int threads = opt.threads > 0 ? opt.threads
                                  : std::max(1, int(std::thread::hardware_concurrency()) / std::max(1, ranks_here));

    // The weights: a converted model (only its attributes now; layers after the assignment), or
    // random weights generated on each rank.
    std::unique_ptr<ModelReader> reader;
    std::unique_ptr<TensorSource> synth;
    uint64_t fingerprint;
    if (!opt.synthetic.empty()) {
      DType d = opt.dtype.empty() ? DType::F16 : unquantised_dtype(parse_dtype(opt.dtype));
      synth = std::make_unique<SyntheticSource>(synthetic_config(opt.synthetic, d), opt.synthetic_seed);
      fingerprint = fnv1a64(opt.synthetic.data(), opt.synthetic.size(), opt.synthetic_seed);
    } else {
      reader = std::make_unique<ModelReader>(opt.model);
      fingerprint = reader->fingerprint();
    }
    TensorSource& source = reader ? static_cast<TensorSource&>(*reader) : *synth;
    const ModelConfig cfg = source.config();
    DType dtype = opt.dtype.empty() ? cfg.dtype : parse_dtype(opt.dtype);
    EngineLimits lim = opt.limits;
    if (lim.microbatches <= 0) lim.microbatches = default_microbatches(int(stage_ranks.size()));
    lim.max_slots = std::max(lim.max_slots, lim.max_batch * lim.microbatches) + std::max(0, opt.extra_slots);
    lim.max_tokens = std::max(lim.max_tokens, lim.chunk);
    lim.max_logit_rows = max_logit_rows(cfg);

    std::unique_ptr<Backend> be;
    if (is_stage) {
      be = choose_backend(opt, threads);
      if (opt.batch_invariant != "auto") be->set_batch_invariant(opt.batch_invariant == "on");
      // A GPU rank owns its host cores: poll for the next step instead of napping, so a stage
      // hop adds microseconds, not a scheduler tick (RWKVPP_SPIN_US overrides; docs/perf-log.md).
      if (!be->host_memory()) t.set_spin(std::chrono::microseconds(env_int({"RWKVPP_SPIN_US"}, 50000)));
      uint64_t offer = uint64_t(be->free_memory());
      if (opt.memory_limit > 0) offer = std::min(offer, opt.memory_limit);
      HelloMsg h{kProtocolVersion, fingerprint, offer, be->name(), this_host()};
      send_blocking(t, coord, kTagCtrl, encode_hello(h));
      if (trace::on() && rank != coord) measure_clock(t, coord);
    }

    std::vector<StagePlan> plan;
    if (rank == coord) {
      PlanInputs in;
      in.cfg = cfg;
      in.dtype = dtype;
      in.max_slots = lim.max_slots;
      in.ranks = stage_ranks;
      for (int r : stage_ranks) {
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
        in.free_memory.push_back(h.free_memory);
        if (trace::on() && r != coord) serve_clock(t, r);
      }
      plan = plan_partition(in, opt.layers);
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
    }

    std::unique_ptr<Stage> stage;
    std::unique_ptr<StepLoop> loop;
    int loop_stage = -1, loop_first = 0, loop_last = 0;  // the trace's label of this rank
    if (is_stage) {
      auto b = recv_ctrl(t, coord, kCtrlCap, 600, "the stage assignment");
      Message m = decode_message(b, kCtrlCap);
      if (m.header.msg_type() == MsgType::Shutdown) return 1;  // the coordinator gave up
      AssignMsg a = decode_assign(m, "Assign from rank 0");
      auto t0 = Clock::now();
      ReadyMsg ready;
      try {
        StageSpec spec{a.first, a.last, a.embed != 0, a.head != 0, a.dtype, a.max_slots};
        // Loading progress: a bar on a terminal, a line every 5 s on a pipe (mpirun's output).
        const uint64_t per_layer = layer_weight_bytes(cfg, a.dtype);
        WorkProgress progress(opt.progress, fmt::format("rank {} stage {}: loading layers {}-{}", rank, a.stage,
                                                        a.first, a.last - 1),
                              per_layer * uint64_t(a.last - a.first), uint64_t(a.last - a.first), "layers");
        stage = std::make_unique<Stage>(*be, source, spec, [&](int done, int) {
          progress.update(per_layer * uint64_t(done), uint64_t(done));
        });
        progress.finish();
      } catch (const std::exception& e) {
        send_blocking(t, coord, kTagCtrl, encode_error(e.what()));
        if (rank != coord) {
          // Wait to be told to stop (or be aborted); never exit on our own and leave rank 0 hanging.
          recv_ctrl(t, coord, kCtrlCap, 3600, "shutdown after an error");
          return 1;
        }
      }
      if (stage) {
        ready.weight_bytes = stage->weight_bytes();
        ready.state_bytes = stage->state().bytes();
        if (reader) {
          ready.bytes_read = reader->bytes_read();
          ready.files.assign(reader->files_opened().begin(), reader->files_opened().end());
        }
        ready.load_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        ready.backend = be->name();
        ready.peak_rss_bytes = peak_resident_bytes();
        ready.numerics = be->numerics();
        ready.batch_invariant = be->batch_invariant() ? 1 : 0;
        if (opt.measure_floors) {
          ready.copy_GBps = be->measure_copy_GBps();
          ready.read_GBps = be->measure_read_GBps();
          ready.gemm_TFLOPs = be->measure_gemm_TFLOPs(DType::F16);
        }
        send_blocking(t, coord, kTagCtrl, encode_ready(ready));
        loop = std::make_unique<StepLoop>(t, *stage, a);
        loop_stage = a.stage;
        loop_first = a.first;
        loop_last = a.last;
      }
    }

    if (rank != coord) {
      serve_steps(t, *loop, coord, trace_label(rank, loop_stage, loop_first, loop_last, this_host()));
      return 0;
    }

    // Coordinator: wait for every stage to be ready.
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

    int code;
    {
      Engine engine(t, cfg, stage_ranks, plan, lim, loop ? std::function<bool()>([&] { return loop->poll(); }) : nullptr);
      engine.set_numerics(pipeline_numerics(dtype, plan, readies));
      if (loop) engine.set_local_stats([&] { return loop->stats(); });
      code = body(engine);
      // Shut down: every stage reports its statistics.
      for (int r : stage_ranks)
        if (r != coord) send_blocking(t, r, kTagCtrl, encode_shutdown());
      std::vector<StatsMsg> stats;
      std::vector<std::string> traces;  // --trace: every other rank's events
      for (int r : stage_ranks) {
        if (r == coord) {
          loop->drain();
          stats.push_back(loop->stats());
          continue;
        }
        auto b = recv_ctrl(t, r, kCtrlCap, 60, "its statistics at shutdown");
        stats.push_back(decode_stats(decode_message(b, kCtrlCap), fmt::format("Stats from rank {}", r)));
        if (trace::on()) traces.push_back(recv_trace(t, r));
      }
      if (trace::on()) {
        traces.insert(traces.begin(), trace::events_json(rank, trace_label(rank, loop_stage, loop_first, loop_last, this_host())));
        trace::write_file(opt.trace, traces, fmt::format("rwkvpp, {} rank(s), the last {} steps", size, opt.trace_steps));
        fmt::print(stderr, "rwkvpp: trace written to {} (open it in ui.perfetto.dev or chrome://tracing)\n", opt.trace);
      }
      if (opt.on_report) opt.on_report(ClusterReport{stage_ranks, plan, readies, stats});
      if (opt.stats) {
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
    }
    return code;
  } catch (const PeerLost& e) {
    fmt::print(stderr, "rwkvpp: error on rank {}: {}\n", rank, e.what());
    std::fflush(stderr);
    t.abort(1);
  } catch (const std::exception& e) {
    if (size == 1) throw;
    fmt::print(stderr, "rwkvpp: error on rank {}: {}\n", rank, e.what());
    std::fflush(stderr);
    t.abort(1);
  }
  return 1;  // not reached: abort() does not return
}

}  // namespace rwkvpp
