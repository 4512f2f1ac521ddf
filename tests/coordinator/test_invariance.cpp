// Same seed, same bytes: a seeded batch job gives bit-identical records (token ids, log
// probabilities, text) whatever shares its steps and however the pipeline is cut, on every RWKV
// version (docs/architecture.md, Reproducibility). Each version's job: 150 prompts of mixed
// lengths after a shared --prefix-file, n = 2 samples each (300 records), 200-256 tokens per
// sample at temperature 0.9 with a seed per line; the models are the byte-level fixtures
// stored as fp16, as a user would convert them. Compared with one process at --max-batch 64:
//   --max-batch 1 and --threads 1; --max-batch 8 with --chunk 5; a line run alone; a run
//   killed with SIGKILL at three points and resumed; and ([mpi]) mpirun -np 2 and -np 3 with
//   uneven partitions.
#include <fmt/format.h>

#include <map>
#include <string>
#include <vector>

#include "catch.h"
#include "coordinator/batch_fixture.h"
#include "helpers.h"

using namespace rwkvpp::test;

namespace {

struct Version {
  const char* name;
  const char* source;  // fixture
  const char* np2;     // --layers of an uneven 2-stage cut
  const char* np3;     // --layers of an uneven 3-stage cut
};

const Version kVersions[] = {
    {"4", "rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin", "0-0,1-3", "0-1,2-2,3-3"},
    {"5.1", "rwkv-cpp-tiny/tiny-rwkv-5v1-730K-FP32.bin", "0-2,3-11", "0-6,7-7,8-11"},
    {"5.2", "rwkv-cpp-tiny/tiny-rwkv-5v2-730K-FP32.bin", "0-8,9-11", "0-0,1-9,10-11"},
    {"6", "pip-rwkv/pip-rwkv6-small.safetensors", "0-2,3-3", "0-0,1-2,3-3"},
    {"7", "rwkv-cpp-tiny/tiny-rwkv-7v0-834K-FP32.bin", "0-4,5-11", "0-2,3-10,11-11"},
};

constexpr int kLines = 150;
const std::string kMpirun = "mpirun --allow-run-as-root --oversubscribe -np ";

std::string prompt_line(int i) {
  // Prompts of 14 to 110 bytes, so that sequences of many lengths share the steps.
  std::string filler;
  for (int j = 0; j < (i * 37) % 97; ++j) filler += "abcdefghij klmnop"[(i + j) % 17];
  return fmt::format(
      "{{\"id\": \"r{}\", \"prompt\": \"Record {}: the {}\", \"max_tokens\": {}, \"temperature\": 0.9, "
      "\"seed\": {}}}\n",
      i, i, filler, 200 + (i * 13) % 57, 1000 + i);
}

struct Job {
  TempDir dir;
  std::string model;
  explicit Job(const Version& v) {
    model = dir / "model";
    auto r = run(rwkvpp_binary() + " convert " + fixture(v.source) + " -o " + model +
                     " --tokenizer bytes --dtype fp16",
                 120);
    if (r.exit_code != 0) throw std::runtime_error("convert failed: " + r.err);
    std::string in;
    for (int i = 0; i < kLines; ++i) in += prompt_line(i);
    write_file(dir / "in.jsonl", in);
    write_file(dir / "one.jsonl", prompt_line(17));
    write_file(dir / "prefix.txt", "A log of numbered records, each one line of plain words.\n");
  }
  // The batch command for `input` -> `out` (under `launcher`) with extra pipeline flags.
  std::string cmd(const std::string& launcher, const std::string& input, const std::string& out,
                  const std::string& flags) const {
    return launcher + rwkvpp_binary() + " batch -m " + model + " -i " + dir / input + " -o " +
           dir / out + " --n 2 --top-p 0.95 --prefix-file " + dir / "prefix.txt" +
           " --token-ids --logprobs --progress none " + flags;
  }
  std::map<std::string, std::string> complete(const std::string& launcher, const std::string& input,
                                              const std::string& out, const std::string& flags,
                                              int timeout = 600) const {
    auto r = run(cmd(launcher, input, out, flags), timeout);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    return read_records(dir / out);
  }
};

// Records that differ between two runs (the same keys are required).
int differing(const std::map<std::string, std::string>& a, const std::map<std::string, std::string>& b) {
  REQUIRE(a.size() == b.size());
  int n = 0;
  for (auto& [k, line] : a) {
    auto it = b.find(k);
    REQUIRE(it != b.end());
    if (it->second != line) {
      if (n == 0) UNSCOPED_INFO("first differing record " << k << ":\n" << line << "\n" << it->second);
      ++n;
    }
  }
  return n;
}

// The reference run of each version (one process, --max-batch 64, 2 threads), made once.
struct Reference {
  Job job;
  std::map<std::string, std::string> records;
  explicit Reference(const Version& v) : job(v) {
    records = job.complete("", "in.jsonl", "ref.jsonl", "--max-batch 64 --threads 2");
  }
};

Reference& reference(int i) {
  static std::map<int, std::unique_ptr<Reference>> refs;
  auto& r = refs[i];
  if (!r) r = std::make_unique<Reference>(kVersions[i]);
  return *r;
}

}  // namespace

