// The engine thread of rwkvpp serve: ServeQueue (the hand-over from the HTTP threads) and
// ServeLoop (admission, text streaming, cancellation, timeouts, shutdown). See serve_loop.h.
#include "coordinator/serve/serve_loop.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "coordinator/engine.h"
#include "coordinator/partition.h"

namespace rwkvpp {

using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

ApiError shutdown_error() {
  return ApiError(503, "the server is shutting down (SIGTERM); this generation was cut short", {},
                  "server_shutdown", "server_error");
}

}  // namespace

// ---- ServeQueue (any thread) ----

Admission ServeQueue::submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.phase != ServePhase::Serving) return Admission::NotServing;
    if (queued_ >= max_waiting_) return Admission::QueueFull;
    job->id = next_id_++;
    job->arrived = Clock::now();
    ++queued_;
    inbox_.jobs.push_back(std::move(job));
  }
  cv_.notify_one();
  return Admission::Queued;
}

void ServeQueue::cancel(uint64_t job_id, CancelReason why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox_.cancels.emplace_back(job_id, why);
  }
  cv_.notify_one();
}

ServeStatus ServeQueue::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  ServeStatus s = status_;
  s.waiting = queued_;
  return s;
}

ServeQueue::Taken ServeQueue::take() {
  std::lock_guard<std::mutex> lock(mu_);
  Taken t = std::move(inbox_);
  inbox_ = {};
  return t;
}

void ServeQueue::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !inbox_.jobs.empty() || !inbox_.cancels.empty(); });
}

void ServeQueue::set_phase(ServePhase p) {
  std::lock_guard<std::mutex> lock(mu_);
  status_.phase = p;
}

void ServeQueue::publish(const std::string& not_ready, int running) {
  std::lock_guard<std::mutex> lock(mu_);
  status_.not_ready = not_ready;
  status_.running = running;
}

void ServeQueue::left_queue(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  queued_ -= n;
}

// ---- ServeLoop (the engine thread) ----

struct ServeLoop::Running {
  std::shared_ptr<Job> job;
  struct Choice {
    explicit Choice(const std::vector<std::string>& stop) : stream(stop) {}
    int engine_id = -1;
    TextStream stream;
    std::vector<TokenLogprob> logprobs;  // of tokens whose text is not out yet
    Clock::time_point last;              // when its last token came
    int tokens = 0;
    bool done = false;
    int pinned = -1;    // the cache entry it started from (pinned until it finishes), or -1
    size_t cached = 0;  // prompt tokens that entry had read
  };
  std::vector<Choice> choices;
  int open = 0;  // choices not finished
  int prompt_tokens = 0, completion_tokens = 0;
  bool got_token = false;
  bool cancelled = false;
  CancelReason why = CancelReason::Disconnect;
};

ServeLoop::ServeLoop(Engine& e, const Tokenizer& tok, ServeQueue& q, ServeMetrics& m,
                     ServeLoopOptions o)
    : e_(e), tok_(tok), q_(q), m_(m), o_(o) {
  if (o_.state_cache_entries == 0) return;
  // The whole pipeline's state of one sequence (each stage holds its own layers' part).
  const ModelConfig& cfg = e_.config();
  const uint64_t entry = uint64_t(cfg.n_layer) * layer_state_bytes(cfg);
  if (int64_t(o_.state_cache_entries) >= e_.limits().max_slots)
    fail("the state cache's {} entries leave none of the engine's {} state slots to requests",
         o_.state_cache_entries, e_.limits().max_slots);
  cache_ = std::make_unique<StateCache>(o_.state_cache_bytes, entry, o_.state_cache_entries);
  m_.cache_capacity_bytes = int64_t(o_.state_cache_bytes);
  m_.cache_entry_bytes = int64_t(entry);
}

ServeLoop::~ServeLoop() {
  // Only reached with jobs open when the engine failed: answer them before the process goes.
  const ApiError failed(503, "the pipeline failed; see the server's log", {}, "server_error",
                        "server_error");
  for (auto& [id, r] : running_)
    if (r->open > 0) r->job->sink->on_end(JobEnd{r->prompt_tokens, r->completion_tokens, failed});
  end_waiting(failed);
}

