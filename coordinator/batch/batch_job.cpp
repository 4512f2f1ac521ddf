// The batch job on the coordinator: scan the input, open the journal, then run the scheduler
// (batch_runner.h) until the input is exhausted or a signal stops the job. See batch_job.h.
#include "coordinator/batch/batch_job.h"

#include <fmt/format.h>

#include <cstdio>
#include <algorithm>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "common/error.h"
#include "coordinator/batch/batch_runner.h"
#include "coordinator/batch/journal.h"
#include "coordinator/batch/openai_batch.h"
#include "coordinator/batch/progress.h"
#include "coordinator/serve/openai_response.h"
#include "coordinator/signals.h"
#include "coordinator/textgen.h"
#include "shards/model_format.h"
#include "shards/model_reader.h"

namespace rwkvpp {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open {} '{}'", what, path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ordered_json sampling_json(const BatchOptions& o) {
  const SamplingParams& s = o.defaults.sampling;
  ordered_json d;
  d["n"] = o.defaults.n;
  d["max_tokens"] = o.defaults.max_tokens;
  d["temperature"] = s.temperature;
  d["top_k"] = s.top_k;
  d["top_p"] = s.top_p;
  d["min_p"] = s.min_p;
  d["presence_penalty"] = s.presence_penalty;
  d["frequency_penalty"] = s.frequency_penalty;
  d["repetition_penalty"] = s.repetition_penalty;
  d["penalty_decay"] = s.penalty_decay;
  d["seed"] = s.seed;
  d["stop"] = o.defaults.stop;
  d["stop_ids"] = o.stop_ids;
  d["logprobs"] = o.logprobs;
  d["token_ids"] = o.token_ids;
  return d;
}

// What the job reads before it runs anything: the tokenizer, the prefix, the scanned input and
// the journal (the output, this job's from now on).
struct JobInput {
  std::unique_ptr<Tokenizer> tok;
  uint64_t fingerprint = 0;  // the model's
  std::vector<int32_t> shared_ids;  // the --prefix-file's tokens
  InputScan scan;
  std::string rejects_path;
  std::unique_ptr<Journal> journal;  // null: a signal stopped the scan
};

