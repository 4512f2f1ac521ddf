// `rwkvpp convert` and `rwkvpp inspect`.
#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/progress.h"
#include "coordinator/commands.h"
#include "shards/checkpoint.h"
#include "shards/model_format.h"
#include "shards/model_reader.h"
#include "shards/synthetic.h"

namespace rwkvpp {

namespace {

struct ConvertArgs {
  std::string input, outdir, dtype, tokenizer, progress = "auto";
  int shards = 1;
};

// Progress of writing the model (common/progress.h), made at the first tensor (the totals are
// known then); finish() after write_model.
struct WriteProgress {
  std::string mode, label;
  std::unique_ptr<WorkProgress> p;
  void attach(WriteOptions& o) {
    const ProgressMode m = parse_progress_mode(mode);
    o.on_progress = [this, m](uint64_t b, uint64_t tb, size_t n, size_t tn) {
      if (!p) p = std::make_unique<WorkProgress>(m, label, tb, tn, "tensors");
      p->update(b, n);
    };
  }
  void finish() {
    if (p) p->finish();
  }
};

void add_progress_option(CLI::App* c, std::string& mode) {
  c->add_option("--progress", mode,
                "auto (a bar on a terminal, a line every 5 s otherwise), bar, log or none")
      ->capture_default_str();
}

}  // namespace

void add_convert_command(CLI::App& app, Action& run) {
  auto a = std::make_shared<ConvertArgs>();
  auto* c = app.add_subcommand(
      "convert",
      "Convert a checkpoint into the sharded HDF5 model format.\n"
      "INPUT may be safetensors (official or Hugging Face transformers names), a PyTorch .pth\n"
      "checkpoint, or an rwkv.cpp .bin (FP32/FP16); the kind is detected from the file itself.");
  c->add_option("INPUT", a->input, "checkpoint file")->required()->check(CLI::ExistingFile);
  c->add_option("-o,--output", a->outdir, "output directory (must not exist)")->required();
  c->add_option("--shards", a->shards, "number of shard files (contiguous layer ranges)")->capture_default_str();
  c->add_option("--dtype", a->dtype, "storage dtype of the weight matrices: fp32, fp16 or bf16 (default: as in INPUT)");
  c->add_option("--tokenizer", a->tokenizer,
                "vocabulary to embed: a World vocab .txt, a 20B tokenizer.json, or 'bytes'");
  add_progress_option(c, a->progress);
  c->callback([a, &run] {
    run = [a] {
      Checkpoint ck = read_checkpoint(a->input);
      ModelConfig cfg = infer_config(ck);
      WriteOptions opt;
      opt.shards = a->shards;
      if (!a->dtype.empty()) {
        opt.dtype = parse_storage_dtype(a->dtype, "--dtype");
        opt.dtype_from_source = false;
      }
      if (!a->tokenizer.empty()) opt.tokenizer = load_tokenizer_blob(a->tokenizer);
      WriteProgress progress{a->progress, "convert", nullptr};
      progress.attach(opt);
      write_model(ck, cfg, a->outdir, opt);
      progress.finish();
      ModelReader r(a->outdir);
      fmt::print("converted {} ({}) -> {}: RWKV-{}, {} layers, n_embd {}, vocab {}, {} matrices, {} shard(s)\n",
                 a->input, ck.format, a->outdir, version_name(cfg.version), cfg.n_layer, cfg.n_embd,
                 cfg.vocab_size, dtype_name(r.config().dtype), r.shards().size());
      return 0;
    };
  });
}

void add_synth_command(CLI::App& app, Action& run) {
  struct Args {
    std::string shape, version, outdir, dtype = "fp16", progress = "auto";
    int shards = 1;
    uint64_t seed = 1;
  };
  auto a = std::make_shared<Args>();
  auto* c = app.add_subcommand("synth",
                               "Write a model with RANDOM weights and the released shape of an RWKV-4, 5, 6 or 7 "
                               "model (load tests, benchmarks, the quickstart). Its output is noise.");
  std::string shapes;
  for (auto& s : synthetic_shapes()) shapes += (shapes.empty() ? "" : ", ") + s;
  c->add_option("--shape", a->shape, "one of: " + shapes + " (RWKV-4 names also as v4-1.5b etc.)")->required();
  c->add_option("--version", a->version,
                "4, 5, 6 or 7: the version of a --shape given without its prefix (--version 7 --shape 1.5b "
                "is v7-1.5b)");
  c->add_option("-o,--output", a->outdir, "output directory (must not exist)")->required();
  c->add_option("--shards", a->shards, "number of shard files")->capture_default_str();
  c->add_option("--dtype", a->dtype, "fp32, fp16 or bf16")->capture_default_str();
  c->add_option("--seed", a->seed, "random seed")->capture_default_str();
  add_progress_option(c, a->progress);
  c->callback([a, &run] {
    run = [a] {
      const std::string shape = synthetic_shape_name(a->shape, a->version);
      ModelConfig cfg = synthetic_config(shape, parse_storage_dtype(a->dtype, "--dtype"));
      Checkpoint ck = synthetic_checkpoint(cfg, a->seed);
      WriteOptions opt;
      opt.shards = a->shards;
      opt.tokenizer = {"bytes", ""};
      if (cfg.vocab_size != 256) opt.tokenizer = {};
      WriteProgress progress{a->progress, "synth", nullptr};
      progress.attach(opt);
      write_model(ck, cfg, a->outdir, opt);
      progress.finish();
      fmt::print("wrote a RANDOM-weight RWKV-{} model, shape {} ({} layers, n_embd {}, vocab {}), to {}\n",
                 version_name(cfg.version), shape, cfg.n_layer, cfg.n_embd, cfg.vocab_size, a->outdir);
      return 0;
    };
  });
}

void add_inspect_command(CLI::App& app, Action& run) {
  auto model = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto* c = app.add_subcommand("inspect", "Show a converted model's configuration, size and shards.");
  c->add_option("MODEL", *model, "model directory or its model.h5")->required();
  c->add_flag("--json", *json, "print JSON instead of text");
  c->callback([model, json, &run] {
    run = [model, json] {
      ModelReader r(*model);
      const ModelConfig& m = r.config();
      auto tok = r.read_tokenizer();
      nlohmann::json j = {
          {"model", r.file()},
          {"rwkv_version", version_name(m.version)},
          {"n_layer", m.n_layer},
          {"n_embd", m.n_embd},
          {"n_head", m.n_head},
          {"head_size", m.head_size},
          {"ffn_dim", m.ffn_dim},
          {"vocab_size", m.vocab_size},
          {"dtype", dtype_name(m.dtype)},
          {"param_count", r.param_count()},
          {"bytes", r.weight_bytes()},
          {"tokenizer", tok.kind.empty() ? "none" : tok.kind},
          {"fingerprint", fmt::format("{:016x}", r.fingerprint())},
      };
      j["shards"] = nlohmann::json::array();
      for (auto& s : r.shards())
        j["shards"].push_back({{"file", s.file}, {"first_layer", s.first}, {"last_layer", s.last - 1}});
      if (*json) {
        fmt::print("{}\n", j.dump(2));
        return 0;
      }
      fmt::print("model        {}\n", r.file());
      fmt::print("RWKV version {}\n", version_name(m.version));
      fmt::print("layers       {}\n", m.n_layer);
      fmt::print("n_embd       {}\n", m.n_embd);
      if (m.n_head) fmt::print("heads        {} x {}\n", m.n_head, m.head_size);
      fmt::print("ffn size     {}\n", m.ffn_dim);
      fmt::print("vocab size   {}\n", m.vocab_size);
      fmt::print("dtype        {}\n", dtype_name(m.dtype));
      fmt::print("parameters   {}\n", r.param_count());
      fmt::print("bytes        {}\n", r.weight_bytes());
      fmt::print("tokenizer    {}\n", tok.kind.empty() ? "none" : tok.kind);
      for (auto& s : r.shards()) fmt::print("shard        {}  layers {}-{}\n", s.file, s.first, s.last - 1);
      return 0;
    };
  });
}

}  // namespace rwkvpp
