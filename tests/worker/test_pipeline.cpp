// End-to-end pipeline tests under mpirun: several stages must reproduce the single-process run
// (to float rounding) and the outside reference, for automatic, uneven and coordinator-only
// partitions, with both of Open MPI's point-to-point layers; a rank that dies or stops is named.
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "catch.h"
#include "common/npy.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "shards/model_format.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

const char* kUcx = "--mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any";

std::string mpirun(int np, const std::string& extra = "") {
  return "mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(np) + " " + extra + " ";
}

struct Fixture {
  TempDir dir;
  std::string model;
  std::vector<int32_t> tokens;
  std::vector<double> ref;
  Fixture() {
    model = dir / "model";
    Checkpoint ck = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
    WriteOptions o;
    o.shards = 4;
    write_model(ck, infer_config(ck), model, o);
    auto j = nlohmann::json::parse(read_file(fixture("hf-rwkv4/hf-rwkv4-small.json")));
    tokens = j.at("tokens").get<std::vector<int32_t>>();
    ref = read_f64(fixture("hf-rwkv4/hf-rwkv4-small.logits.f64"));
  }
  // Three sequences of different lengths in one batch; each is a prefix of the fixture's tokens,
  // so its reference logits are the first rows of the reference.
  std::string token_args() const {
    std::string s;
    for (size_t len : {size_t(48), size_t(17), size_t(5)}) {
      s += " --tokens ";
      for (size_t i = 0; i < len; ++i) s += (i ? "," : "") + std::to_string(tokens[i]);
    }
    return s;
  }
  std::vector<double> expected() const {
    std::vector<double> e;
    for (size_t len : {size_t(48), size_t(17), size_t(5)}) e.insert(e.end(), ref.begin(), ref.begin() + int64_t(len * 300));
    return e;
  }
};

Fixture& fx() {
  static Fixture f;
  return f;
}

std::vector<float> run_logits(const std::string& launcher, const std::string& flags, const std::string& out) {
  auto r = run(launcher + rwkvpp_binary() + " logits -m " + fx().model + fx().token_args() + " --chunk 16 -o " + out + " " + flags, 300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::vector<int64_t> shape;
  auto v = read_npy_f32(out, &shape);
  REQUIRE(shape == std::vector<int64_t>{70, 300});
  return v;
}

// Per stage, the hidden-vector bytes it received through shared slots (the --stats lines).
std::map<int, uint64_t> shared_bytes(const std::string& err) {
  std::regex line(R"(\[stats\] stage (\d) rank \d .*\(and (\d+) B through shared slots\))");
  std::map<int, uint64_t> shared;
  for (auto it = std::sregex_iterator(err.begin(), err.end(), line); it != std::sregex_iterator(); ++it)
    shared[std::stoi((*it)[1])] = std::stoull((*it)[2]);
  return shared;
}

}  // namespace

TEST_CASE("pipelines of 2, 3 and 4 stages reproduce the single-process logits and the reference", "[mpi][pipeline]") {
  TempDir d;
  auto single = run_logits("", "", d / "single.npy");
  CHECK(max_abs_diff(single, fx().expected()) < 5e-5);
  struct Case {
    int np;
    const char* flags;
    const char* batching = "";  // the single-process run compared against uses the same batching
  };
  const Case cases[] = {
      {2, "--layers auto"},
      {3, "--layers auto"},
      {4, "--layers auto"},
      {3, "--layers 0-0,1-2,3-3"},
      {2, "--layers 0-2,3-3"},
      {4, "--layers 0-0,1-1,2-2,3-3 --microbatches 3 --max-batch 2", "--microbatches 3 --max-batch 2"},
      {3, "--coordinator-only"},
      {4, "--coordinator-only --layers 0-1,2-2,3-3"},
  };
  for (const char* pml : {"", kUcx}) {
    for (const Case& c : cases) {
      INFO("np " << c.np << " " << c.flags << " " << pml);
      auto got = run_logits(mpirun(c.np, pml), c.flags, d / "pipe.npy");
      // Same batches, same arithmetic: only the placement of the layers differs.
      auto same_batching = *c.batching ? run_logits("", c.batching, d / "single2.npy") : single;
      CHECK(max_abs_diff(got, same_batching) < 1e-6);
      CHECK(max_abs_diff(got, fx().expected()) < 5e-5);
    }
  }
}