// Opens the job; its errors are the command's (as_input_error in batch_body).
JobInput open_job(Engine& e, const BatchOptions& o) {
  JobInput in;
  in.tok = tokenizer_for(o.cluster.model, o.tokenizer);
  in.fingerprint = ModelReader(o.cluster.model).fingerprint();
  std::vector<int32_t>& shared_ids = in.shared_ids;
  const Tokenizer& tok = *in.tok;
  ordered_json prefix_meta = nullptr;
  if (!o.prefix_file.empty()) {
    std::string text = read_text_file(o.prefix_file, "--prefix-file");
    shared_ids = tok.encode(text);
    prefix_meta = {{"path", o.prefix_file},
                   {"bytes", text.size()},
                   {"fnv1a64", hex64(fnv1a64(text.data(), text.size()))},
                   {"tokens", shared_ids.size()}};
  }

  // Scan and validate the input; bad lines go to the rejects file (rewritten on every run).
  in.rejects_path = o.rejects.empty() ? o.output + ".rejects.jsonl" : o.rejects;
  const std::string& rejects_path = in.rejects_path;
  // Written beside and renamed into place once the journal is ours (another job may hold it).
  const std::string rejects_tmp = rejects_path + ".tmp";
  std::ofstream rejects(rejects_tmp, std::ios::binary | std::ios::trunc);
  if (!rejects) fail("cannot write --rejects '{}'", rejects_tmp);
  int64_t shown = 0;
  InputFormat format;
  {
    std::ifstream f(o.input, std::ios::binary);
    if (!f) fail("cannot open --input '{}'", o.input);
    format = detect_input_format(f);
  }
  BatchDefaults defaults = o.defaults;
  defaults.vocab_size = e.config().vocab_size;
  in.scan = scan_input(
      o.input, defaults,
      [&](const Reject& r) {
        if (format == InputFormat::OpenAI) {
          rejects << openai_reject_line(r) << '\n';
        } else {
          ordered_json j = {{"line", r.line}, {"reason", r.reason}, {"text", r.text}};
          rejects << j.dump(-1, ' ', false, ordered_json::error_handler_t::replace) << '\n';
        }
        if (shown++ < 3) fmt::print(stderr, "batch: {} line {}: {}\n", o.input, r.line, r.reason);
      },
      [] { return stop_requested(); }, format);
  rejects.close();
  if (!rejects) fail("cannot write --rejects '{}'", rejects_tmp);
  if (stop_requested()) {
    std::remove(rejects_tmp.c_str());
    return in;
  }
  const InputScan& scan = in.scan;
  if (scan.rejected > 0)
    fmt::print(stderr,
               "batch: {} bad line(s) skipped; each is in '{}' with its line number and reason\n",
               scan.rejected, rejects_path);

  ordered_json meta;
  meta["format"] = "rwkvpp-batch";
  meta["version"] = 1;
  meta["input"] = {{"path", o.input},
                   {"bytes", scan.bytes},
                   {"fnv1a64", hex64(scan.hash)},
                   {"format", format_name(format)}};
  meta["model"] = {{"path", o.cluster.model}, {"fingerprint", hex64(in.fingerprint)}};
  meta["tokenizer"] = {{"kind", tok.kind()}, {"flag", o.tokenizer}};
  meta["prefix"] = prefix_meta;
  meta["defaults"] = sampling_json(o);
  // What decides the records' arithmetic: a resume on other devices or another compute dtype
  // would not continue the same records (docs/batch.md, Reproducibility).
  const PipelineNumerics& num = e.numerics();
  meta["numerics"] = {{"dtype", num.dtype}, {"layers", num.layers}, {"batch_invariant", num.batch_invariant}};
  if (!num.batch_invariant)
    fmt::print(stderr,
               "batch: warning: this pipeline's products depend on how sequences are batched ({}); "
               "records are reproducible only by an identical run, and a resumed job will differ "
               "from an uninterrupted one\n",
               num.layers);
  try {
    in.journal = std::make_unique<Journal>(o.output, meta, o.fsync_interval_s);
  } catch (...) {
    std::remove(rejects_tmp.c_str());
    throw;
  }
  if (std::rename(rejects_tmp.c_str(), rejects_path.c_str()) != 0)
    fail("cannot rename '{}' to --rejects '{}'", rejects_tmp, rejects_path);
  return in;
}

