// The engine side of `rwkvpp serve`: jobs (one HTTP generation request: its choices, already
// tokenized) travel from the HTTP threads to the engine through a thread-safe ServeQueue; the
// ServeLoop runs on rank 0's main thread, the only thread that calls the Engine. It admits
// queued jobs while the engine has state slots for all their choices (continuous batching: a job
// joins the running batch at the next step), turns generated tokens into text (stop strings,
// whole UTF-8 characters) and hands them to the job's sink, cancels what clients abandon (their
// slots are free within one step), enforces the total request timeout, and on SIGTERM stops
// admitting, lets running jobs finish for a grace period, cuts the rest, and returns.
// With a state cache (ServeLoopOptions), a choice starts from the deepest kept state its prompt
// begins with and keeps states while it reads (docs/serve.md, the state cache): entries are
// Engine prefixes in the slots set aside for them, pinned while a choice started from them runs.
//
// Threads: ServeQueue's methods may be called from any thread. A JobSink is called on the
// engine thread only; it must not block or throw (it hands the event to the HTTP side).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/serve/metrics.h"
#include "coordinator/serve/openai_response.h"
#include "coordinator/serve/state_cache.h"
#include "coordinator/textgen.h"

namespace rwkvpp {

class Engine;

// Receives a job's output, on the engine thread; events of a choice arrive in order, on_end once
// after the last event (also when the job never ran: refused at shutdown, or abandoned).
class JobSink {
 public:
  virtual ~JobSink() = default;
  virtual void on_event(ChoiceEvent e) = 0;
  virtual void on_end(JobEnd end) = 0;
};

struct Job {
  struct Choice {
    std::vector<int32_t> prompt;  // token ids, in the model's vocabulary, not empty
    uint64_t seed = 0;
    // Token counts, ascending, below prompt.size(), where a chat message ends (a system prompt
    // shared by many requests, a history resent with a new question): the state cache keeps
    // the state there when it reads this prompt.
    std::vector<size_t> boundaries;
  };
  std::vector<Choice> choices;  // in index order
  TextOptions text;             // max_tokens, sampling (seed: per choice), stop strings and ids
  double timeout_s = 0;         // total time from arrival; 0: none
  std::shared_ptr<JobSink> sink;
  // Set by ServeQueue::submit.
  uint64_t id = 0;
  std::chrono::steady_clock::time_point arrived;
};

// Where the server is in its life, for /ready and for refusing work.
enum class ServePhase { Loading, Serving, Stopping };

struct ServeStatus {
  ServePhase phase = ServePhase::Loading;
  std::string not_ready;  // why /ready says 503 while serving (a stage unreachable), or empty
  int waiting = 0, running = 0;
};

enum class Admission { Queued, QueueFull, NotServing };

// The hand-over between the HTTP threads and the engine thread.
class ServeQueue {
 public:
  explicit ServeQueue(int max_waiting) : max_waiting_(max_waiting) {}
  // Queues a job (sets its id and arrival): QueueFull when --max-waiting jobs already wait,
  // NotServing while loading or stopping.
  Admission submit(std::shared_ptr<Job> job);
  // Asks for a job to be cancelled (a client went away); unknown or finished ids are ignored.
  void cancel(uint64_t job_id, CancelReason why);
  ServeStatus status() const;

  // Engine side.
  struct Taken {
    std::vector<std::shared_ptr<Job>> jobs;
    std::vector<std::pair<uint64_t, CancelReason>> cancels;
  };
  Taken take();
  // Waits until something is submitted or cancelled, or `timeout` passes.
  void wait(std::chrono::milliseconds timeout);
  void set_phase(ServePhase p);
  void publish(const std::string& not_ready, int running);
  void left_queue(int n);  // n jobs left the waiting state (admitted, or ended while waiting)

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int max_waiting_;
  uint64_t next_id_ = 1;
  Taken inbox_;
  ServeStatus status_;
  int queued_ = 0;  // submitted and not yet admitted into the engine (inbox + ServeLoop's queue)
};

struct ServeLoopOptions {
  double shutdown_grace_s = 2;  // after SIGTERM, how long running jobs may go on
  double ready_silence_s = 5;   // /ready says 503 when a stage is silent this long
  // The state cache (state_cache.h): its byte budget, and the engine's state slots set aside
  // for its entries (ClusterOptions::extra_slots; the rest run requests). 0 entries: no cache.
  uint64_t state_cache_bytes = 0;
  size_t state_cache_entries = 0;
};

class ServeLoop {
 public:
  ServeLoop(Engine& e, const Tokenizer& tok, ServeQueue& q, ServeMetrics& m, ServeLoopOptions o);
  ~ServeLoop();
  // Serves until `stop()` returns true (polled; SIGTERM's flag) and every job has ended.
  // Throws what the engine throws (a lost stage); jobs still open then are not ended.
  void run(const std::function<bool()>& stop);

 private:
  struct Running;
  void take_commands();
  void admit();
  void start(std::shared_ptr<Job> job);
  void cancel(Running& r, CancelReason why);
  void on_token(Running& r, int index, int32_t id, float logprob);
  void on_finish(Running& r, int index, Finish why);
  void check_deadlines(std::chrono::steady_clock::time_point now);
  void publish(std::chrono::steady_clock::time_point now, bool force = false);
  void begin_stop(std::chrono::steady_clock::time_point now);
  void end_waiting(const ApiError& why);
  void use_cache(Running& r, int index, Request& req);
  void release(std::vector<int>& handles);  // evicted or displaced cache entries
  void note_cache();                        // the cache's gauges into the metrics

  std::unique_ptr<StateCache> cache_;

  Engine& e_;
  const Tokenizer& tok_;
  ServeQueue& q_;
  ServeMetrics& m_;
  ServeLoopOptions o_;
  int slots_ = 0;  // free slots (choices the engine can take now)
  std::deque<std::shared_ptr<Job>> waiting_;
  std::map<uint64_t, std::unique_ptr<Running>> running_;
  std::vector<uint64_t> ended_;  // jobs to forget (not from inside their own callbacks)
  bool stopping_ = false;
  std::chrono::steady_clock::time_point grace_end_, next_publish_;
};

}  // namespace rwkvpp