void ServeLoop::end_waiting(const ApiError& why) {
  for (auto& job : waiting_) job->sink->on_end(JobEnd{0, 0, why});
  q_.left_queue(int(waiting_.size()));
  waiting_.clear();
}

void ServeLoop::take_commands() {
  ServeQueue::Taken t = q_.take();
  for (auto& job : t.jobs) {
    if (stopping_) {
      job->sink->on_end(JobEnd{0, 0, shutdown_error()});
      q_.left_queue(1);
    } else {
      waiting_.push_back(std::move(job));
    }
  }
  for (auto [id, why] : t.cancels) {
    if (auto it = running_.find(id); it != running_.end()) {
      cancel(*it->second, why);
      continue;
    }
    auto w =
        std::find_if(waiting_.begin(), waiting_.end(), [id = id](auto& j) { return j->id == id; });
    if (w == waiting_.end()) continue;  // already ended
    m_.count_cancel(why);
    (*w)->sink->on_end(JobEnd{0, 0, ApiError(499, "the client went away", {}, "cancelled")});
    waiting_.erase(w);
    q_.left_queue(1);
  }
}

void ServeLoop::admit() {
  // In arrival order: a job waits until the engine has a slot for every one of its choices.
  while (!stopping_ && !waiting_.empty() && int(waiting_.front()->choices.size()) <= slots_) {
    std::shared_ptr<Job> job = std::move(waiting_.front());
    waiting_.pop_front();
    q_.left_queue(1);
    start(std::move(job));
  }
}

void ServeLoop::start(std::shared_ptr<Job> job) {
  auto owned = std::make_unique<Running>();
  Running& r = *owned;
  r.job = job;
  for (const Job::Choice& c : job->choices) {
    r.choices.emplace_back(job->text.stop);
    r.prompt_tokens += int(c.prompt.size());
  }
  r.open = int(job->choices.size());
  slots_ -= r.open;
  ++m_.running;
  m_.prompt_tokens += uint64_t(r.prompt_tokens);
  running_.emplace(job->id, std::move(owned));
  m_.running_at_admission.observe(double(m_.running.load()));
  for (size_t i = 0; i < job->choices.size(); ++i) {
    Request req;
    req.prompt = job->choices[i].prompt;
    req.sampling = job->text.sampling;
    req.sampling.seed = job->choices[i].seed;
    req.max_tokens = job->text.max_tokens;
    req.stop_ids = job->text.stop_ids;
    Running* rp = &r;
    const int index = int(i);
    req.on_token = [this, rp, index](int32_t id, float lp) {
      on_token(*rp, index, id, lp);
      return !rp->choices[size_t(index)].stream.stopped();
    };
    req.on_finish = [this, rp, index](Finish f) { on_finish(*rp, index, f); };
    if (cache_) use_cache(r, index, req);
    // The HTTP side checked the prompt against the vocabulary; a refusal here is a bug.
    r.choices[i].engine_id = e_.submit(std::move(req));
  }
}

