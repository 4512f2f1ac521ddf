// [slurm]: surviving a lost rank the Slurm way (cluster/README.md, "Requeue"). On the suites'
// one-node Slurm, the standard batch job runs through both templates with 3 ranks, and once
// records come out a worker rank is SIGKILLed (rank 1 of the mpirun job, rank 2 of the srun
// one): each job must requeue itself exactly once, resume from its output and end COMPLETED
// 0:0, with every record exactly once and equal to a run without Slurm. A command rwkvpp refuses
// (a wrong --model path: exit 2) must fail without a requeue, through both templates; and a job
// whose "rank" dies on every run stops requeueing after RWKVPP_MAX_REQUEUES restarts. All the
// jobs run side by side; Slurm's two-minute hold of a requeued job is lifted by the test
// (LocalSlurm::start_now). Skips (passes with a warning) where slurmctld cannot start at all.
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "catch.h"
#include "cluster/local_slurm.h"
#include "coordinator/batch_fixture.h"
#include "helpers.h"

using namespace rwkvpp::test;

namespace {

// Complete lines of a file: a killed job's output may end in a torn line (dropped on resume).
size_t complete_lines(const std::string& path) {
  const std::string s = read_file(path);
  return size_t(std::count(s.begin(), s.end(), '\n'));
}

struct Victim {
  std::string job;     // the Slurm job id
  int rank;            // the rank to kill
  std::string output;  // the job's --output
};

// For each victim at once: as soon as its output holds a record, SIGKILLs the rwkvpp process
// whose environment holds SLURM_JOB_ID=job and PMIX_RANK=rank (Open MPI's mpirun and srun
// --mpi=pmix both set it). Every wait is bounded; the shell says which process it killed, or
// why none.
RunResult kill_ranks(const LocalSlurm& s, const std::vector<Victim>& victims) {
  std::string cmd =
      "k() { for i in $(seq 1 1200); do [ -s \"$3\" ] && break; sleep 0.05; done; "
      "[ -s \"$3\" ] || { echo \"job $1: no record within 60 s\"; return 8; }; "
      "for try in $(seq 1 100); do for p in $(pgrep -x rwkvpp); do "
      "e=$(tr '\\0' '\\n' </proc/$p/environ 2>/dev/null) || continue; "
      "echo \"$e\" | grep -qx \"SLURM_JOB_ID=$1\" || continue; "
      "echo \"$e\" | grep -qx \"PMIX_RANK=$2\" || continue; "
      "kill -KILL $p && { echo \"job $1: killed rank $2, pid $p\"; return 0; }; "
      "done; sleep 0.05; done; echo \"job $1: no rank $2 found\"; return 9; }; pids=; ";
  for (const Victim& v : victims)
    cmd += fmt::format("k {} {} {} & pids=\"$pids $!\"; ", v.job, v.rank, v.output);
  cmd += "rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc";
  return run(s.env + cmd, 90);
}

}  // namespace

