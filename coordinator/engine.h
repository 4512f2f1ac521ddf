// The coordinator's scheduler: turns requests (prompt tokens + sampling) into Steps, keeps
// several micro-batches in flight down the pipeline, and hands results back through callbacks.
// Sequences join and leave between steps (continuous batching): each step takes up to
// --max-batch sequences that are not already in flight, a prompt chunk or one decode token each.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/byte_buffer.h"
#include "common/dtype.h"
#include "coordinator/partition.h"
#include "net/transport.h"
#include "protocol/protocol.h"

namespace rwkvpp {

enum class Finish { Length, Stop, Cancelled };
const char* finish_name(Finish f);  // "length", "stop", "cancelled"

struct Request {
  std::vector<int32_t> prompt;  // must not be empty
  SamplingParams sampling;
  int max_tokens = 0;           // tokens to generate after the prompt
  std::vector<int32_t> stop_ids;
  bool logits_all = false;      // deliver logits after every prompt token
  // A prefix from add_prefix(): the sequence starts from the prefix's state (cloned on every
  // stage, nothing re-read) and `prompt` continues after it. -1: start from a fresh state.
  int prefix = -1;
  // Keep the state when the request finishes: its slot stays resident as a prefix whose id is
  // the one submit() returned, until release_prefix(). The state then holds the prompt and
  // every generated token but the last (a sampled token is fed only when generation goes on),
  // so a request continuing it starts its prompt with that last token. Turns of a chat chain
  // this way (each turn continues the previous turn's kept state) and never re-read the past.
  bool keep_state = false;
  // Snapshots within the prompt: when the sequence has read prompt[0, p) for a p here (ascending,
  // 0 < p < prompt.size(); on top of `prefix` when it has one), the engine first asks
  // `snapshot_wanted(p)` (may be empty: yes), and if yes and a state slot is free, copies the
  // state into a new resident prefix, as add_prefix() of those tokens would have made, and
  // hands its id to `on_snapshot(p, id)` (until release_prefix()). A prompt chunk ends at each
  // p, and the copy rides ahead of the next tokens, so nothing is read twice. Nothing has been
  // sampled at such a point, so the prefix carries no penalty counts (rwkvpp serve's state
  // cache). Both callbacks run inside the scheduler: they may call release_prefix() (of another
  // prefix), not submit().
  std::vector<size_t> snapshot_at;
  std::function<bool(size_t p)> snapshot_wanted;
  std::function<void(size_t p, int prefix)> on_snapshot;
  // Called with each generated token; return false to stop the sequence (e.g. a stop string).
  std::function<bool(int32_t id, float logprob)> on_token;
  // Called with the logits after prompt token `pos` ([vocab] floats), when logits_all.
  std::function<void(int64_t pos, const float* logits)> on_logits;
  std::function<void(Finish)> on_finish;
};

struct EngineLimits {
  int max_slots = 64;      // sequences resident at once (state slots on every stage)
  int max_batch = 64;      // sequences per step
  int max_tokens = 512;    // tokens per step
  int chunk = 128;         // prompt tokens per sequence per step
  int microbatches = 0;    // steps in flight (0: default_microbatches(stages))
  int max_logit_rows = 1;  // logit rows per step (message size bound)
};

// Steps in flight by default: two per stage when there are several, so that every stage has
// the next step queued while its last one travels (hidden vectors between stages, the
// coordinator's scheduling); one for a single stage (docs/perf-log.md, pipeline scaling).
inline int default_microbatches(int stages) { return stages > 1 ? 2 * stages : 1; }

// What decides the pipeline's arithmetic (from the stages' Ready messages): the compute dtype
// and, per range of layers, the numerics of the device that computes them (Backend::numerics),
// with neighbouring ranges of the same numerics merged, so that a re-partition over the same
// kind of device gives the same description. Records are reproducible across runs that agree
// on it; `batch_invariant` says whether they also do not depend on batching.
struct PipelineNumerics {
  std::string dtype;
  std::string layers;  // e.g. "0-11 cpu", or "0-5 cpu; 6-11 cuda NVIDIA H100 80GB HBM3 sm_90"
  bool batch_invariant = false;
};

// Recovery from a lost stage (coordinator/engine_recovery.cpp, docs/cluster.md): every stage
// sends the coordinator a snapshot of each live sequence's state every `snapshot_tokens`
// tokens, the engine keeps the tokens fed since each sequence's last complete snapshot, and
// when a stage is lost it has `replace` give the stage's layers to a standby (or, with none
// left and `repartition` on, gives them to the neighbouring stages where the memory their ranks
// offered allows: plan_repartition), restores every stage's slots from the snapshots, replays
// the tokens since them through the whole pipeline and resumes every sequence where it stopped.
struct RecoveryOptions {
  int snapshot_tokens = 1024;
  size_t snapshot_capacity = 0;  // bytes of the largest snapshot piece a stage sends (may send)
  DType dtype = DType::F32;      // the stages' compute dtype (their Assign)
  // Gives stage `stage`'s layers (the lost rank's) to a standby; returns its rank once it has
  // loaded them (its Ready), or -1 when no standby is left. Throws PeerLost when the standby
  // is lost on the way.
  std::function<int(int lost_rank, int stage)> replace;
  // With no standby left: re-partition over the survivors (else the job ends). `offered`: per
  // stage rank, the bytes it offered at its Hello (--memory, or its device's free memory).
  bool repartition = false;
  std::map<int, uint64_t> offered;
  // Per stage, the stages' Ready messages (may be null): a re-partition drops the lost stage's
  // and every re-wiring puts each stage's Ready as it answered (Recovered) in its place.
  std::vector<ReadyMsg>* readies = nullptr;
  // Re-wires the coordinator rank's own stage (when it holds one), in process; returns its
  // Ready as it is then (StageRank::recover).
  std::function<ReadyMsg(const RecoverMsg&, const std::vector<SlotRestore>&)> recover_local;
};

// One recovery, as reported on stderr and to the caller. A loss seen while recovering (a stage,
// or the standby being assigned) starts the recovery again in a new epoch (one more attempt),
// so one recovery may replace several stages.
struct RecoveryReport {
  struct Replaced {
    int lost_rank = -1, stage = -1, standby = -1;
    int first = 0, last = 0;  // the layers [first, last) it took
    double load_seconds = 0;  // the standby's load of the layers
  };
  // A re-partition: rank `rank` took layers [first, last) of lost rank `lost_rank`.
  struct Taken {
    int lost_rank = -1, rank = -1;
    int first = 0, last = 0;
  };
  std::vector<Replaced> replaced;  // in the order they were replaced
  std::vector<Taken> taken;        // in the order they were given
  // Per rank that took layers: the time it spent reading them (the Readys of its Recovereds).
  std::map<int, double> taken_load_seconds;
  double seconds = 0;              // from the first loss being seen to every sequence resuming
  int attempts = 1;                // re-wirings begun (each in a new epoch)
  int32_t epoch = 0;               // the epoch the pipeline resumed in
  int stages = 0;                  // stages the pipeline resumed with
  int sequences = 0;               // slots restored
  int from_snapshots = 0;          // of which from a snapshot (the others: a fresh state)
  uint64_t replayed_tokens = 0;
};

class Engine {
 public:
  // `stage_ranks`: rank of every stage in order; `local_poll` runs the coordinator rank's own
  // stage (when it holds one) and is called from the progress loop.
  Engine(Transport& t, const ModelConfig& cfg, std::vector<int> stage_ranks,
         std::vector<StagePlan> plan, EngineLimits lim, std::function<bool()> local_poll);
  ~Engine();

