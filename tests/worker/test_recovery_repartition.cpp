// Re-partition over the survivors ([ucx][recovery]; docs/cluster.md "Recovery"): `--repartition`
// with no standby. The job is test_recovery.cpp's (160 seeded, sampled records of `rwkvpp batch`
// on the small fixture, 4 layers: the coordinator's stage 0 and one layer for each of 3 worker
// daemons); a worker killed mid-job leaves its layers to a neighbouring stage, which reads them
// itself, and every record must be byte-identical to the fault-free single-process run. Also:
// survivors whose --memory cannot hold the layers end the job naming the rank and the memory
// missing; a stage lost during the re-partition's re-wiring is re-partitioned in turn. Every
// wait is bounded; every process is killed at the end, also when a check fails.
#include <regex>
#include <string>
#include <vector>

#include "catch.h"
#include "helpers.h"
#include "launch_ranks.h"
#include "recovery_job.h"
#include "small_model.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

// The fault-free single-process run's records (the job's inputs do not depend on its
// directory, so one run serves every case of this file).
const std::vector<std::string>& reference() {
  static const std::vector<std::string> want = [] {
    Job job;
    const std::string ref = job.dir / "single.jsonl";
    auto single = run(shell_line(job.batch_args(ref)), 300);
    INFO(single.err);
    REQUIRE(single.exit_code == 0);
    return sorted_lines(ref);
  }();
  REQUIRE(want.size() == size_t(kRecords));
  return want;
}

// A coordinator on 127.0.0.1 with --repartition and 3 worker daemons (ranks 1-3 in join order;
// rank r with worker_extra[r - 1] when given), no standby, then `extra` (the killer).
std::vector<std::vector<std::string>> job_without_standby(const Job& job, const std::string& out,
                                                          const std::vector<std::string>& extra,
                                                          const std::vector<std::string>& worker_extra = {}) {
  const std::string addr = "127.0.0.1:" + std::to_string(free_port());
  std::vector<std::string> coord = job.coordinator_args(out, addr, 3, 0);
  coord.push_back("--repartition");
  std::vector<std::vector<std::string>> procs = {coord};
  for (int w = 1; w <= 3; ++w)
    procs.push_back(worker(addr, job.key, job.pidfile(w), 0.5 * w,
                           size_t(w) <= worker_extra.size() ? worker_extra[size_t(w - 1)] : ""));
  procs.push_back(extra);
  return procs;
}

// The coordinator's recovery line: seconds, what was taken, slots, replayed tokens, epoch, stages.
struct Line {
  std::string ranks, took, stages;
  double seconds = 0;
  long slots = 0, from_snapshots = 0, replayed = 0;
  int epoch = 0;
};
std::vector<Line> recoveries(const std::string& log) {
  static const std::regex rec(
      R"(recovered from the loss of rank ([0-9a-z ]+) in ([0-9.]+) s: (.*), restored ([0-9]+) sequence slot\(s\) \(([0-9]+) from a snapshot\), replayed ([0-9]+) token\(s\), epoch ([0-9]+), ([0-9]+ stage\(s\) now \([^)]*\)))");
  std::vector<Line> out;
  for (std::sregex_iterator it(log.begin(), log.end(), rec), end; it != end; ++it)
    out.push_back({(*it)[1].str(), (*it)[3].str(), (*it)[8].str(), std::stod((*it)[2].str()),
                   std::stol((*it)[4].str()), std::stol((*it)[5].str()), std::stol((*it)[6].str()),
                   std::stoi((*it)[7].str())});
  for (const Line& l : out)
    WARN("re-partition after the loss of rank " << l.ranks << ": " << l.seconds << " s, " << l.slots << " slots ("
                                                << l.from_snapshots << " from a snapshot), " << l.replayed
                                                << " tokens replayed, epoch " << l.epoch << "; " << l.took << "; "
                                                << l.stages);
  return out;
}

}  // namespace