TEST_CASE(
    "a batch job under Slurm whose worker rank is killed requeues itself once and completes every "
    "record exactly once; a command rwkvpp refuses never requeues; requeues are bounded",
    "[slurm]") {
  const auto& ref = standard_reference();  // before Slurm starts: the two share the cores
  LocalSlurm slurm(12);                    // every job below at once: 3 + 3 + 2 + 2 + 1 CPUs
  if (!slurm.start()) return;              // skipped: slurmctld cannot start here

  TempDir d;
  write_standard_prompts(d / "in.jsonl");
  const std::string job = standard_flags() + " -i " + d / "in.jsonl";
  const std::string one_node = repo_root() + "/cluster/batch-1node.sbatch";
  const std::string multi_node = repo_root() + "/cluster/batch-multinode.sbatch";
  const std::string out_a = d / "a.jsonl", out_b = d / "b.jsonl";

  // The standard job through both templates, 3 ranks: a worker rank will be killed in each.
  // When a rank dies or aborts, mpirun waits 2 x its sigkill timeout before the last kill (the
  // template's 5 s are for rank 0's last steps at a time limit): 1 s here.
  const std::string quick_abort = "OMPI_MCA_odls_base_sigkill_timeout=1";
  std::string a = slurm.submit(
      "-n 3 --ntasks-per-node=3 -o " + d / "a.log " + one_node + " " + job + " -o " + out_a,
      quick_abort);
  std::string b = slurm.submit("-N 1 -n 3 --ntasks-per-node=3 -o " + d / "b.log " + multi_node +
                               " " + job + " -o " + out_b);
  // The same job with a typo in its model path, through both templates: refused (exit 2).
  std::string bad_job = job;
  bad_job.replace(bad_job.find(byte_model()), byte_model().size(), d / "no-such-model");
  std::string bad_a = slurm.submit("-n 2 --ntasks-per-node=2 -o " + d / "bad-a.log " + one_node +
                                       " " + bad_job + " -o " + d / "bad-a.jsonl",
                                   quick_abort);
  std::string bad_b = slurm.submit("-N 1 -n 2 --ntasks-per-node=2 -o " + d / "bad-b.log " +
                                   multi_node + " " + bad_job + " -o " + d / "bad-b.jsonl");
  // A "rank" that dies of SIGKILL on every run, as on a node that keeps failing.
  write_file(d / "dies.sh", "#!/bin/sh\nkill -KILL $$\n");
  REQUIRE(run("chmod +x " + d / "dies.sh", 10).exit_code == 0);
  std::string c = slurm.submit(
      "-N 1 -n 1 -o " + d / "dies.log " + multi_node + " " + job + " -o " + d / "dies.jsonl",
      "RWKVPP=" + d / "dies.sh" + " RWKVPP_MAX_REQUEUES=1");

  {  // once records come out: rank 1 of the mpirun job, rank 2 (the last stage) of the srun one
    auto k = kill_ranks(slurm, {{a, 1, out_a}, {b, 2, out_b}});
    INFO(k.out << "\n" << read_file(d / "a.log") << "\n" << read_file(d / "b.log"));
    REQUIRE(k.exit_code == 0);
  }
  {  // the refused command: no requeue
    std::string sa = slurm.wait(bad_a, 60), sb = slurm.wait(bad_b, 60);
    const std::string la = read_file(d / "bad-a.log"), lb = read_file(d / "bad-b.log");
    INFO(la << "\n" << lb);
    CHECK(sa == "FAILED 2:0");  // rank 0's kExitBadInput, passed on by mpirun
    CHECK(sb == "FAILED 2:0");  // and by srun
    CHECK(slurm.field(bad_a, "Restarts") == "0");
    CHECK(slurm.field(bad_b, "Restarts") == "0");
    for (const std::string* log : {&la, &lb}) {
      CHECK(contains(*log, "no-such-model' does not exist"));  // rwkvpp's own message
      CHECK(contains(*log, "rwkvpp refused the command (exit 2: bad arguments, model or input"));
      CHECK(!contains(*log, "requeueing job"));
    }
  }

  // Each of the other three requeued itself once; what the first runs of the killed jobs left is
  // part of the job, not all of it. Then let the three start again at once.
  REQUIRE(slurm.wait_requeued(c, 1));
  REQUIRE(slurm.wait_requeued(a, 1));
  REQUIRE(slurm.wait_requeued(b, 1));
  const size_t part_a = complete_lines(out_a), part_b = complete_lines(out_b);
  slurm.start_now({c, a, b});

  {  // the rank that dies on every run: requeued once (RWKVPP_MAX_REQUEUES=1), then it fails
    std::string sc = slurm.wait(c, 60);
    const std::string lc = read_file(d / "dies.log");
    INFO(lc);
    CHECK(sc == "FAILED 137:0");
    CHECK(slurm.field(c, "Restarts") == "1");
    CHECK(contains(lc, "a rank was killed by signal 9 (SIGKILL); requeueing job " + c +
                           " to resume from the output (restart 1 of at most 1)"));
    CHECK(contains(lc, "restart 1 (RWKVPP_MAX_REQUEUES=1)"));
    CHECK(contains(lc, "a rank was killed by signal 9 (SIGKILL); not requeueing: job " + c +
                           " has restarted 1 time(s) (RWKVPP_MAX_REQUEUES=1)"));
  }
  {  // the killed jobs: resumed and complete, every record exactly once
    std::string sa = slurm.wait(a), sb = slurm.wait(b);
    const std::string la = read_file(d / "a.log"), lb = read_file(d / "b.log");
    INFO(sa << " " << sb << "\n" << la << "\n" << lb);
    CHECK(sa == "COMPLETED 0:0");
    CHECK(sb == "COMPLETED 0:0");
    CHECK(slurm.field(a, "Restarts") == "1");
    CHECK(slurm.field(b, "Restarts") == "1");
    CHECK(part_a > 0);
    CHECK(part_a < ref.size());
    CHECK(part_b > 0);
    CHECK(part_b < ref.size());
    for (const auto& [id, log] : {std::make_pair(a, la), std::make_pair(b, lb)}) {
      CHECK(contains(log, "a rank was killed by signal 9 (SIGKILL); requeueing job " + id +
                              " to resume from the output (restart 1 of at most 3)"));
      CHECK(contains(log, "restart 1 (RWKVPP_MAX_REQUEUES=3)"));
      CHECK(contains(log, "batch: resuming '"));
      CHECK(contains(log, "batch: complete: 160 records"));
    }
    // read_records fails on a repeated (id, index) or a torn line; the records must be those of
    // the run without Slurm.
    CHECK(read_records(out_a) == ref);
    CHECK(read_records(out_b) == ref);
  }
}
