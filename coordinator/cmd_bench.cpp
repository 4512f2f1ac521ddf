// `rwkvpp bench`: decode and prefill speed of a model (or random weights of an official shape)
// on whatever backends and ranks it runs on, printed as JSON together with the floors measured
// in the same run (each stage device's copy bandwidth and GEMM rate), so that every speed is
// read as a ratio to what the hardware allows. Method: docs/perf.md.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "coordinator/cluster.h"
#include "coordinator/commands.h"
#include "coordinator/partition.h"
#include "coordinator/tokenizer/tokenizer_bench.h"
#include "shards/synthetic.h"

namespace rwkvpp {

namespace {

struct BenchArgs {
  ClusterOptions cluster;
  std::string batches = "1,32,256", prompts = "1024,4096", contexts, out, version;
  int gen = 128;
  float temperature = 0;  // decode sampling: 0 greedy (on the device where it can), else on the host
};

// "1,32,256" (commas or spaces) -> sizes, each a whole number from 1 to `max`.
std::vector<int> parse_list(const std::string& s, const char* flag, int max) {
  std::vector<int> v;
  for_each_number(s, [&](const std::string& item, std::optional<long long> x) {
    if (!x) fail_input("{}: '{}' is not a whole number", flag, item);
    if (*x < 1 || *x > max) fail_input("{}: {} is out of range (1 to {})", flag, item, max);
    v.push_back(int(*x));
  });
  if (v.empty()) fail_input("{}: no sizes given", flag);
  return v;
}

std::vector<int32_t> random_tokens(int n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x = int32_t((seed >> 33) % uint64_t(vocab));
  }
  return t;
}

// Timed decode: `batch` sequences per step, each from a 1-token prompt (or `context` tokens
// first), generating `gen` tokens greedily (or at `temperature`, sampled on the host from the
// downloaded logits, as served requests at OpenAI's default of 1 are). Batch 1 is one sequence: its ms per step is the
// latency of a token through every stage. A larger batch fills the pipeline: with M
// micro-batches in flight (--microbatches; by default two per stage, one for a single stage)
// it holds M x batch sequences, so that every stage is busy, which is the pipeline's
// throughput at that batch. Returns seconds per
// step of the generation phase (tokens/s = sequences / that).
struct DecodeTiming {
  double s_per_step;
  int sequences;
};
DecodeTiming time_decode(Engine& e, int batch, int gen, int context, float temperature = 0) {
  const int64_t V = e.config().vocab_size;
  const int seqs = batch == 1 ? 1 : batch * std::max(1, e.limits().microbatches);
  e.set_max_batch(batch);
  std::vector<int> prefixes;
  if (context > 1)
    for (int b = 0; b < seqs; ++b) prefixes.push_back(e.add_prefix(random_tokens(context - 1, V, 7 + uint64_t(b))));
  if (!prefixes.empty()) {
    e.run();  // read the contexts first; not timed
    // Then a short untimed decode from each, so that the timed one does not start on a device
    // still throttled by the long prefill (seen on an H100: 1.5B batch 1 ran 10 % slower).
    for (int b = 0; b < seqs; ++b) {
      Request r;
      r.prompt = random_tokens(1, V, 500 + uint64_t(b));
      r.max_tokens = 16;
      r.prefix = prefixes[size_t(b)];
      e.submit(std::move(r));
    }
    e.run();
  }
  for (int b = 0; b < seqs; ++b) {
    Request r;
    r.prompt = random_tokens(1, V, 1000 + uint64_t(b));
    r.max_tokens = gen;
    r.prefix = prefixes.empty() ? -1 : prefixes[size_t(b)];
    r.sampling.temperature = temperature;
    r.sampling.seed = uint64_t(b);
    e.submit(std::move(r));
  }
  double before = e.run_seconds();
  e.run();
  for (int p : prefixes) e.release_prefix(p);
  return {(e.run_seconds() - before) / gen, seqs};
}

double time_prefill(Engine& e, int prompt) {
  Request r;
  r.prompt = random_tokens(prompt, e.config().vocab_size, 99);
  r.max_tokens = 1;
  e.submit(std::move(r));
  double before = e.run_seconds();
  e.run();
  return e.run_seconds() - before;
}

}  // namespace