void ServeLoop::use_cache(Running& r, int index, Request& req) {
  const Job::Choice& jc = r.job->choices[size_t(index)];
  const std::vector<int32_t>& p = jc.prompt;
  Running::Choice& c = r.choices[size_t(index)];
  // The request reads at least its last prompt token itself: its logits give the first sample.
  const StateCache::Match hit = cache_->lookup(p, p.size() - 1);
  if (hit.handle >= 0) {
    cache_->pin(hit.handle);
    c.pinned = hit.handle;
    c.cached = hit.length;
    req.prefix = hit.handle;
    req.prompt.erase(req.prompt.begin(), req.prompt.begin() + long(hit.length));
    ++m_.cache_hits;
    m_.cache_hit_tokens += hit.length;
  } else {
    ++m_.cache_misses;
  }
  for (int j = 0; j < index; ++j)  // n > 1: one choice keeps the states of a prompt
    if (r.job->choices[size_t(j)].prompt == p) return;
  // Where to keep states while it reads: where its chat messages end, where it branches off
  // the prompts seen before (so the next prompt that shares that much hits), and its whole
  // prompt but the last token (the same prompt again, or a conversation that continues it).
  std::vector<size_t> at = jc.boundaries;
  at.push_back(hit.shared);
  at.push_back(p.size() - 1);
  std::sort(at.begin(), at.end());
  at.erase(std::unique(at.begin(), at.end()), at.end());
  for (size_t x : at)
    if (x > hit.length && x < p.size()) req.snapshot_at.push_back(x - hit.length);
  if (req.snapshot_at.empty()) return;
  Running* rp = &r;
  req.snapshot_wanted = [this, rp, index](size_t rel) {
    const Running::Choice& ch = rp->choices[size_t(index)];
    const std::vector<int32_t>& tokens = rp->job->choices[size_t(index)].prompt;
    std::vector<int> released;
    const bool room = cache_->make_room({tokens.data(), ch.cached + rel}, released);
    release(released);
    return room;
  };
  req.on_snapshot = [this, rp, index](size_t rel, int id) {
    const Running::Choice& ch = rp->choices[size_t(index)];
    const std::vector<int32_t>& tokens = rp->job->choices[size_t(index)].prompt;
    std::vector<int> released;
    cache_->insert({tokens.data(), ch.cached + rel}, id, released);
    ++m_.cache_snapshots;
    release(released);
  };
}

void ServeLoop::release(std::vector<int>& handles) {
  for (int h : handles) e_.release_prefix(h);
  handles.clear();
  note_cache();
}

void ServeLoop::note_cache() {
  m_.cache_bytes = int64_t(cache_->bytes());
  m_.cache_entries = int64_t(cache_->entries());
  m_.cache_evictions = cache_->evictions();
}

void ServeLoop::on_token(Running& r, int index, int32_t id, float logprob) {
  const auto now = Clock::now();
  Running::Choice& c = r.choices[size_t(index)];
  if (!r.got_token) m_.ttft.observe(seconds(now - r.job->arrived));
  if (c.tokens > 0) m_.inter_token.observe(seconds(now - c.last));
  r.got_token = true;
  c.last = now;
  ++c.tokens;
  ++r.completion_tokens;
  ++m_.generation_tokens;
  const auto& stop_ids = r.job->text.stop_ids;
  if (std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end())
    return;  // ends it; no text
  std::string bytes = token_bytes_or_empty(tok_, id);
  if (r.job->text.logprobs) c.logprobs.push_back({bytes, logprob});
  std::string text = c.stream.push(bytes);
  if (!text.empty())
    r.job->sink->on_event(
        ChoiceEvent{index, std::move(text), std::exchange(c.logprobs, {}), nullptr});
}

void ServeLoop::on_finish(Running& r, int index, Finish why) {
  Running::Choice& c = r.choices[size_t(index)];
  c.done = true;
  --r.open;
  if (c.pinned >= 0) cache_->unpin(std::exchange(c.pinned, -1));
  if (why != Finish::Cancelled) {
    const char* reason = why == Finish::Stop || c.stream.stopped() ? "stop" : "length";
    r.job->sink->on_event(
        ChoiceEvent{index, c.stream.finish(), std::exchange(c.logprobs, {}), reason});
  }
  if (r.open > 0) return;
  slots_ += int(r.choices.size());
  --m_.running;
  JobEnd end{r.prompt_tokens, r.completion_tokens, std::nullopt};
  if (r.cancelled) {
    m_.count_cancel(r.why);
    if (r.why == CancelReason::Shutdown)
      end.error = shutdown_error();
    else if (r.why == CancelReason::Timeout)
      end.error = ApiError(
          504,
          fmt::format("the request ran longer than the server's limit of {} s (--request-timeout)",
                      r.job->timeout_s),
          {}, "timeout", "server_error");
    else
      end.error = ApiError(499, "the client went away", {}, "cancelled");
  } else {
    ++m_.completed;
    m_.e2e.observe(seconds(Clock::now() - r.job->arrived));
  }
  r.job->sink->on_end(std::move(end));
  ended_.push_back(r.job->id);  // forgotten after this callback
}