TEST_CASE("seeded records do not depend on the batch, the chunks, the threads or a resume", "[batch][invariance]") {
  for (int vi = 0; vi < int(std::size(kVersions)); ++vi) {
    const Version& v = kVersions[vi];
    INFO("RWKV-" << v.name);
    Reference& ref = reference(vi);
    const Job& job = ref.job;
    REQUIRE(ref.records.size() == 2 * kLines);
    // Every record carries its ids and log probabilities, and runs the full length or to a stop.
    CHECK(ref.records.begin()->second.find("\"token_ids\":[") != std::string::npos);

    {
      INFO("--max-batch 1 --threads 1");
      CHECK(differing(ref.records, job.complete("", "in.jsonl", "b1.jsonl", "--max-batch 1 --threads 1")) == 0);
    }
    {
      INFO("--max-batch 8 --chunk 5");
      CHECK(differing(ref.records, job.complete("", "in.jsonl", "b8.jsonl", "--max-batch 8 --chunk 5")) == 0);
    }
    {
      INFO("line r17 alone");
      auto alone = job.complete("", "one.jsonl", "one-out.jsonl", "--max-batch 64");
      REQUIRE(alone.size() == 2);
      for (auto& [k, line] : alone) CHECK(ref.records.at(k) == line);
    }
    {
      INFO("killed with SIGKILL at three points, then resumed");
      // Each kill lands once the output holds at least `at` records (and the run goes on a
      // little), so that sequences are mid-way through their samples when it dies.
      for (int at : {20, 120, 220}) {
        auto r = run(fmt::format("{} >>{} 2>&1 & p=$!; for i in $(seq 1 2400); do "
                                 "[ $(cat {} 2>/dev/null | wc -l) -ge {} ] && break; sleep 0.025; done; "
                                 "sleep 0.05; kill -KILL $p; wait $p; echo exit=$?",
                                 job.cmd("", "in.jsonl", "resumed.jsonl", "--max-batch 64"), job.dir / "log",
                                 job.dir / "resumed.jsonl", at),
                     300);
        INFO(r.out << read_file(job.dir / "log"));
        CHECK(r.out.find("exit=137") != std::string::npos);
      }
      auto part = read_file(job.dir / "resumed.jsonl");
      CHECK(part.size() > 0);
      CHECK(differing(ref.records, job.complete("", "in.jsonl", "resumed.jsonl", "--max-batch 64")) == 0);
    }
  }
}

TEST_CASE("seeded records do not depend on the ranks or the partition (mpirun -np 2 and 3, uneven)",
          "[batch][invariance][mpi]") {
  for (int vi = 0; vi < int(std::size(kVersions)); ++vi) {
    const Version& v = kVersions[vi];
    INFO("RWKV-" << v.name);
    Reference& ref = reference(vi);
    const Job& job = ref.job;
    CHECK(differing(ref.records, job.complete(kMpirun + "2 ", "in.jsonl", "np2.jsonl",
                                              std::string("--max-batch 64 --layers ") + v.np2)) == 0);
    CHECK(differing(ref.records, job.complete(kMpirun + "3 ", "in.jsonl", "np3.jsonl",
                                              std::string("--max-batch 8 --threads 1 --layers ") + v.np3)) == 0);
  }
}