int batch_body(Engine& e, const BatchOptions& o) {
  if (stop_requested()) return kBatchStopped;
  // What the command was given: an error here fails the same way when rerun (kExitBadInput).
  JobInput in = as_input_error([&] { return open_job(e, o); });
  if (!in.journal) return kBatchStopped;
  const Tokenizer& tok = *in.tok;
  const InputScan& scan = in.scan;
  const std::string& rejects_path = in.rejects_path;
  const PipelineNumerics& num = e.numerics();
  Journal& journal = *in.journal;

  // The records already there that belong to the input: one pass over them (not over every
  // sample the input asks for, which may be many).
  std::unordered_map<std::string_view, int> samples_of;  // id key -> n
  for (const LineRef& ref : scan.lines) samples_of.emplace(ref.key, ref.n);
  uint64_t done = 0;
  journal.for_each_found([&](std::string_view key, int index) {
    auto it = samples_of.find(key);
    done += it != samples_of.end() && index < it->second ? 1 : 0;
  });
  if (journal.resumed())
    fmt::print(stderr, "batch: resuming '{}': {} of {} records done{}\n", o.output, done,
               scan.samples,
               journal.torn_bytes()
                   ? fmt::format(" (dropped a torn last line of {} bytes)", journal.torn_bytes())
                   : "");
  if (done != journal.records_found())
    fmt::print(stderr, "batch: warning: {} record(s) in '{}' match no (id, index) of the input\n",
               journal.records_found() - done, o.output);

  Progress progress(parse_progress_mode(o.progress), scan.samples, done, o.log_interval_s);
  uint64_t abandoned = 0, saved = 0, states = 0;
  OpenAIOutput openai;
  openai.input_hash = scan.hash;
  openai.fingerprint = system_fingerprint(in.fingerprint, num.dtype, num.layers);
  openai.tok = &tok;
  openai.stop_ids = o.stop_ids;
  for (int32_t id : end_of_text_ids(tok))  // as the server stops
    if (std::find(openai.stop_ids.begin(), openai.stop_ids.end(), id) == openai.stop_ids.end())
      openai.stop_ids.push_back(id);
  if (done < scan.samples) {
    BatchRunner runner(e, tok, o, scan, journal, progress, in.shared_ids, openai);
    try {
      runner.run();
      abandoned = runner.abandoned();
      saved = runner.tokens_saved();
      states = runner.shared_states();
    } catch (...) {
      progress.clear();
      journal.sync();
      throw;
    }
  }
  journal.sync();
  progress.clear();
  fmt::print(stderr, "batch: {}; {} tokens fed to the model{}\n", progress.summary(),
             e.tokens_processed(),
             o.auto_prefix ? fmt::format(", {} prompt tokens saved by {} shared prefix state(s)",
                                         saved, states)
                           : "");
  if (progress.done() < progress.total()) {
    fmt::print(stderr,
               "batch: stopped by {}: {} of {} records are in '{}' ({} unfinished samples "
               "abandoned); run the same command again to resume\n",
               stop_requested() ? stop_signal_name(stop_signal()) : "a stop request",
               progress.done(), progress.total(), o.output, abandoned);
    return kBatchStopped;
  }
  if (o.ordered) {
    std::unordered_map<std::string_view, uint64_t> position;  // id key -> line of the scan
    for (size_t i = 0; i < scan.lines.size(); ++i) position.emplace(scan.lines[i].key, i);
    journal.rewrite_in_order([&](std::string_view key, int index) {
      auto it = position.find(key);
      return it == position.end() ? UINT64_MAX : it->second * uint64_t(kMaxSamples) + uint64_t(index);
    });
  }
  fmt::print(stderr, "batch: complete: {} records in '{}'{}{}\n", progress.total(), o.output,
             o.ordered ? " (in input order)" : "",
             scan.rejected
                 ? fmt::format(", {} line(s) rejected (see '{}')", scan.rejected, rejects_path)
                 : "");
  return 0;
}

}  // namespace

uint64_t record_seed(uint64_t job_seed, const std::string& id_key, int index) {
  return splitmix64(splitmix64(job_seed ^ fnv1a64(id_key.data(), id_key.size())) + uint64_t(index));
}

namespace {

void check_batch_options(const BatchOptions& o) {
  if (o.input.empty() || o.output.empty()) fail("give --input and --output");
  if (o.defaults.n < 1 || o.defaults.n > kMaxSamples)
    fail("--n must be in [1, {}] (got {})", kMaxSamples, o.defaults.n);
  if (o.defaults.max_tokens < 0 || o.defaults.max_tokens > kMaxTokens)
    fail("--max-tokens must be in [0, {}] (got {})", kMaxTokens, o.defaults.max_tokens);
  validate(o.defaults.sampling);
  for (const auto& s : o.defaults.stop)
    if (s.empty()) fail("--stop must not be empty");
  if (o.auto_prefix_min < 1)
    fail("--auto-prefix-min must be at least 1 (got {})", o.auto_prefix_min);
  if (o.auto_prefix_states < 1 || o.auto_prefix_states > 4096)
    fail("--auto-prefix-states must be in [1, 4096] (got {})", o.auto_prefix_states);
}

}  // namespace

int run_batch(const BatchOptions& o) {
  as_input_error([&] { check_batch_options(o); });
  install_stop_handlers();  // run_cluster makes worker ranks ignore SIGTERM
  ClusterOptions cluster = o.cluster;
  // The shared states' slots, on every stage beside those of the running sequences.
  if (o.auto_prefix) cluster.extra_slots += o.auto_prefix_states;
  return run_cluster(cluster, [&](Engine& e) { return batch_body(e, o); });
}

}  // namespace rwkvpp
