// The batch suites' shared fixture; see batch_fixture.h.
#include "coordinator/batch_fixture.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "catch.h"
#include "helpers.h"

namespace rwkvpp::test {

const std::string& byte_model() {
  struct Model {
    TempDir dir;
    std::string path;
    Model() {
      path = dir / "bytes-4v0";
      auto r =
          run(rwkvpp_binary() + " convert " + fixture("rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin") +
                  " -o " + path + " --tokenizer bytes",
              120);
      if (r.exit_code != 0) throw std::runtime_error("convert failed: " + r.err);
    }
  };
  static Model m;
  return m.path;
}

void write_standard_prompts(const std::string& path) {
  // Lengths differ from line to line, so that records keep coming out while the job runs.
  std::string s;
  for (int i = 0; i < 40; ++i)
    s += fmt::format(
        "{{\"id\": \"p{}\", \"prompt\": \"Prompt number {}: once upon a time there was\", "
        "\"max_tokens\": {}}}\n",
        i, i, 400 + 53 * (i % 16));
  write_file(path, s);
}

std::string standard_flags() {
  return "-m " + byte_model() + " --n 4 --temperature 1 --top-p 0.95 --seed 11 --progress none";
}

namespace {

struct Ref {
  TempDir dir;
  std::map<std::string, std::string> records;
  std::string meta;
  Ref() {
    write_standard_prompts(dir / "in.jsonl");
    auto r = run(rwkvpp_binary() + " batch " + standard_flags() + " -i " + dir / "in.jsonl" +
                     " -o " + dir / "out.jsonl",
                 300);
    if (r.exit_code != 0) throw std::runtime_error("the reference batch run failed: " + r.err);
    records = read_records(dir / "out.jsonl");
    meta = read_file(dir / "out.jsonl.meta.json");
  }
};

const Ref& reference() {
  static Ref ref;
  return ref;
}

}  // namespace

const std::map<std::string, std::string>& standard_reference() { return reference().records; }
const std::string& standard_reference_meta() { return reference().meta; }

std::map<std::string, std::string> read_records(const std::string& path) {
  std::string all = read_file(path);
  INFO(path);
  REQUIRE((all.empty() || all.back() == '\n'));
  std::map<std::string, std::string> out;
  std::stringstream ss(all);
  std::string line;
  while (std::getline(ss, line)) {
    nlohmann::json j = nlohmann::json::parse(line);  // throws (fails the test) on a bad line
    std::string key = j.at("id").dump() + "#" + std::to_string(j.at("index").get<int>());
    INFO(key);
    REQUIRE(out.emplace(key, line).second);
  }
  return out;
}

}  // namespace rwkvpp::test
