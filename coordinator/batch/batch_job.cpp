// The batch job on the coordinator: scan the input, open the journal, then keep the engine fed
// with prompt groups (one input line, its samples) until the input is exhausted or a signal
// stops the job. See batch_job.h.
#include "coordinator/batch/batch_job.h"

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "common/error.h"
#include "coordinator/batch/journal.h"
#include "coordinator/batch/progress.h"
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

// One input line being generated: its samples share the state of its prompt.
struct Group {
  BatchItem item;
  std::vector<int32_t> ids;  // the prompt's tokens (after the shared prefix)
  std::vector<int> todo;     // sample indices not in the output yet
  int waiting = 0;           // samples whose result has not come back
  int prefix = -1;           // engine prefix holding the prompt's tokens but the last; -1: none
  int prompt_tokens = 0;     // shared prefix + prompt
};

class BatchRunner {
 public:
  BatchRunner(Engine& e, const Tokenizer& tok, const BatchOptions& o, const InputScan& scan,
              Journal& j, Progress& p, std::vector<int32_t> shared_ids)
      : e_(e),
        tok_(tok),
        o_(o),
        scan_(scan),
        reader_(o.input),
        j_(j),
        p_(p),
        shared_ids_(std::move(shared_ids)) {
    budget_ = std::max(1, e_.limits().max_slots - (shared_ids_.empty() ? 0 : 1));
  }

  // Runs until the input is exhausted or the engine is asked to stop; rethrows the first error
  // a callback caught.
  void run() {
    struct Attach {
      explicit Attach(Engine* e) { stop_engine_on_signal(e); }
      ~Attach() { stop_engine_on_signal(nullptr); }
    } attach(&e_);
    if (!shared_ids_.empty()) shared_ = e_.add_prefix(shared_ids_);
    refill();
    e_.run();
    // Every sequence has finished (or was cancelled): give the kept states back.
    for (int id : to_release_) release(id);
    for (auto& [line, g] : groups_)
      if (g->prefix >= 0) release(g->prefix);
    groups_.clear();
    if (shared_ >= 0) release(shared_);
    if (error_) std::rethrow_exception(error_);
  }

  uint64_t abandoned() const { return abandoned_; }

 private:
  void release(int prefix) {
    try {
      e_.release_prefix(prefix);
    } catch (...) {
      note_error(std::current_exception());
    }
  }

  void note_error(std::exception_ptr ex) {
    if (!error_) error_ = ex;
    e_.request_stop();
  }

  bool stopping() const { return e_.stop_requested() || error_; }

  // Starts groups while the engine has room; callbacks call it again as samples finish.
  void refill() {
    try {
      while (!stopping() && next_ < scan_.lines.size() && (live_ < budget_ || groups_.empty())) {
        const LineRef& ref = scan_.lines[next_++];
        std::vector<int> todo;
        for (int i = 0; i < ref.n; ++i)
          if (!j_.has(ref.key, i)) todo.push_back(i);
        if (!todo.empty()) start_group(ref, std::move(todo));
      }
    } catch (...) {
      note_error(std::current_exception());
    }
  }

  void start_group(const LineRef& ref, std::vector<int> todo) {
    auto owned = std::make_unique<Group>();
    Group& g = *owned;
    g.item = reader_.read(ref, o_.defaults);
    g.ids = tok_.encode(g.item.prompt);
    if (g.ids.empty()) fail("--input line {}: the prompt encodes to no tokens", ref.line);
    g.prompt_tokens = int(shared_ids_.size() + g.ids.size());
    g.todo = std::move(todo);
    g.waiting = int(g.todo.size());
    groups_.emplace(ref.line, std::move(owned));
    live_ += g.waiting;
    if (g.ids.size() == 1) {  // nothing to fork from but the shared prefix (if any)
      start_samples(g);
      return;
    }
    // The prompt's tokens but the last, read once into a state that every sample continues.
    Request r;
    r.prompt.assign(g.ids.begin(), g.ids.end() - 1);
    r.prefix = shared_;
    r.max_tokens = 0;
    r.keep_state = true;
    Group* gp = &g;
    r.on_finish = [this, gp](Finish why) { prefix_done(*gp, why); };
    ++live_;
    g.prefix = e_.submit(std::move(r));
  }

