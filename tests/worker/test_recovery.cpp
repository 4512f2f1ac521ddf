// Recovery from a lost worker ([ucx][recovery]; docs/cluster.md): a coordinator holding stage 0
// with 3 worker daemons and 1 standby, as separate processes on 127.0.0.1, runs `rwkvpp batch`
// of 160 seeded, sampled records (temperature 0.9, a seed each, presence and frequency
// penalties, a shared prefix file) on the small fixture model; a worker is killed with SIGKILL
// once some records are out. The standby takes its layers, the stages' states come back from
// their snapshots, the tokens since are replayed, and every record is byte-identical to the
// fault-free single-process run with the same seeds (which the pipeline tests check against
// the fixtures). Also: with no standby left, a second loss ends the job with PeerLost as
// without recovery. Every wait is bounded and every process is killed at the end
// (tests/launch_ranks.h).
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "catch.h"
#include "helpers.h"
#include "launch_ranks.h"
#include "net/transports.h"
#include "recovery_job.h"
#include "small_model.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

TEST_CASE("a worker killed mid-job: a standby takes its layers and every record equals the single process",
          "[ucx][recovery]") {
  if (!have_ucx_transport()) {
    WARN("SKIPPED: this build has no UCX transport");
    return;
  }
  Job job;
  const std::string ref = job.dir / "single.jsonl", out = job.dir / "cluster.jsonl";
  auto single = run(shell_line(job.batch_args(ref)), 300);
  INFO(single.err);
  REQUIRE(single.exit_code == 0);
  const std::vector<std::string> want = sorted_lines(ref);
  REQUIRE(want.size() == size_t(kRecords));

  for (int victim : {2, 3}) {  // a middle stage, and the last stage (the sampler)
    DYNAMIC_SECTION("killing the worker of rank " << victim) {
      const std::string addr = "127.0.0.1:" + std::to_string(free_port());
      const std::vector<std::string> coord = job.coordinator_args(out, addr, 3, 1);
      // Joined in this order (half a second apart): ranks 1, 2, 3, then the standby (rank 4).
      std::vector<std::vector<std::string>> procs = {coord};
      for (int w = 1; w <= 4; ++w) procs.push_back(worker(addr, job.key, job.pidfile(w), 0.5 * w));
      procs.push_back(killer(out, 24, job.pidfile(victim)));
      RankRun r = run_processes(procs, {{"RWKVPP_PEER_TIMEOUT_S=10"}, 240, 20});
      INFO(r.all());
      REQUIRE(r.exit_codes[5] == 0);  // the kill happened mid-job
      CHECK(contains(r.err[size_t(victim)], "as rank " + std::to_string(victim) + " of 5"));
      CHECK(contains(r.err[4], "(a standby"));
      REQUIRE(r.exit_codes[0] == 0);
      CHECK(r.exit_codes[size_t(victim)] == 128 + 9);
      for (int w = 1; w <= 4; ++w)
        if (w != victim) CHECK(r.exit_codes[size_t(w)] == 0);
      std::smatch m;
      const std::regex rec("recovered from the loss of rank " + std::to_string(victim) +
                           R"( in ([0-9.]+) s: standby rank 4 took stage )" + std::to_string(victim) +
                           R"( .* restored ([0-9]+) sequence slot\(s\) \(([0-9]+) from a snapshot\), replayed ([0-9]+) token\(s\))");
      REQUIRE(std::regex_search(r.err[0], m, rec));
      const double seconds = std::stod(m[1].str());
      const long replayed = std::stol(m[4].str());
      WARN("recovery of rank " << victim << ": " << seconds << " s, " << m[2].str() << " slots (" << m[3].str()
                               << " from a snapshot), " << replayed << " tokens replayed");
      CHECK(std::stol(m[3].str()) > 0);
      CHECK(seconds < 30);
      CHECK(replayed > 0);
      CHECK(sorted_lines(out) == want);
    }
  }
}