  // Queues a request; returns its id. Token ids are checked against the vocabulary here.
  int submit(Request r);
  // Reads `tokens` once into a state slot that stays resident until release_prefix(), so that
  // any number of requests (n samples of one prompt, prompts sharing a preamble) start from it.
  // Returns the prefix id for Request::prefix.
  int add_prefix(std::vector<int32_t> tokens);
  // The same for a prefix that continues another (`r.prefix`) and may take snapshots on the way
  // (`r.snapshot_at`, as submit()): `r` only reads (max_tokens 0; its sampling, stop and token
  // callbacks are unused), and its id may be named as a Request::prefix from now on, while it is
  // still being read (unlike a keep_state request's, which only once it has finished).
  int add_prefix(Request r);
  void release_prefix(int id);
  // Runs until every submitted request has finished. Callbacks may call submit(), add_prefix()
  // and release_prefix() (of another sequence) to feed run() as it goes; a finished sequence is
  // forgotten as soon as its on_finish returns, so a run() of millions of requests stays small.
  void run();
  // One turn of run()'s loop, for a caller that keeps its own loop (rwkvpp serve): cancels what
  // cancel() and request_stop() asked for, admits and schedules what it can, drives the local
  // stage, handles an arrived result (callbacks run inside, as in run()) and the stages'
  // heartbeats; then, when it did nothing while steps are in flight, waits up to `wait` on the
  // transport. Returns true when it did work. Call it at least every few seconds even when
  // idle(): it is what keeps this rank's transport heartbeats going and names a silent stage
  // (PeerLost, as run() does).
  bool poll(std::chrono::milliseconds wait);
  // True when no step is in flight and every submitted request has finished (kept prefixes may
  // stay).
  bool idle() const;
  // Cancels request `id` (a submit() id): it ends with Finish::Cancelled and its slot is free
  // for the next step. A sequence not in a step in flight ends at the next turn of poll() or
  // run(); one in flight ends when that step's result comes back, whose token is dropped (so
  // the slot is free within one step). Requests waiting for a prefix that ended cancelled are
  // cancelled too. Returns false when `id` is not a live request (finished, unknown, or a
  // prefix: those go with release_prefix()). Safe from callbacks; not thread-safe.
  bool cancel(int id);
  // Per stage, in order: seconds since the coordinator last heard from it (a result or a
  // heartbeat); 0 for a stage on this rank and for a stage not heard from before the first poll.
  std::vector<double> stage_silence_s() const;
  // Per stage, in order: its statistics as of its last heartbeat (cumulative since it started;
  // a stage on this rank: as of now, through set_local_stats(); default-constructed until the
  // first heartbeat).
  std::vector<StatsMsg> stage_stats() const;
  void set_local_stats(std::function<StatsMsg()> f) { local_stats_ = std::move(f); }
  // Asks run() to return soon: nothing new is admitted or scheduled, the steps in flight are
  // awaited, and every unfinished request ends with Finish::Cancelled (kept states stay until
  // release_prefix()). Only sets an atomic flag: safe from any thread and from a signal
  // handler. The request stands: later run() calls cancel at once.
  void request_stop() noexcept { stop_.store(true, std::memory_order_relaxed); }
  bool stop_requested() const noexcept { return stop_.load(std::memory_order_relaxed); }
  const EngineLimits& limits() const { return lim_; }
  // Changes the most sequences per step from the next step on (1 .. the limit given at start,
  // which sized the stages' buffers).
  void set_max_batch(int n);
  // Tokens processed (prompt + generated) and wall time spent in run().
  uint64_t tokens_processed() const { return tokens_; }
  uint64_t tokens_generated() const { return generated_; }
  double run_seconds() const { return run_s_; }
  const ModelConfig& config() const { return cfg_; }
  const std::vector<int>& stage_ranks() const { return stage_ranks_; }
  const std::vector<StagePlan>& plan() const { return plan_; }
  void set_numerics(PipelineNumerics n) { numerics_ = std::move(n); }
  // Turns recovery on (before the first submit()): snapshots, token logs, and on a lost stage
  // the procedure above instead of PeerLost (which stays the outcome when it cannot recover).
  void enable_recovery(RecoveryOptions o);
  const std::vector<RecoveryReport>& recoveries() const { return recoveries_; }
  // True when a stage is known lost (the transport says so, or it is silent past the liveness
  // timeout); drains the stages' heartbeats. Never throws: the wait hook of the coordinator
  // rank's own stage (StepLoop::set_wait_hook), so that it does not wait for a neighbour that
  // waits for a recovery.
  bool stage_lost();
  int32_t epoch() const { return epoch_; }
  const PipelineNumerics& numerics() const { return numerics_; }