TEST_CASE("no standby: a worker killed mid-job leaves its layers to a neighbouring stage (re-partition); every "
          "record equals the single process",
          "[ucx][recovery]") {
  if (skip_without_ucx()) return;
  const std::vector<std::string>& want = reference();
  // Rank 1: the coordinator's own stage 0 takes layer 1 (in its process; the tie with rank 2
  // goes to the previous stage). Rank 2: rank 1 takes layer 2 (rank 3 also holds the head).
  // Rank 3, the last stage: rank 2 takes layer 3 and the head (the sampler moves).
  struct Case {
    int victim, taker;
    std::string stages;
  };
  for (const Case& c : {Case{1, 0, "rank 0: 0-1, rank 2: 2-2, rank 3: 3-3"},
                        Case{2, 1, "rank 0: 0-0, rank 1: 1-2, rank 3: 3-3"},
                        Case{3, 2, "rank 0: 0-0, rank 1: 1-1, rank 2: 2-3"}}) {
    DYNAMIC_SECTION("killing the worker of rank " << c.victim) {
      Job job;
      const std::string out = job.dir / "cluster.jsonl";
      RankRun r = run_processes(job_without_standby(job, out, killer(out, 24, job.pidfile(c.victim))),
                                {{"RWKVPP_PEER_TIMEOUT_S=10"}, 240, 20});
      INFO(r.all());
      REQUIRE(r.exit_codes[4] == 0);  // the kill happened mid-job
      REQUIRE(r.exit_codes[0] == 0);
      CHECK(r.exit_codes[size_t(c.victim)] == 128 + 9);
      for (int w = 1; w <= 3; ++w)
        if (w != c.victim) CHECK(r.exit_codes[size_t(w)] == 0);
      const std::string v = std::to_string(c.victim), l = v + "-" + v;
      CHECK(contains(r.err[0], "no standby worker is left: re-partition over the survivors: rank " +
                                   std::to_string(c.taker) + " takes layers " + l + " of lost rank " + v));
      const std::vector<Line> rec = recoveries(r.err[0]);
      REQUIRE(rec.size() == 1);
      CHECK(rec[0].ranks == v);
      CHECK(contains(rec[0].took, "re-partitioned over the survivors: rank " + std::to_string(c.taker) +
                                      " took layers " + l + " of rank " + v + " (loaded in "));
      CHECK(rec[0].stages == "3 stage(s) now (" + c.stages + ")");
      CHECK(rec[0].epoch == 1);
      CHECK(rec[0].from_snapshots > 0);
      CHECK(rec[0].replayed > 0);
      CHECK(rec[0].seconds < 30);
      if (c.taker > 0)  // a worker that took layers says so
        CHECK(contains(r.err[size_t(c.taker)], "re-partition: held layers "));
      CHECK(sorted_lines(out) == want);
    }
  }
}

TEST_CASE("no standby, survivors without the memory for the lost layers: the job ends naming the rank and the "
          "memory missing",
          "[ucx][recovery]") {
  if (skip_without_ucx()) return;
  Job job;
  const std::string out = job.dir / "cluster.jsonl";
  // 0.5 MB a worker: its own layer (weights about 216 KiB, the states of every slot, the last
  // stage's head 75 KiB) fits, a second layer does not.
  const std::string small = "--memory 0.0005";
  RankRun r = run_processes(job_without_standby(job, out, killer(out, 8, job.pidfile(2)), {small, small, small}),
                            {{"RWKVPP_PEER_TIMEOUT_S=10"}, 120, 10});
  INFO(r.all());
  REQUIRE(r.exit_codes[4] == 0);
  CHECK(r.exit_codes[0] != 0);
  CHECK(!r.killed[0]);
  const std::regex why(
      R"(no standby worker is left and no re-partition over the survivors fits \(--repartition\): layers 2-2 of lost rank 2 \(stage 2\) need about [0-9.]+ KiB .* rank 1 \(stage 1, layers 1-1\) has [0-9.]+ KiB free of the 488.3 KiB it offered; rank 3 \(stage 3, layers 3-3\) has [0-9.]+ KiB free of the 488.3 KiB it offered; at least [0-9.]+ KiB short: the job ends)");
  CHECK(std::regex_search(r.err[0], why));
  CHECK(contains(r.err[0], "error on rank 0: rank 2 was lost"));
  CHECK(recoveries(r.err[0]).empty());
  // The others end by themselves (the coordinator's abort): none is left hanging.
  for (int w : {1, 3}) CHECK(!r.killed[size_t(w)]);
  CHECK(sorted_lines(out).size() < size_t(kRecords));
}

