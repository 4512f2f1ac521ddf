// `rwkvpp bench` on the CPU backend, alone and as a 2-stage pipeline under mpirun: the JSON the
// GPU issue specifies (floors measured in the same run, decode per batch, prefill per prompt,
// memory, each stage's figures), its figures consistent with their definitions there (the
// batch-1 floor is the weight bytes a token reads at the copy bandwidth; tokens/s is
// sequences over the step time), and clear errors for bad options, the pipeline's tuning
// options (shared by every model command) among them.
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "helpers.h"

using namespace rwkvpp::test;

namespace {

using nlohmann::json;

// a == b up to rounding (both computed from the same printed figures).
bool close(double a, double b) {
  return std::abs(a - b) <= 1e-9 * std::max(std::abs(a), std::abs(b));
}

const char* kArgs =
    " bench --synthetic tiny --device cpu --threads 1 --batch 1,3 --prompt 8,16 --gen 4";

// The figures every run must hold, whatever the machine's speed.
void check_bench_json(const json& j, int stages) {
  REQUIRE(j.at("model") == "synthetic:tiny");
  const auto& f = j.at("floors");
  CHECK(f.at("copy_GBps").get<double>() > 0);
  CHECK(f.at("read_GBps").get<double>() > 0);
  CHECK(f.at("gemm_TFLOPs").get<double>() > 0);
  REQUIRE(j.at("stages").size() == size_t(stages));
  // Batch-1 floor: every stage reads its weights once per token (the embedding one row, so
  // its matrix is left out) at its own read bandwidth, one stage after another.
  const double emb_bytes =
      j.at("vocab_size").get<double>() * j.at("n_embd").get<double>() * 2;  // fp16
  double floor_s = 0, memory = 0;
  int next_layer = 0;
  for (size_t i = 0; i < j.at("stages").size(); ++i) {
    const auto& s = j.at("stages")[i];
    CHECK(s.at("rank") == int(i));
    CHECK(s.at("backend") == "cpu");
    CHECK(s.at("layers")[0] == next_layer);  // contiguous ranges covering every layer
    next_layer = s.at("layers")[1].get<int>() + 1;
    const double read = s.at("weight_bytes").get<double>() - (i == 0 ? emb_bytes : 0.0);
    CHECK(read > 0);
    floor_s += read / (s.at("read_GBps").get<double>() * 1e9);
    CHECK(s.at("memory_bytes").get<double>() ==
          s.at("weight_bytes").get<double>() + s.at("state_bytes").get<double>());
    memory += s.at("memory_bytes").get<double>();
    // The weights are resident (the CPU reads them every step), so the rank's peak resident
    // memory once loaded is at least their bytes.
    CHECK(s.at("peak_rss_bytes").get<double>() >= s.at("weight_bytes").get<double>());
    CHECK(s.at("rss_bytes").get<double>() > 0);
    // Every step passes through every stage.
    CHECK(s.at("steps").get<double>() > 0);
    CHECK(s.at("steps") == j.at("stages")[0].at("steps"));
    CHECK(s.at("tokens") == j.at("stages")[0].at("tokens"));
    // Decode steps (one token per segment) are most of a bench's steps, not all: the prefill
    // steps are not among them.
    CHECK(s.at("decode_steps").get<double>() > 0);
    CHECK(s.at("decode_steps").get<double>() < s.at("steps").get<double>());
    CHECK(s.at("decode_steps") == j.at("stages")[0].at("decode_steps"));
    CHECK(s.at("decode_layers_s").get<double>() == 0);  // no device timing on the CPU
  }
  CHECK(next_layer == j.at("n_layer").get<int>());
  CHECK(close(f.at("decode_b1_floor_ms").get<double>(), floor_s * 1e3));
  CHECK(j.at("memory_bytes").get<double>() == memory);
  // Decode: one entry per batch size asked for, in order; tokens/s = sequences / step time.
  const auto& d = j.at("decode");
  REQUIRE(d.size() == 2);
  CHECK(d[0].at("batch") == 1);
  CHECK(d[0].at("sequences") == 1);
  CHECK(d[1].at("batch") == 3);
  CHECK(d[1].at("sequences").get<int>() >= 3);
  for (const auto& e : d) {
    const double ms = e.at("ms_per_step").get<double>();
    REQUIRE(ms > 0);
    CHECK(close(e.at("tokens_per_s").get<double>(), e.at("sequences").get<double>() * 1e3 / ms));
  }
  CHECK(close(j.at("ratios").at("decode_b1_over_floor").get<double>(),
              d[0].at("ms_per_step").get<double>() / f.at("decode_b1_floor_ms").get<double>()));
  const auto& p = j.at("prefill");
  REQUIRE(p.size() == 2);
  CHECK(p[0].at("prompt") == 8);
  CHECK(p[1].at("prompt") == 16);
  for (const auto& e : p) CHECK(e.at("tokens_per_s").get<double>() > 0);
}

struct Refusal {
  const char* args;
  const char* message;
};

// `command` + each case's args must be refused (exit code 2, kExitBadInput: the command cannot
// run as given), with the message on stderr and no measurement on stdout.
void check_refused(const std::string& command, std::initializer_list<Refusal> cases) {
  for (const Refusal& c : cases) {
    auto r = run(command + c.args, 60);
    INFO(c.args << "\n" << r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK(r.out.find("decode") == std::string::npos);  // failed before any measurement
  }
}

}  // namespace

TEST_CASE("rwkvpp bench on the CPU prints the JSON the GPU issue specifies", "[bench]") {
  TempDir d;
  auto r = run(rwkvpp_binary() + kArgs + " -o " + d / "b.json", 120);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const json printed = json::parse(r.out), written = json::parse(read_file(d / "b.json"));
  CHECK(printed == written);
  check_bench_json(written, 1);
}

TEST_CASE("rwkvpp bench refuses bad sizes and an unwritable --out before measuring", "[bench]") {
  check_refused(
      rwkvpp_binary() + " bench --device cpu --threads 1",
      {
          {" --synthetic tiny --batch 1,x --prompt 8 --gen 2",
           "--batch: 'x' is not a whole number"},
          {" --synthetic tiny --batch 0 --prompt 8 --gen 2", "--batch: 0 is out of range"},
          {" --synthetic tiny --batch 1 --prompt 99999999999 --gen 2",
           "--prompt: 99999999999 is out of range"},
          {" --synthetic tiny --batch 1 --prompt 8 --gen 0", "--gen: 0 tokens"},
          {" --synthetic 99b", "unknown synthetic shape '99b' (known: tiny,"},
          {" --synthetic tiny --batch 1 --prompt 8 --gen 2 -o /nonexistent-dir/b.json",
           "--out: cannot write '/nonexistent-dir/b.json'"},
      });
  auto none = run(rwkvpp_binary() + " bench --device cpu", 60);
  CHECK(none.exit_code != 0);
  CHECK(none.err.find("bench needs --model or --synthetic") != std::string::npos);
}

TEST_CASE("rwkvpp bench under mpirun reports both stages of a 2-stage pipeline", "[mpi][bench]") {
  TempDir d;
  auto r = run("mpirun --allow-run-as-root --oversubscribe -np 2 " + rwkvpp_binary() + kArgs +
                   " -o " + d / "b.json",
               300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(read_file(d / "b.json"));
  check_bench_json(j, 2);
  // Stages on one host pass hidden vectors through shared slots (RWKVPP_SHARE).
  CHECK(j.at("stages")[1].at("bytes_shared").get<double>() > 0);
  CHECK(j.at("stages")[0].at("bytes_shared").get<double>() == 0);
}

TEST_CASE("the pipeline's tuning options refuse values that cannot work", "[bench]") {
  TempDir d;
  auto synth = run(rwkvpp_binary() + " synth --shape tiny -o " + d / "m", 120);
  INFO(synth.err);
  REQUIRE(synth.exit_code == 0);
  // --max-batch 0 used to wait forever for a step that could carry nothing.
  check_refused(
      rwkvpp_binary() + " generate -m " + d / "m" + " --device cpu --prompt-tokens 1,2,3 -n 2",
      {
          {" --max-batch 0", "--max-batch: 0 sequences per step; at least 1"},
          {" --chunk 0", "--chunk: 0 prompt tokens per step; at least 1"},
          {" --microbatches -1", "--microbatches: -1; 0 (two per stage"},
          {" --threads -2", "--threads: -2; 0 (the host's cores"},
      });
}

TEST_CASE("synth and bench --synthetic know every version's shapes", "[bench][synthetic]") {
  TempDir d;
  // --version 7 --shape tiny names the same model as --shape v7-tiny: same fingerprint (it
  // covers every stored tensor's bytes); another seed gives other weights.
  auto fingerprint = [&](const std::string& args, const std::string& dir) {
    auto s = run(rwkvpp_binary() + " synth " + args + " -o " + d / dir, 120);
    INFO(s.err);
    REQUIRE(s.exit_code == 0);
    CHECK(contains(s.out, "RWKV-7 model, shape v7-tiny"));
    auto i = run(rwkvpp_binary() + " inspect --json " + d / dir, 60);
    REQUIRE(i.exit_code == 0);
    const json j = json::parse(i.out);
    CHECK(j.at("rwkv_version") == "7");
    return j.at("fingerprint").get<std::string>();
  };
  const std::string a = fingerprint("--shape v7-tiny", "a"), b = fingerprint("--version 7 --shape tiny", "b");
  CHECK(a == b);
  CHECK(fingerprint("--shape v7-tiny --seed 2", "c") != a);
  auto g = run(rwkvpp_binary() + " generate -m " + d / "a" + " --device cpu --prompt-tokens 1,2,3 -n 4", 120);
  INFO(g.err);
  CHECK(g.exit_code == 0);
  // The bench JSON names the version and the shape, from a model or generated weights.
  for (const std::string& what : {std::string("-m ") + d / "a", std::string("--synthetic v7-tiny"),
                                  std::string("--version 7 --synthetic tiny")}) {
    INFO(what);
    auto r = run(rwkvpp_binary() + " bench " + what + " --device cpu --threads 1 --batch 1 --prompt 8 --gen 2", 120);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    const json j = json::parse(r.out);
    CHECK(j.at("version") == "7");
    CHECK(j.at("n_head") == 2);
    CHECK(j.at("head_size") == 64);
    if (what[0] == '-' && what[1] == 'm')
      CHECK(j.at("shape").is_null());
    else
      CHECK(j.at("shape") == "v7-tiny");
  }
  auto help = run(rwkvpp_binary() + " bench --help", 60);
  CHECK(contains(help.out, "v7-13.3b"));
  CHECK(contains(help.out, "v6-14b"));
  CHECK(contains(help.out, "v5-7b"));
}
