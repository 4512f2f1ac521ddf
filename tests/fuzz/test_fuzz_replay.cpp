// The fuzz corpora and regression inputs through the harnesses, without libFuzzer (part of
// rwkvpp_tests, so it runs in every build and under ASan + UBSan in the sanitizer stage of
// scripts/test.sh): no input may crash, break an invariant or take 10 s. Also checks that the
// checked-in seeds are exactly what the project's seed tool writes, and that they are inputs
// the parsers accept (so fuzzing starts deep inside each format).
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "catch.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "fuzz/targets.h"
#include "helpers.h"
#include "net/wire.h"
#include "shards/checkpoint.h"
#include "shards/model_reader.h"

using namespace rwkvpp;
using namespace rwkvpp::fuzz;
namespace fs = std::filesystem;

namespace {

const fs::path kFuzzDir = RWKVPP_FUZZ_DIR;

std::string contents(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> v;
  if (fs::is_directory(dir))
    for (auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) v.push_back(e.path());
  std::sort(v.begin(), v.end());
  return v;
}

Bytes bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

TEST_CASE("every fuzz corpus and regression input replays cleanly within 10 s", "[fuzz]") {
  int replayed = 0;
  for (const Target& t : targets()) {
    const auto corpus = files_in(kFuzzDir / "corpus" / t.name);
    INFO("target " << t.name);
    CHECK(!corpus.empty());
    auto inputs = files_in(kFuzzDir / "regressions" / t.name);
    inputs.insert(inputs.end(), corpus.begin(), corpus.end());
    for (const fs::path& p : inputs) {
      INFO(p.string());
      const std::string b = contents(p);
      const auto t0 = std::chrono::steady_clock::now();
      t.run(bytes_of(b));  // returns, or the test dies: either way the input is named above
      CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 10.0);
      ++replayed;
    }
  }
  CHECK(replayed >= int(2 * targets().size()));
  // Every folder names a harness (a misspelt folder would silently never be replayed).
  for (const char* kind : {"corpus", "regressions"})
    for (auto& e : fs::directory_iterator(kFuzzDir / kind)) {
      if (!e.is_directory()) continue;
      INFO(e.path().string());
      CHECK(find_target(e.path().filename().string()) != nullptr);
    }
}

TEST_CASE("the checked-in seeds are what rwkvpp_fuzz_seeds writes", "[fuzz]") {
  for (const Target& t : targets()) {
    INFO("target " << t.name
                   << " (rerun rwkvpp_fuzz_seeds tests/fuzz/corpus after changing a writer)");
    const Seeds seeds = t.seeds();
    std::set<std::string> on_disk;
    for (const fs::path& p : files_in(kFuzzDir / "corpus" / t.name)) {
      const std::string name = p.filename().string();
      if (name.rfind("seed-", 0) != 0) continue;  // inputs the fuzzer added later
      on_disk.insert(name.substr(5));
      INFO(name);
      REQUIRE(seeds.count(name.substr(5)) == 1);
      CHECK(contents(p) == seeds.at(name.substr(5)));
    }
    CHECK(on_disk.size() == seeds.size());
    // A few KB each (model.h5 seeds: ~20 KB, most of it HDF5's own metadata).
    for (auto& [name, bytes] : seeds) CHECK(bytes.size() <= 32768);
  }
}

TEST_CASE("the seeds are inputs their parsers accept", "[fuzz]") {
  for (auto& [n, b] : find_target("safetensors")->seeds()) {
    Checkpoint ck = read_safetensors_bytes(bytes_of(b), n);
    normalize_hf_names(ck);
    CHECK(infer_config(ck).n_layer == 1);
  }
  for (auto& [n, b] : find_target("pth")->seeds())
    CHECK(!read_pth_bytes(bytes_of(pth_archive_of(bytes_of(b))), n).tensors.empty());
  for (auto& [n, b] : find_target("rwkvcpp")->seeds())
    CHECK(infer_config(read_rwkvcpp_bytes(bytes_of(b), n)).n_embd == 4);
  for (auto& [n, b] : find_target("world_vocab")->seeds())
    CHECK(tokenizer_from_file_bytes(b, n)->kind() == "world");
  for (auto& [n, b] : find_target("tokenizer_json")->seeds()) {
    try {
      CHECK(tokenizer_from_file_bytes(b, n)->encode("hello world").size() == 2);
    } catch (const Error& e) {  // a build without PCRE2/utf8proc
      CHECK(std::string(e.what()).find("unavailable") != std::string::npos);
    }
  }
  for (auto& [n, b] : find_target("model_h5")->seeds()) {
    test::TempDir d;
    test::write_file(d / "model.h5", b);
    ModelReader r(d.path());
    CHECK(r.config().n_embd == 4);
    CHECK(r.read_tensor("head.weight").shape == std::vector<int64_t>{8, 4});
    CHECK(r.read_tokenizer().kind == (n == "tiny-world" ? "world" : ""));
  }
  for (auto& [n, b] : find_target("wire")->seeds())
    CHECK(decode_message(bytes_of(b), 1 << 20).header.type > 0);
}