 private:
  PipelineNumerics numerics_;
  struct Seq;
  bool schedule();
  bool turn();  // one turn of the loop (poll() and run()); true when it did work
  bool turn_once();
  // Recovery (engine_recovery.cpp).
  struct SnapData;
  void add_snapshot_op(Seq& s, StepMsg& m);
  bool poll_snapshots();
  // false when it cannot start (the caller rethrows); throws PeerLost naming the rank whose
  // layers no standby is left to take.
  bool recover(const PeerLost& e);
  void replace_lost(std::vector<PeerLost>& lost, RecoveryReport& rep);
  // No standby for stage `st`: its layers to its neighbours, or a PeerLost of `lost` ends the job.
  void repartition(size_t st, const PeerLost& lost, RecoveryReport& rep);
  void print_recovered(const RecoveryReport& rep, const std::vector<PeerLost>& lost) const;
  void rewire_and_replay(RecoveryReport& rep);
  void roll_back_in_flight();
  std::vector<std::vector<SlotRestore>> restores() const;
  void rewire(const std::vector<std::vector<SlotRestore>>& per_stage, RecoveryReport& rep);
  uint64_t replay();
  // t_.test() that zeroes `id` once the transport has retired it (completed, or PeerLost).
  bool test_req(RequestId& id, Completion* c = nullptr);
  bool poll_results();
  void poll_heartbeats();
  int lost_stage(std::string* why);  // the rank of a lost stage (and why), or -1
  void handle_result(const ResultMsg& r);
  void finish(Seq& s, Finish why);
  void snapshot(Seq& s, StepMsg& m);

