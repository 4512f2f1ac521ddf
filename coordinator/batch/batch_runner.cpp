// The batch job's scheduler on the engine (batch_runner.h).
#include "coordinator/batch/batch_runner.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <string_view>

#include "common/error.h"
#include "coordinator/partition.h"
#include "coordinator/signals.h"

namespace rwkvpp {

using nlohmann::ordered_json;

// One input line being generated.
struct BatchRunner::Line {
  BatchItem item;
  std::vector<std::unique_ptr<Group>> groups;  // one per prompt with choices to do
  std::vector<TextResult> results;             // OpenAI: per choice, filled as they finish
  int open = 0;                                // choices not back yet
  int prompt_tokens = 0;                       // OpenAI usage: over every choice
  bool abandoned = false;                      // a choice was cancelled: nothing is written
};

// One prompt of a line, and the choices generated from it.
struct BatchRunner::Group {
  explicit Group(AutoPrefix* a) : sharing(a) {}
  ~Group() {  // out of the prefix sharing's view, its shared states unpinned
    if (!sharing) return;
    sharing->done(start);
    sharing->remove(&ids);
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  AutoPrefix* sharing = nullptr;  // automatic prefix sharing, or null
  AutoPrefix::Start start;        // where sharing started it (its pins)
  Line* line = nullptr;
  std::vector<int32_t> ids;  // the prompt's tokens (after the --prefix-file)
  std::vector<int> choices;  // choice indices to generate (records: the sample index)
  int waiting = 0;           // choices whose result has not come back
  int from = -1;             // the state it continues (a shared one, the --prefix-file's), or -1
  size_t skip = 0;           // leading tokens of `ids` that state has read
  int prefix = -1;           // kept state holding the prompt's tokens but the last; -1: none
  int prompt_tokens = 0;     // --prefix-file + prompt
};

BatchRunner::BatchRunner(Engine& e, const Tokenizer& tok, const BatchOptions& o,
                         const InputScan& scan, Journal& j, Progress& p,
                         std::vector<int32_t> shared_ids, OpenAIOutput openai)
    : e_(e),
      tok_(tok),
      o_(o),
      scan_(scan),
      reader_(o.input, scan.format),
      j_(j),
      p_(p),
      shared_ids_(std::move(shared_ids)),
      openai_(std::move(openai)) {
  budget_ = std::max(1, e_.limits().max_slots - (shared_ids_.empty() ? 0 : 1) -
                            (o_.auto_prefix ? o_.auto_prefix_states : 0));
}

BatchRunner::~BatchRunner() = default;

void BatchRunner::run() {
  struct Attach {
    explicit Attach(Engine* e) { stop_engine_on_signal(e); }
    ~Attach() { stop_engine_on_signal(nullptr); }
  } attach(&e_);
  struct Feed {  // the progress line's token counts, while the runner lives
    Feed(Progress& p, BatchRunner* r) : p_(p) {
      p_.set_feed([r] { return FeedCounts{r->e_.tokens_processed(), r->tokens_saved()}; });
    }
    ~Feed() { p_.set_feed(nullptr); }
    Progress& p_;
  } feed(p_, this);
  if (!shared_ids_.empty()) shared_ = e_.add_prefix(shared_ids_);
  if (o_.auto_prefix) {
    const ModelConfig& cfg = e_.config();
    auto_ = std::make_unique<AutoPrefix>(e_, size_t(o_.auto_prefix_min),
                                         size_t(o_.auto_prefix_states),
                                         uint64_t(cfg.n_layer) * layer_state_bytes(cfg), shared_);
  }
  refill();
  e_.run();
  // Every sequence has finished (or was cancelled): give the kept states back.
  for (int id : to_release_) release(id);
  for (auto& [line, l] : lines_)
    for (auto& g : l->groups)
      if (g->prefix >= 0) release(g->prefix);
  lines_.clear();  // unpins the shared states
  ahead_.clear();
  if (auto_) {
    try {
      auto_->release_all();
    } catch (...) {
      note_error(std::current_exception());
    }
  }
  if (shared_ >= 0) release(shared_);
  if (error_) std::rethrow_exception(error_);
}

void BatchRunner::release(int prefix) {
  try {
    e_.release_prefix(prefix);
  } catch (...) {
    note_error(std::current_exception());
  }
}

void BatchRunner::note_error(std::exception_ptr ex) {
  if (!error_) error_ = ex;
  e_.request_stop();
}

// Starts lines while the engine has room, keeping lines read ahead for the prefix sharing to
// see; callbacks call it again as samples finish.
void BatchRunner::refill() {
  const size_t ahead = auto_ ? kReadAhead : 1;
  try {
    while (!stopping()) {
      while (ahead_.size() < ahead && next_ < scan_.lines.size())
        if (auto l = read_line(scan_.lines[next_++])) ahead_.push_back(std::move(l));
      if (ahead_.empty() || !(live_ < budget_ || lines_.empty())) break;
      std::unique_ptr<Line> l = std::move(ahead_.front());
      ahead_.pop_front();
      start_line(std::move(l));
    }
  } catch (...) {
    note_error(std::current_exception());
  }
}

// Reads and tokenizes a line's prompts (null when its records are all in the output); its
// prompts come into the prefix sharing's view.
std::unique_ptr<BatchRunner::Line> BatchRunner::read_line(const LineRef& ref) {
  std::vector<int> todo;  // records not in the output yet
  for (int i = 0; i < ref.n; ++i)
    if (!j_.has(ref.key, i)) todo.push_back(i);
  if (todo.empty()) return nullptr;
  auto owned = std::make_unique<Line>();
  Line& l = *owned;
  l.item = reader_.read(ref, o_.defaults);
  const bool openai = l.item.format == InputFormat::OpenAI;
  if (openai) {  // its one record holds every choice
    todo.clear();
    for (int c = 0; c < l.item.choices(); ++c) todo.push_back(c);
    l.results.resize(todo.size());
  }
  const int n = l.item.n;
  for (size_t p = 0; p < l.item.prompts.size(); ++p) {
    auto g = std::make_unique<Group>(nullptr);
    g->line = &l;
    for (int c : todo)
      if (c / n == int(p)) g->choices.push_back(c);
    if (g->choices.empty()) continue;
    const PromptInput& in = l.item.prompts[p];
    g->ids = in.is_ids ? in.ids : tok_.encode(in.text);
    if (g->ids.empty()) fail("--input line {}: the prompt encodes to no tokens", ref.line);
    g->prompt_tokens = int(shared_ids_.size() + g->ids.size());
    g->from = shared_;
    g->waiting = int(g->choices.size());
    l.open += g->waiting;
    l.prompt_tokens += g->prompt_tokens * n;
    if (auto_) {
      auto_->add(&g->ids);
      g->sharing = auto_.get();
    }
    l.groups.push_back(std::move(g));
  }
  return owned;
}

void BatchRunner::start_line(std::unique_ptr<Line> owned) {
  Line& l = *owned;
  lines_.emplace(l.item.line, std::move(owned));
  for (auto& g : l.groups) start_group(*g);
}

void BatchRunner::start_group(Group& g) {
  live_ += g.waiting;
  if (auto_) {  // the prompt's tokens but the last may come from shared states
    g.start = auto_->start(g.ids, g.ids.size() - 1);
    g.from = g.start.from;
    g.skip = g.start.skip;
  }
  if (g.ids.size() - g.skip == 1) {  // nothing to fork from but the state it continues
    start_samples(g);
    return;
  }
  // The prompt's tokens but the last, read once into a state that every sample continues.
  Request r;
  r.prompt.assign(g.ids.begin() + long(g.skip), g.ids.end() - 1);
  r.prefix = g.from;
  r.max_tokens = 0;
  r.keep_state = true;
  Group* gp = &g;
  r.on_finish = [this, gp](Finish why) { prefix_done(*gp, why); };
  ++live_;
  g.prefix = e_.submit(std::move(r));
}

void BatchRunner::prefix_done(Group& g, Finish why) {
  if (why == Finish::Cancelled || stopping()) {
    // Stopping: the samples are abandoned (redone on resume). The kept state cannot be
    // released from inside its own callback; run() does it afterwards.
    Line& l = *g.line;
    abandoned_ += uint64_t(g.waiting);
    live_ -= g.waiting + 1;
    l.open -= g.waiting;
    l.abandoned = true;
    g.waiting = 0;
    to_release_.push_back(std::exchange(g.prefix, -1));
    if (l.open == 0) lines_.erase(l.item.line);  // g is gone
    return;
  }
  try {
    // The kept state has read what it needed of the shared ones.
    if (auto_) auto_->done(g.start);
    start_samples(g);
  } catch (...) {
    note_error(std::current_exception());
  }
}

void BatchRunner::start_samples(Group& g) {
  const BatchItem& it = g.line->item;
  std::vector<int> choices = g.choices;
  for (int c : choices) {
    TextOptions t;
    t.max_tokens = it.max_tokens;
    t.sampling = it.sampling;
    t.sampling.seed = it.has_seed ? it.sampling.seed + uint64_t(c)
                                  : record_seed(o_.defaults.sampling.seed, it.key, c);
    t.stop = it.stop;
    t.stop_ids = it.format == InputFormat::OpenAI ? openai_.stop_ids : o_.stop_ids;
    t.logprobs = it.format == InputFormat::OpenAI ? it.logprobs : o_.logprobs;
    std::vector<int32_t> prompt = g.prefix >= 0
                                      ? std::vector<int32_t>{g.ids.back()}
                                      : std::vector<int32_t>(g.ids.begin() + long(g.skip), g.ids.end());
    Group* gp = &g;
    Request r = make_text_request(
        tok_, std::move(prompt), t, [this](std::string_view) { p_.tick(); },
        [this, gp, c](TextResult res) { sample_done(*gp, c, std::move(res)); });
    r.prefix = g.prefix >= 0 ? g.prefix : g.from;
    e_.submit(std::move(r));
  }
}

void BatchRunner::write_record(Line& l, int choice, const TextResult& res) {
  ordered_json rec;
  rec["id"] = ordered_json(l.item.id);
  rec["index"] = choice;
  rec["text"] = res.text;
  rec["finish_reason"] = finish_name(res.finish);
  rec["prompt_tokens"] = l.groups.front()->prompt_tokens;
  rec["completion_tokens"] = res.completion_tokens;
  if (o_.logprobs) rec["logprobs"] = res.logprobs;
  if (o_.token_ids) rec["token_ids"] = res.ids;
  // Text that is not valid UTF-8 (a sample may end inside a character) is written with U+FFFD.
  j_.append(rec.dump(-1, ' ', false, ordered_json::error_handler_t::replace));
  p_.record(uint64_t(res.completion_tokens));
}

void BatchRunner::sample_done(Group& g, int choice, TextResult res) {
  Line& l = *g.line;
  try {
    if (res.finish == Finish::Cancelled) {
      ++abandoned_;
      l.abandoned = true;
    } else if (l.item.format == InputFormat::OpenAI) {
      l.results[size_t(choice)] = std::move(res);
    } else {
      write_record(l, choice, res);
    }
  } catch (...) {
    note_error(std::current_exception());
  }
  --live_;
  --l.open;
  if (--g.waiting == 0 && g.prefix >= 0) {
    --live_;
    release(std::exchange(g.prefix, -1));
  }
  if (l.open == 0) line_done(l);  // l and g are gone
  refill();
}

void BatchRunner::line_done(Line& l) {
  try {
    if (l.item.format == InputFormat::OpenAI && !l.abandoned) {
      j_.append(openai_output_line(l.item, l.results, l.prompt_tokens, openai_));
      uint64_t tokens = 0;
      for (const TextResult& r : l.results) tokens += uint64_t(r.completion_tokens);
      p_.record(tokens);
    }
  } catch (...) {
    note_error(std::current_exception());
  }
  lines_.erase(l.item.line);
}

}  // namespace rwkvpp