void add_bench_command(CLI::App& app, Action& run) {
  auto a = std::make_shared<BenchArgs>();
  auto* c = app.add_subcommand(
      "bench",
      "Measure decode and prefill speed against floors measured in the same run; prints JSON.\n"
      "Runs alone or under mpirun (the pipeline's aggregate plus every stage's figures).\n"
      "With RWKVPP_DEVICE_TIMES=1 in the environment, each stage also reports its device time\n"
      "(device_s; its parts layers_s and out_s, the head or the output copy after the layers)\n"
      "and how long its device waited for the host (idle_host_s) and for uploads\n"
      "(idle_upload_s); 0 otherwise and on the CPU. Always: the host's time handling steps\n"
      "(handle_s) and blocked on receive buffers the device still reads or on the next stage's\n"
      "shared slots (ring_wait_s), and the hidden vectors received through shared slots\n"
      "(bytes_shared: stages on one host exchange them device to device, see RWKVPP_SHARE).\n"
      "Every stage figure covers the whole run (warm-up, prefill and decode steps; steps and\n"
      "tokens say how many), except decode_layers_s: the layers' device time of its\n"
      "decode_steps (one token per segment) alone.");
  auto* m = c->add_option("--model,-m", a->cluster.model, "converted model (directory or model.h5)");
  std::string shapes;
  for (auto& name : synthetic_shapes()) shapes += (shapes.empty() ? "" : ", ") + name;
  auto* s = c->add_option("--synthetic", a->cluster.synthetic,
                          "random weights with the released shape of an RWKV-4, 5, 6 or 7 model, generated on each "
                          "rank (" + shapes + ")");
  m->excludes(s);
  c->add_option("--version", a->version,
                "4, 5, 6 or 7: the version of a --synthetic shape given without its prefix (--version 7 "
                "--synthetic 1.5b is v7-1.5b)")
      ->needs(s);
  c->add_option("--batch", a->batches, "decode batch sizes")->capture_default_str();
  c->add_option("--prompt", a->prompts, "prefill prompt lengths")->capture_default_str();
  c->add_option("--gen", a->gen, "tokens generated per decode measurement")->capture_default_str();
  c->add_option("--temperature", a->temperature,
                "decode sampling temperature (0: greedy, reduced to ids on the device where it can; "
                "> 0: every row's logits come to the host and are sampled there, as for served "
                "requests at OpenAI's default of 1)")
      ->capture_default_str();
  c->add_option("--context", a->contexts, "also decode at batch 1 after contexts of these lengths (e.g. 1024,65536)");
  c->add_option("--out,-o", a->out, "also write the JSON to this file");
  add_cluster_tuning_options(c, a->cluster);
  c->callback([a, &run] {
    run = [a] {
      if (a->cluster.model.empty() && a->cluster.synthetic.empty()) fail_input("bench needs --model or --synthetic");
      if (!a->cluster.synthetic.empty())
        a->cluster.synthetic =
            as_input_error([&] { return synthetic_shape_name(a->cluster.synthetic, a->version); });
      auto batches = parse_list(a->batches, "--batch", 1 << 16);
      auto prompts = parse_list(a->prompts, "--prompt", 1 << 24);
      auto contexts =
          a->contexts.empty() ? std::vector<int>{} : parse_list(a->contexts, "--context", 1 << 24);
      if (a->gen < 1) fail_input("--gen: {} tokens; at least 1 is needed to time a decode step", a->gen);
      if (!(a->temperature >= 0 && a->temperature <= 100))
        fail_input("--temperature: {} is out of range (0 to 100)", a->temperature);
      ClusterOptions opt = a->cluster;
      opt.measure_floors = true;
      int max_b = *std::max_element(batches.begin(), batches.end());
      opt.limits.max_batch = std::max(opt.limits.max_batch, max_b);
      opt.limits.max_tokens = std::max({opt.limits.max_tokens, max_b, 2048});
      opt.limits.chunk = std::max(opt.limits.chunk, 2048);
      // Every context needs its own resident prefix slot plus the decoding sequence.
      opt.limits.max_slots = std::max<int>(opt.limits.max_slots, int(contexts.size()) + max_b + 2);
      nlohmann::json out;
      ClusterReport report;
      bool coordinator = false;
      opt.on_report = [&](const ClusterReport& r) {
        report = r;
        coordinator = true;
      };
      ModelConfig cfg;
      std::ofstream out_file;
      int code = run_cluster(opt, [&](Engine& e) {
        // The coordinator opens --out before measuring, so that a path it cannot write fails
        // at once rather than after a long run.
        if (!a->out.empty()) {
          out_file.open(a->out);
          if (!out_file) fail_input("--out: cannot write '{}'", a->out);
        }
        cfg = e.config();
        time_decode(e, 1, 4, 0);  // warm-up: first-touch allocations, workspaces, graphs
        for (int b : batches) {
          DecodeTiming d = time_decode(e, b, a->gen, 0, a->temperature);
          out["decode"].push_back({{"batch", b},
                                   {"sequences", d.sequences},
                                   {"ms_per_step", d.s_per_step * 1e3},
                                   {"tokens_per_s", d.sequences / d.s_per_step}});
        }
        for (int p : prompts) {
          double t = time_prefill(e, p);
          out["prefill"].push_back({{"prompt", p}, {"tokens_per_s", p / t}});
        }
        e.set_max_batch(1);
        for (int ctx : contexts) {
          DecodeTiming d = time_decode(e, 1, a->gen, ctx);
          out["context"].push_back({{"context", ctx}, {"ms_per_token", d.s_per_step * 1e3}});
        }
        return 0;
      });
      if (!coordinator) return code;
      // Floors: the batch-1 decode must read every weight once per token (the embedding only one
      // row), at each stage's read bandwidth; stages run one after another for one sequence.
      double floor_s = 0, gemm_min = 1e30, copy_min = 1e30, read_min = 1e30;
      uint64_t mem_total = 0;
      // The embedding stays fp16 under int8 (Embedder); weight_bytes counts int8 matrices with their scales.
      const uint64_t emb_bytes = uint64_t(cfg.vocab_size * cfg.n_embd) *
                                 dtype_size(unquantised_dtype(opt.dtype.empty() ? cfg.dtype : parse_dtype(opt.dtype)));
      nlohmann::json stages = nlohmann::json::array();
      for (size_t i = 0; i < report.ready.size(); ++i) {
        const auto& rd = report.ready[i];
        const auto& st = report.stats[i];
        uint64_t read_per_token = rd.weight_bytes - (report.plan[i].embed ? std::min(emb_bytes, rd.weight_bytes) : 0);
        floor_s += double(read_per_token) / (rd.read_GBps * 1e9);
        gemm_min = std::min(gemm_min, rd.gemm_TFLOPs);
        copy_min = std::min(copy_min, rd.copy_GBps);
        read_min = std::min(read_min, rd.read_GBps);
        uint64_t mem = rd.weight_bytes + rd.state_bytes;
        mem_total += mem;
        stages.push_back(
            {{"rank", report.stage_ranks[i]},
             {"backend", rd.backend},
             {"layers", {report.plan[i].first, report.plan[i].last - 1}},
             {"memory_bytes", mem},
             {"weight_bytes", rd.weight_bytes},
             {"state_bytes", rd.state_bytes},
             {"copy_GBps", rd.copy_GBps},
             {"read_GBps", rd.read_GBps},
             {"gemm_TFLOPs", rd.gemm_TFLOPs},
             {"compute_s", st.compute_s},
             {"wait_s", st.wait_s},
             {"device_s", st.device_s},
             {"layers_s", st.layers_s},
             {"out_s", st.out_s},
             {"idle_host_s", st.idle_host_s},
             {"idle_upload_s", st.idle_upload_s},
             {"handle_s", st.handle_s},
             {"ring_wait_s", st.ring_wait_s},
             {"bytes_sent", st.bytes_sent},
             {"bytes_received", st.bytes_received},
             {"bytes_shared", st.bytes_shared},
             {"peak_rss_bytes", rd.peak_rss_bytes},
             {"rss_bytes", st.rss_bytes},
             {"rss_over_weights",
              double(std::max(rd.peak_rss_bytes, st.rss_bytes)) / double(std::max<uint64_t>(rd.weight_bytes, 1))},
             {"tokens", st.tokens},
             {"steps", st.steps},
             {"decode_steps", st.decode_steps},
             {"decode_layers_s", st.decode_layers_s},
             {"tokens_per_s_compute", double(st.tokens) / std::max(st.compute_s, 1e-9)}});
      }
      out["model"] = opt.synthetic.empty() ? opt.model : "synthetic:" + opt.synthetic;
      out["shape"] = opt.synthetic.empty() ? nlohmann::json(nullptr) : nlohmann::json(opt.synthetic);
      out["version"] = version_name(cfg.version);
      out["n_layer"] = cfg.n_layer;
      out["n_embd"] = cfg.n_embd;
      out["n_head"] = cfg.n_head;
      out["head_size"] = cfg.head_size;
      out["ffn_dim"] = cfg.ffn_dim;
      out["vocab_size"] = cfg.vocab_size;
      out["decode_temperature"] = a->temperature;
      out["dtype"] = dtype_name(opt.dtype.empty() ? cfg.dtype : parse_dtype(opt.dtype));
      out["floors"] = {{"copy_GBps", copy_min},
                       {"read_GBps", read_min},
                       {"gemm_TFLOPs", gemm_min},
                       {"decode_b1_floor_ms", floor_s * 1e3}};
      out["memory_bytes"] = mem_total;
      out["stages"] = stages;
      // Ratios against the floors. Matrix FLOPs per token: 2 x matrix parameters.
      double flops_per_token = 2.0 * double(cfg.n_layer) * double(layer_weight_bytes(cfg, DType::F32) / 4) +
                               2.0 * double(cfg.vocab_size * cfg.n_embd);
      for (auto& d : out["decode"]) {
        if (d["batch"] == 1) out["ratios"]["decode_b1_over_floor"] = d["ms_per_step"].get<double>() / (floor_s * 1e3);
        d["gemm_fraction"] = d["tokens_per_s"].get<double>() * flops_per_token / (gemm_min * 1e12);
      }
      for (auto& p : out["prefill"]) p["gemm_fraction"] = p["tokens_per_s"].get<double>() * flops_per_token / (gemm_min * 1e12);
      std::string text = out.dump(2);
      fmt::print("{}\n", text);
      if (out_file.is_open()) {
        out_file << text << "\n";
        out_file.close();
        if (!out_file) fail("--out: cannot write '{}'", a->out);
      }
      return code;
    };
  });
}

void add_tokenizer_bench_command(CLI::App& app, Action& run) {
  auto tok = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto* c = app.add_subcommand("bench-tokenizer",
                               "Encode/decode speed of a tokenizer on one thread, as JSON (docs/perf-tokenizer.md).");
  c->add_option("--tokenizer", *tok, "a World vocab .txt, a 20B tokenizer.json, or 'bytes'")->required();
  c->add_option("--text", *text, "English text file (default: a few MB of generated English-like text)");
  c->callback([tok, text, &run] {
    run = [tok, text] {
      run_tokenizer_bench(*tok, *text, std::cout);
      return 0;
    };
  });
}

}  // namespace rwkvpp