void ServeLoop::cancel(Running& r, CancelReason why) {
  if (r.cancelled) return;
  r.cancelled = true;
  r.why = why;
  for (const Running::Choice& c : r.choices)
    if (!c.done) e_.cancel(c.engine_id);
}

void ServeLoop::check_deadlines(Clock::time_point now) {
  const bool cut = stopping_ && now >= grace_end_;
  for (auto& [id, r] : running_) {
    if (cut)
      cancel(*r, CancelReason::Shutdown);
    else if (r->job->timeout_s > 0 && seconds(now - r->job->arrived) > r->job->timeout_s)
      cancel(*r, CancelReason::Timeout);
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    const Job& j = **it;
    if (j.timeout_s > 0 && seconds(now - j.arrived) > j.timeout_s) {
      m_.count_cancel(CancelReason::Timeout);
      j.sink->on_end(JobEnd{
          0, 0,
          ApiError(504, "the request waited longer than the server's limit (--request-timeout)", {},
                   "timeout", "server_error")});
      it = waiting_.erase(it);
      q_.left_queue(1);
    } else {
      ++it;
    }
  }
}

void ServeLoop::publish(Clock::time_point now, bool force) {
  if (now < next_publish_ && !force) return;
  next_publish_ = now + std::chrono::milliseconds(100);
  const std::vector<double> silence = e_.stage_silence_s();
  const std::vector<StatsMsg> stats = e_.stage_stats();
  std::vector<StageMetrics> stages;
  std::string not_ready;
  for (size_t s = 0; s < silence.size(); ++s) {
    const StagePlan& p = e_.plan()[s];
    StageMetrics st{int(s),     e_.stage_ranks()[s], p.first,
                    p.last,     stats[s].compute_s,  stats[s].wait_s,
                    silence[s], stats[s].tokens,     stats[s].steps};
    if (not_ready.empty() && silence[s] > o_.ready_silence_s)
      not_ready =
          fmt::format("stage {} (rank {}, layers {}-{}) has not been heard from for {:.1f} s", s,
                      st.rank, p.first, p.last - 1, silence[s]);
    stages.push_back(st);
  }
  m_.set_stages(std::move(stages));
  q_.publish(not_ready, int(running_.size()));
  m_.waiting = q_.status().waiting;
}

void ServeLoop::begin_stop(Clock::time_point now) {
  stopping_ = true;
  q_.set_phase(ServePhase::Stopping);
  grace_end_ = now + std::chrono::milliseconds(int64_t(o_.shutdown_grace_s * 1000));
  end_waiting(shutdown_error());
}

void ServeLoop::run(const std::function<bool()>& stop) {
  slots_ = e_.limits().max_slots - int(cache_ ? cache_->max_entries() : 0);
  m_.slots = slots_;
  q_.set_phase(ServePhase::Serving);
  for (;;) {
    const auto now = Clock::now();
    if (!stopping_ && stop()) begin_stop(now);
    take_commands();
    admit();
    check_deadlines(now);
    for (uint64_t id : ended_) running_.erase(id);
    ended_.clear();
    const bool busy = e_.poll(std::chrono::milliseconds(1));
    publish(now);
    if (stopping_ && running_.empty() && e_.idle()) break;
    // Idle: sleep until a request comes (the engine is polled at least this often, which keeps
    // the transport's heartbeats going and hears the stages').
    if (!busy && e_.idle()) q_.wait(std::chrono::milliseconds(50));
  }
  for (uint64_t id : ended_) running_.erase(id);
  ended_.clear();
  if (cache_) {  // nothing runs any more: every kept state goes
    std::vector<int> all;
    cache_->clear(all);
    release(all);
  }
  publish(Clock::now(), true);
}

}  // namespace rwkvpp