  void prefix_done(Group& g, Finish why) {
    if (why == Finish::Cancelled || stopping()) {
      // Stopping: the samples are abandoned (redone on resume). The kept state cannot be
      // released from inside its own callback; run() does it afterwards.
      abandoned_ += uint64_t(g.waiting);
      live_ -= g.waiting + 1;
      g.waiting = 0;
      to_release_.push_back(g.prefix);
      groups_.erase(g.item.line);  // g is gone
      return;
    }
    try {
      start_samples(g);
    } catch (...) {
      note_error(std::current_exception());
    }
  }

  void start_samples(Group& g) {
    std::vector<int> todo = g.todo;
    for (int index : todo) {
      TextOptions t;
      t.max_tokens = g.item.max_tokens;
      t.sampling = g.item.sampling;
      t.sampling.seed = g.item.has_seed ? g.item.sampling.seed + uint64_t(index)
                                        : record_seed(o_.defaults.sampling.seed, g.item.key, index);
      t.stop = g.item.stop;
      t.stop_ids = o_.stop_ids;
      t.logprobs = o_.logprobs;
      std::vector<int32_t> prompt = g.prefix >= 0 ? std::vector<int32_t>{g.ids.back()} : g.ids;
      Group* gp = &g;
      Request r = make_text_request(
          tok_, std::move(prompt), t, [this](std::string_view) { p_.tick(); },
          [this, gp, index](TextResult res) { sample_done(*gp, index, std::move(res)); });
      r.prefix = g.prefix >= 0 ? g.prefix : shared_;
      e_.submit(std::move(r));
    }
  }

  void sample_done(Group& g, int index, TextResult res) {
    try {
      if (res.finish == Finish::Cancelled) {
        ++abandoned_;
      } else {
        ordered_json rec;
        rec["id"] = ordered_json(g.item.id);
        rec["index"] = index;
        rec["text"] = res.text;
        rec["finish_reason"] = finish_name(res.finish);
        rec["prompt_tokens"] = g.prompt_tokens;
        rec["completion_tokens"] = res.completion_tokens;
        if (o_.logprobs) rec["logprobs"] = res.logprobs;
        if (o_.token_ids) rec["token_ids"] = res.ids;
        // Text that is not valid UTF-8 (a sample may end inside a character) is written with
        // U+FFFD.
        j_.append(rec.dump(-1, ' ', false, ordered_json::error_handler_t::replace));
        p_.record(uint64_t(res.completion_tokens));
      }
    } catch (...) {
      note_error(std::current_exception());
    }
    --live_;
    if (--g.waiting == 0) {
      if (g.prefix >= 0) {
        --live_;
        release(g.prefix);
      }
      groups_.erase(g.item.line);  // g is gone
    }
    refill();
  }

  Engine& e_;
  const Tokenizer& tok_;
  const BatchOptions& o_;
  const InputScan& scan_;
  InputReader reader_;
  Journal& j_;
  Progress& p_;
  std::vector<int32_t> shared_ids_;
  int shared_ = -1;
  int budget_ = 1;  // state slots the job keeps busy (prefixes + samples)
  int live_ = 0;
  size_t next_ = 0;                                   // next line of the scan to start
  std::map<int64_t, std::unique_ptr<Group>> groups_;  // by input line
  std::vector<int> to_release_;
  uint64_t abandoned_ = 0;
  std::exception_ptr error_;
};

