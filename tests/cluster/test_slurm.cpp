// [slurm]: a real one-node Slurm started by cluster/local-slurm.sh runs the standard batch job
// through both sbatch templates (cluster/batch-1node.sbatch: mpirun inside the allocation;
// cluster/batch-multinode.sbatch: srun --mpi=pmix), 3 ranks each, and the outputs must equal a
// run without Slurm. Then a job stopped by Slurm's SIGTERM (as before a time limit) is
// resubmitted and completes the same output. cluster/serve.sbatch starts rwkvpp serve on 3
// ranks, says where it listens, answers a completion, and on Slurm's SIGTERM stops with exit 0.
// The test skips (passes with a warning) only when slurmctld cannot be started at all (not
// root, no slurm-wlm/munge); it stops Slurm at the end.
#include <string>

#include "catch.h"
#include "cluster/local_slurm.h"
#include "coordinator/batch_fixture.h"
#include "helpers.h"

using namespace rwkvpp::test;

TEST_CASE(
    "batch jobs under a one-node Slurm (sbatch + mpirun, sbatch + srun --mpi=pmix) equal a run "
    "without Slurm",
    "[slurm]") {
  const auto& ref = standard_reference();  // before Slurm starts: the two share the cores
  LocalSlurm slurm;
  if (!slurm.start()) return;  // skipped: slurmctld cannot start here

  TempDir d;
  write_standard_prompts(d / "in.jsonl");
  const std::string job = standard_flags() + " -i " + d / "in.jsonl";
  const std::string one_node = repo_root() + "/cluster/batch-1node.sbatch";
  const std::string multi_node = repo_root() + "/cluster/batch-multinode.sbatch";

  {  // both templates, 3 ranks
    std::string a = slurm.submit("-n 3 --ntasks-per-node=3 -o " + d / "a.log " + one_node + " " +
                                 job + " -o " + d / "a.jsonl");
    std::string b = slurm.submit("-N 1 -n 3 --ntasks-per-node=3 -o " + d / "b.log " + multi_node +
                                 " " + job + " -o " + d / "b.jsonl");
    std::string sa = slurm.wait(a), sb = slurm.wait(b);
    INFO(read_file(d / "a.log") << "\n" << read_file(d / "b.log"));
    CHECK(sa == "COMPLETED 0:0");
    CHECK(sb == "COMPLETED 0:0");
    CHECK(read_file(d / "a.log").find("3 ranks") != std::string::npos);
    CHECK(read_records(d / "a.jsonl") == ref);
    CHECK(read_records(d / "b.jsonl") == ref);
  }

  {  // SIGTERM from Slurm (as before a time limit) stops the job cleanly; resubmitted, it completes
    std::string c = slurm.submit("-n 3 --ntasks-per-node=3 -o " + d / "c.log " + one_node + " " +
                                 job + " -o " + d / "c.jsonl");
    // Once records come out, signal the batch shell as --signal=B:TERM@120 does.
    auto r = run(slurm.env + "for i in $(seq 1 1200); do [ -s " + d / "c.jsonl" +
                     " ] && break; sleep 0.05; done; scancel --batch --signal=TERM " + c,
                 90);
    REQUIRE(r.exit_code == 0);
    std::string sc = slurm.wait(c);
    std::string log = read_file(d / "c.log");
    INFO(sc << "\n" << log);
    CHECK(log.find("stopped by SIGTERM") != std::string::npos);
    CHECK(sc.find(" 75:") != std::string::npos);  // rank 0's exit code, passed on by mpirun
    auto part = read_records(d / "c.jsonl");
    CHECK(part.size() < ref.size());
    std::string e = slurm.submit("-n 3 --ntasks-per-node=3 -o " + d / "c.log " + one_node + " " +
                                 job + " -o " + d / "c.jsonl");
    CHECK(slurm.wait(e) == "COMPLETED 0:0");
    CHECK(read_records(d / "c.jsonl") == ref);
  }
  {  // cluster/serve.sbatch: rwkvpp serve on 3 ranks, a completion over 127.0.0.1, SIGTERM
    const std::string serve = repo_root() + "/cluster/serve.sbatch";
    const std::string log = d / "s.log";
    std::string s = slurm.submit("-n 3 --ntasks-per-node=3 -o " + log + " " + serve + " --model " +
                                     byte_model() + " --served-model-name tiny --threads 1",
                                 "RWKVPP_PORT=0");
    // The port the template prints, then /ready until 200, then a completion (bash's /dev/tcp:
    // no HTTP client needed).
    const std::string http =
        "http() { exec 3<>/dev/tcp/127.0.0.1/$p || return 1; printf \"$1\" >&3; timeout 10 cat "
        "<&3; "
        "exec 3<&-; }; ";
    auto r =
        run("for i in $(seq 1 1200); do p=$(sed -n 's/^rwkvpp-serve: listening on "
            ".*127.0.0.1:\\([0-9]*\\) .*/\\1/p' " +
                log +
                " | head -1); [ -n \"$p\" ] && break; sleep 0.1; done; [ -n \"$p\" ] || exit 9; " +
                http +
                "for i in $(seq 1 600); do http 'GET /ready HTTP/1.1\\r\\nHost: x\\r\\nConnection: "
                "close\\r\\n\\r\\n' | grep -q '^HTTP/1.1 200' && break; sleep 0.1; done; "
                "b='{\"model\": \"tiny\", \"prompt\": \"abc\", \"max_tokens\": 5, \"seed\": 1}'; "
                "http \"POST /v1/completions HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: "
                "application/json\\r\\n"
                "Content-Length: ${#b}\\r\\nConnection: close\\r\\n\\r\\n$b\"",
            150);
    INFO(r.out << r.err << "\n" << read_file(log));
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("HTTP/1.1 200") != std::string::npos);
    CHECK(r.out.find("\"completion_tokens\":5") != std::string::npos);
    REQUIRE(run(slurm.env + "scancel --batch --signal=TERM " + s, 30).exit_code == 0);
    CHECK(slurm.wait(s) == "COMPLETED 0:0");
    const std::string text = read_file(log);
    CHECK(text.find("rwkvpp-serve: listening on ") != std::string::npos);
    CHECK(text.find("ssh -N -L 8000:127.0.0.1:") != std::string::npos);
    CHECK(text.find("rwkvpp serve: stopped") != std::string::npos);
    CHECK(text.find("rwkvpp-serve: mpirun exited with 0") != std::string::npos);
  }
}