  Transport& t_;
  ModelConfig cfg_;
  std::vector<int> stage_ranks_;
  std::vector<StagePlan> plan_;
  EngineLimits lim_;
  int max_batch_limit_ = 0;
  std::function<bool()> local_poll_;
  std::map<int, std::unique_ptr<Seq>> seqs_;
  std::map<int, int> snapshots_;  // prefixes made by Request::snapshot_at: id -> slot
  std::vector<int> free_slots_;
  int next_id_ = 0;
  uint64_t next_step_ = 1;
  struct InFlight {
    std::vector<int> seq_ids;
    std::vector<int> takes;  // per sequence: its tokens in the step (recovery rolls them back)
    std::vector<std::vector<uint8_t>> keep;  // send buffer
    RequestId send = 0;
    uint64_t posted_ns = 0;  // --trace: when the Step was posted
  };
  std::map<uint64_t, InFlight> inflight_;
  // --trace: tokens generated at the last tokens/s counter, and when (common/trace.h).
  uint64_t rate_generated_ = 0, rate_ns_ = 0;
  ByteBuffer rbuf_, rspare_;  // Results: sized for the largest, resident only where written
  std::vector<uint8_t> hbuf_;  // heartbeats, with the stage's statistics
  RequestId rreq_ = 0, hreq_ = 0;
  std::map<int, std::chrono::steady_clock::time_point> last_seen_;
  std::map<int, StatsMsg> heard_stats_;  // per rank: the stats of its last heartbeat
  std::function<StatsMsg()> local_stats_;
  int cancels_ = 0;  // cancel() calls not yet applied by a turn
  std::chrono::milliseconds peer_timeout_;
  uint64_t tokens_ = 0, generated_ = 0;
  double run_s_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<int> reap_;  // finished sequences to forget
  // Recovery: off unless enable_recovery().
  bool recovery_on_ = false;
  RecoveryOptions recovery_;
  int32_t epoch_ = 0;
  int32_t next_serial_ = 0;
  std::map<int32_t, int> snap_owner_;  // snapshot number -> sequence id, while pending
  // Per prompt snapshot (snapshots_), how its state came to be: its sequence's base and log at
  // the Clone (engine_seq.h), so that a recovery restores it like a sequence.
  struct Lineage;
  std::map<int, std::shared_ptr<const Lineage>> lineage_;
  ByteBuffer sbuf_;
  RequestId sreq_ = 0;
  std::vector<std::vector<uint8_t>> graveyard_;  // buffers of sends retired by a recovery
  std::vector<RecoveryReport> recoveries_;
};

}  // namespace rwkvpp