int batch_body(Engine& e, const BatchOptions& o) {
  if (stop_requested()) return kBatchStopped;
  auto tok = tokenizer_for(o.cluster.model, o.tokenizer);
  const uint64_t fingerprint = ModelReader(o.cluster.model).fingerprint();

  std::vector<int32_t> shared_ids;
  ordered_json prefix_meta = nullptr;
  if (!o.prefix_file.empty()) {
    std::string text = read_text_file(o.prefix_file, "--prefix-file");
    shared_ids = tok->encode(text);
    prefix_meta = {{"path", o.prefix_file},
                   {"bytes", text.size()},
                   {"fnv1a64", hex64(fnv1a64(text.data(), text.size()))},
                   {"tokens", shared_ids.size()}};
  }

  // Scan and validate the input; bad lines go to the rejects file (rewritten on every run).
  const std::string rejects_path = o.rejects.empty() ? o.output + ".rejects.jsonl" : o.rejects;
  // Written beside and renamed into place once the journal is ours (another job may hold it).
  const std::string rejects_tmp = rejects_path + ".tmp";
  std::ofstream rejects(rejects_tmp, std::ios::binary | std::ios::trunc);
  if (!rejects) fail("cannot write --rejects '{}'", rejects_tmp);
  int64_t shown = 0;
  InputScan scan = scan_input(
      o.input, o.defaults,
      [&](const Reject& r) {
        ordered_json j = {{"line", r.line}, {"reason", r.reason}, {"text", r.text}};
        rejects << j.dump(-1, ' ', false, ordered_json::error_handler_t::replace) << '\n';
        if (shown++ < 3) fmt::print(stderr, "batch: {} line {}: {}\n", o.input, r.line, r.reason);
      },
      [] { return stop_requested(); });
  rejects.close();
  if (!rejects) fail("cannot write --rejects '{}'", rejects_tmp);
  if (stop_requested()) {
    std::remove(rejects_tmp.c_str());
    return kBatchStopped;
  }
  if (scan.rejected > 0)
    fmt::print(stderr,
               "batch: {} bad line(s) skipped; each is in '{}' with its line number and reason\n",
               scan.rejected, rejects_path);

  ordered_json meta;
  meta["format"] = "rwkvpp-batch";
  meta["version"] = 1;
  meta["input"] = {{"path", o.input}, {"bytes", scan.bytes}, {"fnv1a64", hex64(scan.hash)}};
  meta["model"] = {{"path", o.cluster.model}, {"fingerprint", hex64(fingerprint)}};
  meta["tokenizer"] = {{"kind", tok->kind()}, {"flag", o.tokenizer}};
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
  std::unique_ptr<Journal> journal_owner;
  try {
    journal_owner = std::make_unique<Journal>(o.output, meta, o.fsync_interval_s);
  } catch (...) {
    std::remove(rejects_tmp.c_str());
    throw;
  }
  Journal& journal = *journal_owner;
  if (std::rename(rejects_tmp.c_str(), rejects_path.c_str()) != 0)
    fail("cannot rename '{}' to --rejects '{}'", rejects_tmp, rejects_path);

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
  uint64_t abandoned = 0;
  if (done < scan.samples) {
    BatchRunner runner(e, *tok, o, scan, journal, progress, shared_ids);
    try {
      runner.run();
      abandoned = runner.abandoned();
    } catch (...) {
      progress.clear();
      journal.sync();
      throw;
    }
  }
  journal.sync();
  progress.clear();
  fmt::print(stderr, "batch: {}; {} tokens fed to the model\n", progress.summary(),
             e.tokens_processed());
  if (progress.done() < progress.total()) {
    fmt::print(stderr,
               "batch: stopped by {}: {} of {} records are in '{}' ({} unfinished samples "
               "abandoned); run the same command again to resume\n",
               stop_requested() ? stop_signal_name(stop_signal()) : "a stop request",
               progress.done(), progress.total(), o.output, abandoned);
    return kBatchStopped;
  }
  fmt::print(stderr, "batch: complete: {} records in '{}'{}\n", progress.total(), o.output,
             scan.rejected
                 ? fmt::format(", {} line(s) rejected (see '{}')", scan.rejected, rejects_path)
                 : "");
  return 0;
}

}  // namespace

uint64_t record_seed(uint64_t job_seed, const std::string& id_key, int index) {
  return splitmix64(splitmix64(job_seed ^ fnv1a64(id_key.data(), id_key.size())) + uint64_t(index));
}

int run_batch(const BatchOptions& o) {
  if (o.input.empty() || o.output.empty()) fail("give --input and --output");
  if (o.defaults.n < 1 || o.defaults.n > kMaxSamples)
    fail("--n must be in [1, {}] (got {})", kMaxSamples, o.defaults.n);
  if (o.defaults.max_tokens < 0 || o.defaults.max_tokens > kMaxTokens)
    fail("--max-tokens must be in [0, {}] (got {})", kMaxTokens, o.defaults.max_tokens);
  validate(o.defaults.sampling);
  for (const auto& s : o.defaults.stop)
    if (s.empty()) fail("--stop must not be empty");
  install_stop_handlers();  // run_cluster makes worker ranks ignore SIGTERM
  return run_cluster(o.cluster, [&](Engine& e) { return batch_body(e, o); });
}

}  // namespace rwkvpp
