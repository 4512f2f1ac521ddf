// Recovery under harder faults ([ucx][recovery]; docs/cluster.md "Recovery"): two losses one
// after the other, losses during a recovery (the standby being assigned, a stage being
// re-wired), none left to take them, and a cut link between the coordinator and a worker in
// network namespaces of the test's own. The job is test_recovery.cpp's: 160 seeded, sampled
// records of `rwkvpp batch` on the small fixture; every record must be byte-identical to the
// fault-free single-process run computed in the same test. A stopped process (SIGSTOP) stands
// for one that is alive but silent, which only the liveness timeout finds (3 s here). Every wait
// is bounded; processes and namespaces are removed at the end, also when a check fails.
#include <algorithm>
#include <regex>
#include <string>
#include <vector>

#include "catch.h"
#include "helpers.h"
#include "launch_ranks.h"
#include "netns.h"
#include "recovery_job.h"
#include "small_model.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

// Every recovery line of the coordinator: the ranks lost, seconds, tokens replayed, epoch.
struct Recovered {
  std::string ranks, took;
  double seconds = 0;
  long replayed = 0;
  int epoch = 0;
};
std::vector<Recovered> recoveries(const std::string& log) {
  static const std::regex rec(
      R"(recovered from the loss of rank ([0-9a-z ]+) in ([0-9.]+) s: (.*), restored [0-9]+ sequence slot\(s\) \([0-9]+ from a snapshot\), replayed ([0-9]+) token\(s\), epoch ([0-9]+))");
  std::vector<Recovered> out;
  for (std::sregex_iterator it(log.begin(), log.end(), rec), end; it != end; ++it)
    out.push_back({(*it)[1].str(), (*it)[3].str(), std::stod((*it)[2].str()), std::stol((*it)[4].str()),
                   std::stoi((*it)[5].str())});
  return out;
}

void report(const std::vector<Recovered>& v) {
  for (const Recovered& r : v)
    WARN("recovery from the loss of rank " << r.ranks << ": " << r.seconds << " s, " << r.replayed
                                           << " tokens replayed, epoch " << r.epoch << " (" << r.took << ")");
}

// A run that must have recovered: the killer acted while the job ran and the coordinator
// completed it; its recoveries, reported.
std::vector<Recovered> completed(const RankRun& r, size_t killer) {
  REQUIRE(r.exit_codes[killer] == 0);
  REQUIRE(r.exit_codes[0] == 0);
  std::vector<Recovered> rec = recoveries(r.err[0]);
  report(rec);
  return rec;
}

// The fault-free single-process run's records.
std::vector<std::string> reference(const Job& job) {
  const std::string ref = job.dir / "single.jsonl";
  auto single = run(shell_line(job.batch_args(ref)), 300);
  INFO(single.err);
  REQUIRE(single.exit_code == 0);
  std::vector<std::string> want = sorted_lines(ref);
  REQUIRE(want.size() == size_t(kRecords));
  return want;
}

// A coordinator on 127.0.0.1 with `workers` + `standby` worker daemons (ranks in join order),
// then `extra` (killers).
std::vector<std::vector<std::string>> loopback_job(const Job& job, const std::string& out, int workers, int standby,
                                                   const std::vector<std::string>& extra) {
  const std::string addr = "127.0.0.1:" + std::to_string(free_port());
  std::vector<std::vector<std::string>> procs = {job.coordinator_args(out, addr, workers, standby)};
  for (int w = 1; w <= workers + standby; ++w) procs.push_back(worker(addr, job.key, job.pidfile(w), 0.5 * w));
  procs.push_back(extra);
  return procs;
}

std::string pid(const Job& job, int r) { return "$(cat " + job.pidfile(r) + ")"; }

}  // namespace

TEST_CASE("two losses one after the other: two standbys take them in turn, every record equals the single process",
          "[ucx][recovery]") {
  if (skip_without_ucx()) return;
  Job job;
  const std::vector<std::string> want = reference(job);
  const std::string out = job.dir / "cluster.jsonl";
  // Rank 2, then, 48 records after the first recovery (which holds the engine, so no record
  // is written during it), rank 4: the standby that took rank 2's layers.
  const std::vector<std::string> kills = {
      "/bin/sh", "-c",
      wait_for_records(out, 24) + "kill -9 " + pid(job, 2) + " || exit 1; echo \"first at $c\"; " +
          wait_for_records(out, 72) + "kill -9 " + pid(job, 4) + " && echo \"second at $c\""};
  RankRun r = run_processes(loopback_job(job, out, 3, 2, kills), {{"RWKVPP_PEER_TIMEOUT_S=10"}, 240, 20});
  INFO(r.all());
  const std::vector<Recovered> rec = completed(r, 6);
  REQUIRE(rec.size() == 2);
  CHECK(rec[0].ranks == "2");
  CHECK(contains(rec[0].took, "standby rank 4 took stage 2"));
  CHECK(rec[0].epoch == 1);
  CHECK(rec[1].ranks == "4");
  CHECK(contains(rec[1].took, "standby rank 5 took stage 2"));
  CHECK(rec[1].epoch == 2);
  for (int w : {1, 3, 5}) CHECK(r.exit_codes[size_t(w)] == 0);
  CHECK(sorted_lines(out) == want);
}