TEST_CASE("a stopped worker is named by the liveness timeout and replaced; every record equals the single process",
          "[ucx][recovery]") {
  if (!have_ucx_transport()) {
    WARN("SKIPPED: this build has no UCX transport");
    return;
  }
  Job job;
  const std::string ref = job.dir / "single.jsonl", out = job.dir / "cluster.jsonl";
  REQUIRE(run(shell_line(job.batch_args(ref)), 300).exit_code == 0);
  const std::string addr = "127.0.0.1:" + std::to_string(free_port());
  const std::vector<std::string> coord = job.coordinator_args(out, addr, 3, 1);
  std::vector<std::vector<std::string>> procs = {coord};
  for (int w = 1; w <= 4; ++w) procs.push_back(worker(addr, job.key, job.pidfile(w), 0.5 * w));
  procs.push_back(killer(out, 24, job.pidfile(2), "-STOP"));  // alive, silent: no UCX error
  RankRun r = run_processes(procs, {{"RWKVPP_PEER_TIMEOUT_S=3"}, 240, 10});
  INFO(r.all());
  REQUIRE(r.exit_codes[5] == 0);
  REQUIRE(r.exit_codes[0] == 0);
  CHECK(contains(r.err[0], "rank 2 was lost: stage 2 (layers 2-2) sent nothing for 3.0 s"));
  CHECK(contains(r.err[0], "recovered from the loss of rank 2"));
  CHECK(sorted_lines(out) == sorted_lines(ref));
}

TEST_CASE("with no standby left, the next lost worker ends the job with PeerLost", "[ucx][recovery]") {
  if (!have_ucx_transport()) {
    WARN("SKIPPED: this build has no UCX transport");
    return;
  }
  Job job;
  const std::string out = job.dir / "cluster.jsonl";
  const std::string addr = "127.0.0.1:" + std::to_string(free_port());
  const std::vector<std::string> coord = job.coordinator_args(out, addr, 3, 1);
  std::vector<std::vector<std::string>> procs = {coord};
  for (int w = 1; w <= 4; ++w) procs.push_back(worker(addr, job.key, job.pidfile(w), 0.5 * w));
  procs.push_back(killer(out, 16, job.pidfile(1)));  // rank 1: the standby takes it
  procs.push_back(killer(out, 48, job.pidfile(4)));  // then the former standby: none is left
  RankRun r = run_processes(procs, {{"RWKVPP_PEER_TIMEOUT_S=10"}, 240, 20});
  INFO(r.all());
  REQUIRE(r.exit_codes[5] == 0);
  REQUIRE(r.exit_codes[6] == 0);
  CHECK(contains(r.err[0], "recovered from the loss of rank 1"));
  CHECK(r.exit_codes[0] != 0);
  CHECK(contains(r.err[0], "rank 4 was lost"));
  CHECK(contains(r.err[0], "no standby worker is left to take layers"));
  CHECK(sorted_lines(out).size() < size_t(kRecords));
}