TEST_CASE("stages on one host pass hidden vectors through shared slots, with the same logits as through messages",
          "[mpi][pipeline][shared]") {
  TempDir d;
  std::map<std::string, std::vector<float>> got;
  for (const char* share : {"1", "0"}) {
    INFO("RWKVPP_SHARE=" << share);
    const std::string out = d / (std::string("o") + share + ".npy");
    auto r = run(std::string("RWKVPP_SHARE=") + share + " " + mpirun(4) + rwkvpp_binary() + " logits -m " + fx().model +
                     fx().token_args() + " --chunk 16 --microbatches 3 --max-batch 2 --layers 0-0,1-1,2-2,3-3 --stats -o " + out,
                 300);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    std::map<int, uint64_t> shared = shared_bytes(r.err);
    REQUIRE(shared.size() == 4);
    CHECK(shared[0] == 0);  // stage 0 embeds its tokens
    // Every later stage received all 70 tokens' hidden vectors (C = 64 floats) through its slots,
    // or none with sharing off.
    for (int k = 1; k < 4; ++k) CHECK(shared[k] == (share[0] == '1' ? 70u * 64u * 4u : 0u));
    std::vector<int64_t> shape;
    got[share] = read_npy_f32(out, &shape);
    REQUIRE(shape == std::vector<int64_t>{70, 300});
  }
  CHECK(max_abs_diff(got["1"], got["0"]) == 0.0);
  CHECK(max_abs_diff(got["1"], fx().expected()) < 5e-5);

  // Stage 1 offers its slots to rank 0, where sharing is off: rank 0 declines and sends the
  // hidden vectors in its Steps; stages 2 and 3 share as before. Same logits.
  const std::string cmd = rwkvpp_binary() + " logits -m " + fx().model + fx().token_args() +
                          " --chunk 16 --microbatches 3 --max-batch 2 --layers 0-0,1-1,2-2,3-3 --stats -o " + d / "mixed.npy";
  auto r = run("mpirun --allow-run-as-root --oversubscribe -np 1 env RWKVPP_SHARE=0 " + cmd + " : -np 3 " + cmd, 300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::map<int, uint64_t> shared = shared_bytes(r.err);
  REQUIRE(shared.size() == 4);
  CHECK(shared[1] == 0);
  CHECK(shared[2] == 70u * 64u * 4u);
  CHECK(shared[3] == 70u * 64u * 4u);
  std::vector<int64_t> shape;
  CHECK(max_abs_diff(read_npy_f32(d / "mixed.npy", &shape), got["0"]) == 0.0);
}

TEST_CASE("each stage rank opens only the shard files of its own layers", "[mpi][pipeline]") {
  TempDir d;
  auto r = run(mpirun(4) + rwkvpp_binary() + " logits -m " + fx().model +
                   " --tokens 1,2,3 --layers 0-0,1-1,2-2,3-3 --stats -o " + d / "o.npy", 300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::regex line(R"(\[stats\] rank (\d) opened (\S+))");
  std::map<int, std::set<std::string>> opened;
  for (auto it = std::sregex_iterator(r.err.begin(), r.err.end(), line); it != std::sregex_iterator(); ++it)
    opened[std::stoi((*it)[1])].insert(std::filesystem::path((*it)[2].str()).filename().string());
  REQUIRE(opened.size() == 4);
  for (int k = 0; k < 4; ++k) {
    std::set<std::string> want = {"model.h5", fmt::format("model-{:05d}-of-00004.h5", k + 1)};
    CHECK(opened[k] == want);
  }
}

TEST_CASE("a killed or stopped worker rank is named and the job exits within 30 s", "[mpi][pipeline][failure]") {
  for (const char* sig : {"KILL", "STOP"}) {
    INFO("signal " << sig);
    TempDir d;
    // A long generation; once it runs, signal the process of rank 2.
    std::string script =
        "export RWKVPP_PEER_TIMEOUT_S=5; " + mpirun(3) + rwkvpp_binary() + " generate -m " + fx().model +
        " --prompt-tokens 1,2,3 -n 100000000 --layers 0-1,2-2,3-3 >" + d / "out" + " 2>" + d / "err" +
        " & mp=$!; sleep 3; "
        "for p in $(pgrep -f 'rwkvpp generate -m " + fx().model + "'); do "
        "  if tr '\\0' '\\n' </proc/$p/environ 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=2; then kill -" + sig + " $p; fi; "
        "done; start=$(date +%s); wait $mp; code=$?; echo \"exit=$code seconds=$(( $(date +%s) - start ))\"; "
        "pkill -KILL -f 'rwkvpp generate -m " + fx().model + "' || true";
    auto r = run(script, 120);
    std::string err = read_file(d / "err");
    INFO(r.out << err);
    std::smatch m;
    REQUIRE(std::regex_search(r.out, m, std::regex(R"(exit=(\d+) seconds=(\d+))")));
    CHECK(std::stoi(m[1]) != 0);
    CHECK(std::stoi(m[2]) <= 30);
    CHECK(err.find("rank 2") != std::string::npos);
  }
}

TEST_CASE("ranks that opened different model files refuse to start", "[mpi][pipeline]") {
  TempDir d;
  Checkpoint ck = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
  ck.tensors["head.weight"].data[0] ^= 1;  // a different model of the same shape
  write_model(ck, infer_config(ck), d / "other", WriteOptions{});
  std::string a = rwkvpp_binary() + " generate --prompt-tokens 1 -n 2 -m ";
  auto r = run("mpirun --allow-run-as-root --oversubscribe -np 1 " + a + fx().model + " : -np 1 " + a + d / "other", 120);
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("rank 1") != std::string::npos);
  CHECK(r.err.find("different model") != std::string::npos);
}

TEST_CASE("bad partitions are refused before any weight is read", "[mpi][pipeline]") {
  struct Case {
    int np;
    const char* layers;
    const char* says;
  };
  const Case cases[] = {
      {2, "0-1,3-3", "in no range"},
      {2, "0-2,2-3", "overlaps"},
      {2, "0-1,2-4", "out of range"},
      {3, "0-1,2-3", "2 ranges but there are 3 stages"},
      {1, "0-x", "cannot read range"},
  };
  for (const Case& c : cases) {
    INFO(c.layers);
    auto r = run(mpirun(c.np) + rwkvpp_binary() + " generate -m " + fx().model + " --prompt-tokens 1 -n 1 --layers " + c.layers, 120);
    CHECK(r.exit_code != 0);
    CHECK(r.err.find(c.says) != std::string::npos);
  }
  auto r = run(mpirun(6) + rwkvpp_binary() + " generate -m " + fx().model + " --prompt-tokens 1 -n 1", 120);
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("6 stages for a model of 4 layers") != std::string::npos);
}