TEST_CASE("losses during a recovery: the standby being assigned and a stage being re-wired; the next standbys take "
          "over and every record equals the single process",
          "[ucx][recovery]") {
  if (skip_without_ucx()) return;
  Job job;
  const std::vector<std::string> want = reference(job);
  const std::string out = job.dir / "cluster.jsonl";
  // At once: the first standby (rank 4) and rank 3 fall silent, rank 2 dies. Rank 2's loss is
  // seen at once; the recovery then waits for rank 4's Ready in vain, and for rank 3's answer
  // to the re-wiring: each is lost during the recovery (liveness timeout), and the next
  // standbys (ranks 5 and 6) take stages 2 and 3.
  const std::vector<std::string> kills = {"/bin/sh", "-c",
                                          wait_for_records(out, 24) + "kill -STOP " + pid(job, 4) + " " +
                                              pid(job, 3) + " && kill -9 " + pid(job, 2) + " && echo \"at $c\""};
  RankRun r = run_processes(loopback_job(job, out, 3, 3, kills), {{"RWKVPP_PEER_TIMEOUT_S=3"}, 240, 3});
  INFO(r.all());
  const std::vector<Recovered> rec = completed(r, 7);
  CHECK(contains(r.err[0], "standby rank 4 was lost"));
  CHECK(contains(r.err[0], "rank 3 was lost"));
  CHECK(contains(r.err[0], "(while recovering, epoch 1): recovering again"));
  REQUIRE(rec.size() == 1);
  CHECK(rec[0].ranks == "2 and rank 3");
  CHECK(contains(rec[0].took, "standby rank 5 took stage 2"));
  CHECK(contains(rec[0].took, "standby rank 6 took stage 3"));
  CHECK(rec[0].epoch == 2);
  for (int w : {1, 5, 6}) CHECK(r.exit_codes[size_t(w)] == 0);
  CHECK(sorted_lines(out) == want);
}

TEST_CASE("a stage lost during a recovery with no standby left ends the job, naming that rank", "[ucx][recovery]") {
  if (skip_without_ucx()) return;
  Job job;
  const std::string out = job.dir / "cluster.jsonl";
  const std::vector<std::string> kills = {"/bin/sh", "-c",
                                          wait_for_records(out, 24) + "kill -STOP " + pid(job, 3) + " && kill -9 " +
                                              pid(job, 2) + " && echo \"at $c\""};
  RankRun r = run_processes(loopback_job(job, out, 3, 1, kills), {{"RWKVPP_PEER_TIMEOUT_S=3"}, 240, 3});
  INFO(r.all());
  REQUIRE(r.exit_codes[5] == 0);
  CHECK(r.exit_codes[0] != 0);
  CHECK(!r.killed[0]);
  CHECK(contains(r.err[0], "standby rank 4 takes rank 2's layers"));
  CHECK(contains(r.err[0], "(while recovering, epoch 1): recovering again"));
  CHECK(contains(r.err[0], "no standby worker is left to take layers 3-3 (stage 3) of lost rank 3"));
  CHECK(contains(r.err[0], "error on rank 0: rank 3 was lost"));
  CHECK(recoveries(r.err[0]).empty());
  // The live ones end by themselves (the coordinator's abort), none is left hanging.
  for (int w : {1, 4}) CHECK(!r.killed[size_t(w)]);
  CHECK(sorted_lines(out).size() < size_t(kRecords));
}

TEST_CASE("network namespaces: a worker's link cut (to the coordinator only, or its link down); found by the "
          "liveness timeout, the standby takes over and every record equals the single process",
          "[ucx][recovery][netns]") {
  if (skip_without_ucx()) return;
  std::string why;
  if (!NetLab::available(&why)) {
    WARN("SKIPPED: " << why);
    return;
  }
  // Only the link between the coordinator and rank 2 goes (as when a firewall drops their
  // traffic): rank 2 stays alive and still reaches ranks 1 and 3. Or rank 2's link goes down.
  std::string cut_kind = GENERATE(as<std::string>{}, "to the coordinator", "link down");
  INFO("cut: " << cut_kind);
  Job job;
  const std::vector<std::string> want = reference(job);
  const std::string out = job.dir / "cluster.jsonl";
  NetLab lab(5);  // box 0: the coordinator (stage 0); boxes 1-3: ranks 1-3; box 4: the standby
  const std::string addr = lab.addr(0) + ":29500";
  // One sequence per step and the cut after 8 records, so that the job still runs when the
  // cut-off rank gives up on the coordinator (1.5x the timeout after the cut): it must leave
  // the others alone (the records do not depend on how sequences are batched).
  std::vector<std::string> coord = job.coordinator_args(out, addr, 3, 1);
  *(std::find(coord.begin(), coord.end(), "--max-batch") + 1) = "1";
  std::vector<std::vector<std::string>> procs = {lab.in(0, coord)};
  for (int w = 1; w <= 4; ++w) procs.push_back(lab.in(w, worker(addr, job.key, job.pidfile(w), 0.5 * w)));
  const std::string cut = cut_kind == "link down" ? lab.link_down(2) : lab.cut(0, 2);
  procs.push_back({"/bin/sh", "-c", wait_for_records(out, 8) + cut + " && echo \"cut at $c\""});
  // Every hop over the veths (no shared-memory slots between the boxes, which share a host
  // name); UCX on the box's own interface.
  RankRun r = run_processes(procs, {{"RWKVPP_PEER_TIMEOUT_S=2", "RWKVPP_SHARE=0", "UCX_NET_DEVICES=eth0"}, 240, 15});
  INFO(r.all());
  const std::vector<Recovered> rec = completed(r, 5);
  CHECK(contains(r.err[0], "rank 2 was lost"));
  REQUIRE(rec.size() == 1);
  CHECK(rec[0].ranks == "2");
  CHECK(contains(rec[0].took, "standby rank 4 took stage 2"));
  // The cut-off worker gives up on the coordinator by itself and leaves the others running.
  CHECK(!r.killed[2]);
  CHECK(contains(r.err[2], "leaves without stopping the others"));
  for (int w : {1, 3, 4}) CHECK(r.exit_codes[size_t(w)] == 0);
  CHECK(sorted_lines(out) == want);
}