namespace {

// A client of `rwkvpp serve` on `port`: waits (bounded) for /ready, then sends `n` seeded,
// sampled completions at once (curl), each answer to DIR/rI.json, and waits for them all.
std::vector<std::string> serve_client(int port, int n, const std::string& dir) {
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  std::string s = "i=0; until curl -sf " + url + "/ready >/dev/null; do i=$((i+1)); [ $i -gt 600 ] && exit 2; "
                  "sleep 0.1; done; ";
  for (int i = 0; i < n; ++i)
    s += "curl -s --max-time 120 " + url + "/v1/completions -H 'Content-Type: application/json' -d "
         "'{\"model\": \"model\", \"prompt\": \"Tale " + std::to_string(i % 6) + " of the northern hills, number " +
         std::to_string(i) + "\", \"max_tokens\": 300, \"temperature\": 0.9, \"seed\": " + std::to_string(500 + i) +
         "}' > " + dir + "/r" + std::to_string(i) + ".json & ";
  return {"/bin/sh", "-c", s + "wait"};
}

// Each answer's text, by request.
std::vector<std::string> texts(const std::string& dir, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::ifstream f(dir + "/r" + std::to_string(i) + ".json");
    std::string body((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto j = nlohmann::json::parse(body, nullptr, false);
    out.push_back(j.is_object() && j.contains("choices") ? j["choices"][0]["text"].get<std::string>()
                                                          : "no answer: " + body);
  }
  return out;
}

std::vector<std::string> serve_args(int port) {
  return {rwkvpp_binary(), "serve", "-m", small_sharded_model(), "--tokenizer", "bytes", "--port",
          std::to_string(port), "--threads", "1", "--max-batch", "8"};
}

}  // namespace

TEST_CASE("serve: a worker killed mid-stream; every answer equals the single process, state cache on",
          "[ucx][recovery][serve]") {
  if (!have_ucx_transport()) {
    WARN("SKIPPED: this build has no UCX transport");
    return;
  }
  constexpr int kStreams = 48;
  TempDir d;
  const std::string key = d / "cluster.key", one = d / "one", many = d / "many";
  REQUIRE(run(rwkvpp_binary() + " keygen " + key, 30).exit_code == 0);
  REQUIRE(run("mkdir -p " + one + " " + many, 10).exit_code == 0);
  const int p1 = free_port();
  RankRun single = run_processes({serve_client(p1, kStreams, one), serve_args(p1)}, {{}, 180, 2});
  INFO(single.all());
  REQUIRE(single.exit_codes[0] == 0);
  const std::vector<std::string> want = texts(one, kStreams);
  for (const std::string& t : want) REQUIRE(!contains(t, "no answer"));

  const int p2 = free_port();
  const std::string addr = "127.0.0.1:" + std::to_string(free_port());
  std::vector<std::string> coord = serve_args(p2);
  for (const char* a : {"--listen", addr.c_str(), "--workers", "3", "--standby", "1", "--cluster-key", key.c_str(),
                        "--join-timeout", "60", "--snapshot-tokens", "16"})
    coord.push_back(a);
  std::vector<std::vector<std::string>> procs = {serve_client(p2, kStreams, many), coord};
  for (int w = 1; w <= 4; ++w) procs.push_back(worker(addr, key, d / ("w" + std::to_string(w) + ".pid"), 0.5 * w));
  // Kills rank 2 once 2,000 tokens have been generated (of 14,400), read from /metrics.
  procs.push_back({"/bin/sh", "-c",
                   "i=0; while [ $i -lt 2400 ]; do n=$(curl -s http://127.0.0.1:" + std::to_string(p2) +
                       "/metrics | sed -n 's/^rwkvpp_generation_tokens_total \\([0-9]*\\).*/\\1/p'); "
                       "[ -n \"$n\" ] && [ \"$n\" -ge 2000 ] && kill -9 $(cat " + d / "w2.pid" +
                       ") && echo \"killed at $n tokens\" && exit 0; i=$((i+1)); sleep 0.05; done; exit 1"});
  RankRun r = run_processes(procs, {{"RWKVPP_PEER_TIMEOUT_S=10"}, 240, 5});
  INFO(r.all());
  REQUIRE(r.exit_codes[0] == 0);
  REQUIRE(r.exit_codes[6] == 0);
  const std::regex rec(R"(recovered from the loss of rank 2 in ([0-9.]+) s: .* restored ([0-9]+) sequence slot\(s\) \(([0-9]+) from a snapshot\), replayed ([0-9]+) token\(s\))");
  std::smatch m;
  REQUIRE(std::regex_search(r.err[1], m, rec));
  WARN("serve recovery: " << m[1].str() << " s, " << m[2].str() << " slots (" << m[3].str() << " from a snapshot), "
                          << m[4].str() << " tokens replayed");
  CHECK(std::stol(m[3].str()) > 0);
  CHECK(texts(many, kStreams) == want);
}