TEST_CASE("no standby, a stage lost while a re-partition re-wires the pipeline: it is re-partitioned in turn and "
          "every record equals the single process",
          "[ucx][recovery]") {
  if (skip_without_ucx()) return;
  const std::vector<std::string>& want = reference();
  Job job;
  const std::string out = job.dir / "cluster.jsonl";
  // At once: rank 3 falls silent and rank 2 dies. Rank 1 takes layer 2 (epoch 1); the re-wiring
  // waits 3 s for rank 3's answer in vain, and rank 1 takes layer 3 and the head too (epoch 2).
  const std::vector<std::string> kills = {
      "/bin/sh", "-c",
      wait_for_records(out, 24) + "kill -STOP $(cat " + job.pidfile(3) + ") && kill -9 $(cat " + job.pidfile(2) +
          ") && echo \"at $c\""};
  RankRun r = run_processes(job_without_standby(job, out, kills), {{"RWKVPP_PEER_TIMEOUT_S=3"}, 240, 3});
  INFO(r.all());
  REQUIRE(r.exit_codes[4] == 0);
  REQUIRE(r.exit_codes[0] == 0);
  CHECK(contains(r.err[0], "rank 3 was lost"));
  CHECK(contains(r.err[0], "(while recovering, epoch 1): recovering again"));
  const std::vector<Line> rec = recoveries(r.err[0]);
  REQUIRE(rec.size() == 1);
  CHECK(rec[0].ranks == "2 and rank 3");
  CHECK(contains(rec[0].took, "re-partitioned over the survivors: rank 1 took layers 2-2 of rank 2 and layers 3-3 "
                               "of rank 3 (loaded in "));
  CHECK(rec[0].stages == "2 stage(s) now (rank 0: 0-0, rank 1: 1-3)");
  CHECK(rec[0].epoch == 2);
  CHECK(r.exit_codes[1] == 0);
  CHECK(sorted_lines(out) == want);
}

TEST_CASE("no standby, a survivor that cannot read the lost layers (its copy of the model lacks their shard): the "
          "job ends with its error",
          "[ucx][recovery]") {
  if (skip_without_ucx()) return;
  Job job;
  const std::string out = job.dir / "cluster.jsonl", partial = job.dir / "partial";
  // Rank 1's own copy of the model without the shard of layer 2 (model-00003-of-00004.h5): it
  // holds layer 1 and starts, and is the one that should take layer 2 when rank 2 is lost.
  REQUIRE(run("cp -r " + small_sharded_model() + " " + partial + " && rm " + partial + "/model-00003-of-00004.h5", 30)
              .exit_code == 0);
  RankRun r = run_processes(job_without_standby(job, out, killer(out, 8, job.pidfile(2)), {"--model " + partial}),
                            {{"RWKVPP_PEER_TIMEOUT_S=10"}, 120, 10});
  INFO(r.all());
  REQUIRE(r.exit_codes[4] == 0);
  CHECK(r.exit_codes[0] != 0);
  CHECK(!r.killed[0]);
  CHECK(contains(r.err[0], "rank 1 takes layers 2-2 of lost rank 2"));
  CHECK(contains(r.err[0], "error on rank 0: recovery: rank 1 could not be re-wired as stage 1 (layers 1-2): "));
  CHECK(contains(r.err[0], "model-00003-of-00004.h5"));
  CHECK(contains(r.err[1], "cannot take layers 1-2 (epoch 1)"));
  CHECK(recoveries(r.err[0]).empty());
  for (int w : {1, 3}) CHECK(!r.killed[size_t(w)]);
  CHECK(sorted_lines(out).size() < size_t(kRecords));
}
