// `rwkvpp batch` ([batch]): records and their fields, forked samples equal to separate runs,
// input validation into the rejects file, refusal to mix inputs or models in one output, and
// resuming after a torn line, SIGKILL or SIGTERM -- alone and under mpirun with 3 ranks ([mpi]).
#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "catch.h"
#include "coordinator/batch_fixture.h"
#include "helpers.h"

using namespace rwkvpp::test;
using nlohmann::json;

namespace {

const std::string kMpirun3 = "mpirun --allow-run-as-root --oversubscribe -np 3 ";

std::string batch(const std::string& dir, const std::string& flags) {
  return rwkvpp_binary() + " batch -m " + byte_model() + " -i " + dir + "/in.jsonl -o " + dir +
         "/out.jsonl --progress none " + flags;
}

std::vector<json> lines_of(const std::string& path) {
  std::vector<json> v;
  std::stringstream ss(read_file(path));
  std::string line;
  while (std::getline(ss, line)) v.push_back(json::parse(line));
  return v;
}

// Text as the batch writes it: bytes that are not UTF-8 become U+FFFD.
std::string as_json_text(const std::string& raw) {
  return json::parse(json(raw).dump(-1, ' ', false, json::error_handler_t::replace))
      .get<std::string>();
}

// Starts the standard job in the background (under `launcher`), waits until the output holds
// `min_lines` records (0: waits `delay` seconds only), then sends `sig` to the launched process
// and, for KILL, to its children (the ranks). Prints "exit=<code> ms=<time from signal to exit>".
std::string interrupted_run(const std::string& dir, const std::string& launcher, const char* sig,
                            int min_lines, double delay) {
  return fmt::format(
      "{launcher}{bin} batch {flags} -i {d}/in.jsonl -o {d}/out.jsonl >>{d}/log 2>&1 & p=$!; "
      "for i in $(seq 1 1200); do [ $(cat {d}/out.jsonl 2>/dev/null | wc -l) -ge {min} ] && break; "
      "sleep 0.05; done; "
      "sleep {delay}; kids=$(pgrep -P $p); t0=$(date +%s%N); kill -{sig} $p; "
      "if [ {sig} = KILL ]; then kill -KILL $kids 2>/dev/null; fi; "
      "wait $p; code=$?; t1=$(date +%s%N); "
      "for k in $kids; do for i in $(seq 1 100); do grep -qs '^State:.*[RSD]' /proc/$k/status || "
      "break; sleep 0.05; done; done; "
      "echo \"exit=$code ms=$(( (t1 - t0) / 1000000 ))\"",
      fmt::arg("launcher", launcher), fmt::arg("bin", rwkvpp_binary()),
      fmt::arg("flags", standard_flags()), fmt::arg("d", dir), fmt::arg("min", min_lines),
      fmt::arg("delay", delay), fmt::arg("sig", sig));
}

std::pair<int, int> exit_and_ms(const std::string& out) {
  std::smatch m;
  REQUIRE(std::regex_search(out, m, std::regex(R"(exit=(\d+) ms=(\d+))")));
  return {std::stoi(m[1]), std::stoi(m[2])};
}

}  // namespace

TEST_CASE("batch writes n records per prompt with the documented fields", "[batch]") {
  TempDir d;
  write_file(
      d / "in.jsonl",
      "{\"id\": \"a\", \"prompt\": \"Hello there\", \"n\": 3, \"temperature\": 0.9, \"seed\": 5}\n"
      "{\"id\": 7, \"prompt\": \"The quick brown fox\", \"max_tokens\": 5}\n"
      "{\"id\": \"s\", \"prompt\": \"x\", \"stop\": \"e\", \"max_tokens\": 64, \"extra\": [1, "
      "2]}\n");
  auto r = run(batch(d.path(), "--n 2 -n 12 --logprobs"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("complete: 7 records") != std::string::npos);
  auto recs = read_records(d / "out.jsonl");
  REQUIRE(recs.size() == 7);
  for (const char* k : {"\"a\"#0", "\"a\"#1", "\"a\"#2", "7#0", "7#1", "\"s\"#0", "\"s\"#1"})
    CHECK(recs.count(k) == 1);
  for (const json& j : lines_of(d / "out.jsonl")) {
    std::vector<std::string> keys;
    for (auto& [k, v] : j.items()) keys.push_back(k);
    std::sort(keys.begin(), keys.end());
    CHECK(keys == std::vector<std::string>{"completion_tokens", "finish_reason", "id", "index",
                                           "logprobs", "prompt_tokens", "text"});
    int ct = j["completion_tokens"].get<int>();
    CHECK(j["logprobs"].size() == size_t(ct));
    for (const json& lp : j["logprobs"]) CHECK(lp.get<double>() <= 0.0);
    std::string id = j["id"].dump();
    if (id == "\"a\"") {
      CHECK(j["prompt_tokens"] == 11);  // bytes
      CHECK(ct == 12);
      CHECK(j["finish_reason"] == "length");
    } else if (id == "7") {
      CHECK(ct == 5);
    } else {
      CHECK(j["text"].get<std::string>().find('e') == std::string::npos);
      CHECK((j["finish_reason"] == "stop" || ct == 64));
    }
  }
  // The meta file says what the output was made from.
  json meta = json::parse(read_file(d / "out.jsonl.meta.json"));
  CHECK(meta["format"] == "rwkvpp-batch");
  CHECK(meta["defaults"]["n"] == 2);
  CHECK(meta["model"]["fingerprint"].get<std::string>().size() == 16);
  // Run again: nothing to do, nothing added.
  auto again = run(batch(d.path(), "--n 2 -n 12 --logprobs"));
  CHECK(again.exit_code == 0);
  CHECK(read_records(d / "out.jsonl") == recs);
}

TEST_CASE("forked samples equal separate generate runs; a prefix file equals the joined prompt",
          "[batch]") {
  TempDir d;
  write_file(d / "in.jsonl",
             "{\"id\": \"f\", \"prompt\": \"Once upon a time\", \"n\": 3, \"seed\": 100, "
             "\"temperature\": 1.0, \"top_k\": 20}\n"
             "{\"id\": \"g\", \"prompt\": \" and then\", \"max_tokens\": 20}\n");
  write_file(d / "prefix.txt", "A story.\n");
  auto r = run(batch(d.path(), "-n 24 --prefix-file " + d / "prefix.txt"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  auto recs = lines_of(d / "out.jsonl");
  REQUIRE(recs.size() == 4);
  for (const json& j : recs) {
    bool f = j["id"] == "f";
    int index = j["index"].get<int>();
    // Sample i of a line with "seed": s uses seed s + i.
    std::string flags =
        f ? fmt::format("--temperature 1 --top-k 20 --seed {} -n 24", 100 + index) : "-n 20";
    std::string prompt = f ? "A story.\nOnce upon a time" : "A story.\n and then";
    auto g = run(rwkvpp_binary() + " generate -m " + byte_model() + " " + flags + " --prompt '" +
                 prompt + "'");
    INFO(j.dump() << "\n" << g.err);
    REQUIRE(g.exit_code == 0);
    CHECK(j["text"].get<std::string>() == as_json_text(g.out));
    CHECK(j["prompt_tokens"] == int(prompt.size()));
  }
}

TEST_CASE(
    "bad input lines go to the rejects file with their line number and reason; the job goes on",
    "[batch]") {
  TempDir d;
  write_file(d / "in.jsonl",
             "{\"id\": \"ok1\", \"prompt\": \"fine\"}\n"
             "this is not json\n"
             "{\"id\": \"x\"}\n"
             "[1, 2]\n"
             "{\"prompt\": \"no id\"}\n"
             "\n"
             "{\"id\": \"t\", \"prompt\": \"p\", \"top_p\": 1.5}\n"
             "{\"id\": \"ok1\", \"prompt\": \"again\"}\n"
             "{\"id\": 1.5, \"prompt\": \"p\"}\n"
             "{\"id\": \"n\", \"prompt\": \"p\", \"n\": 0}\n"
             "{\"id\": \"m\", \"prompt\": \"p\", \"max_tokens\": \"many\"}\n"
             "{\"id\": \"st\", \"prompt\": \"p\", \"stop\": [\"\"]}\n"
             "{\"id\": \"tmp\", \"prompt\": \"p\", \"temperature\": -1}\n"
             "{\"id\": \"e\", \"prompt\": \"\"}\n"
             "{\"id\": \"big\", \"prompt\": \"p\", \"temperature\": 1e999}\n"
             "{\"id\": \"ok2\", \"prompt\": \"also fine\", \"n\": 2}");  // no newline at the end
  auto r = run(batch(d.path(), "-n 4 --rejects " + d / "bad.jsonl"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(read_records(d / "out.jsonl").size() == 3);
  auto rejects = lines_of(d / "bad.jsonl");
  std::map<int, std::string> why;
  for (const json& j : rejects) why[j["line"].get<int>()] = j["reason"].get<std::string>();
  const std::map<int, std::string> want = {{2, "invalid JSON"},
                                           {3, "field 'prompt' is missing"},
                                           {4, "must be a JSON object"},
                                           {5, "field 'id' is missing"},
                                           {7, "field 'top_p'"},
                                           {8, "duplicate id \"ok1\" (first on line 1)"},
                                           {9, "field 'id' must be"},
                                           {10, "field 'n'"},
                                           {11, "field 'max_tokens' must be an integer"},
                                           {12, "field 'stop'"},
                                           {13, "field 'temperature'"},
                                           {14, "field 'prompt' is empty"},
                                           {15, "invalid JSON"}};
  REQUIRE(why.size() == want.size());
  for (auto& [line, text] : want) {
    INFO("line " << line << ": " << why[line]);
    CHECK(why[line].find(text) != std::string::npos);
  }
  CHECK(rejects[0]["text"] == "this is not json");
  CHECK(r.err.find("13 bad line(s)") != std::string::npos);
}

TEST_CASE("--n and --max-tokens beyond their bounds are refused at once", "[batch]") {
  TempDir d;
  write_file(d / "in.jsonl", "{\"id\": 1, \"prompt\": \"p\"}\n");
  // Issue 21: --n 2147483647 ran for ten minutes, wrote nothing and ignored SIGTERM.
  for (const char* flags : {"--n 2147483647", "--n 100001", "--n 0", "-n 16777217"}) {
    INFO(flags);
    auto r = run(batch(d.path(), flags), 60);
    CHECK(r.exit_code == 2);  // kExitBadInput: rerunning cannot help
    CHECK(r.err.find(std::string(flags).substr(0, 3) == "--n"
                         ? "--n must be in [1, 100000]"
                         : "--max-tokens must be in [0, 16777216]") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(d / "out.jsonl"));
  }
}

TEST_CASE("an output made from another input, model or defaults is refused with the reason",
          "[batch]") {
  TempDir d;
  write_file(d / "in.jsonl",
             "{\"id\": 1, \"prompt\": \"abc\"}\n{\"id\": 2, \"prompt\": \"def\"}\n");
  REQUIRE(run(batch(d.path(), "-n 3")).exit_code == 0);
  const std::string before = read_file(d / "out.jsonl");

  write_file(d / "in2.jsonl",
             "{\"id\": 1, \"prompt\": \"abc\"}\n{\"id\": 2, \"prompt\": \"xyz\"}\n");
  auto r = run(rwkvpp_binary() + " batch -m " + byte_model() + " -i " + d / "in2.jsonl" + " -o " +
               d / "out.jsonl -n 3");
  CHECK(r.exit_code == 2);  // kExitBadInput: rerunning cannot help
  CHECK(r.err.find("the input has changed") != std::string::npos);

  // Another model: the same weights stored as fp16 have another fingerprint.
  REQUIRE(run(rwkvpp_binary() + " convert " + fixture("rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin") +
              " -o " + d / "m16" + " --dtype fp16 --tokenizer bytes")
              .exit_code == 0);
  r = run(rwkvpp_binary() + " batch -m " + d / "m16" + " -i " + d / "in.jsonl" + " -o " +
          d / "out.jsonl -n 3");
  CHECK(r.exit_code == 2);  // kExitBadInput: rerunning cannot help
  CHECK(r.err.find("the model is not the one") != std::string::npos);

  r = run(batch(d.path(), "-n 3 --temperature 0.7"));
  CHECK(r.exit_code == 2);  // kExitBadInput: rerunning cannot help
  CHECK(r.err.find("the default 'temperature' differs") != std::string::npos);

  // Other arithmetic: the model's fp32 matrices computed as int8 would not continue the
  // same records. The meta names what the output was made with.
  CHECK(read_file(d / "out.jsonl.meta.json").find("\"layers\": \"0-3 cpu\"") != std::string::npos);
  r = run(batch(d.path(), "-n 3 --compute-dtype int8"));
  CHECK(r.exit_code == 2);  // kExitBadInput: rerunning cannot help
  CHECK(r.err.find("the arithmetic differs") != std::string::npos);
  CHECK(r.err.find("int8") != std::string::npos);

  // An existing file that no batch job wrote.
  write_file(d / "other.jsonl", "{\"something\": 1}\n");
  r = run(rwkvpp_binary() + " batch -m " + byte_model() + " -i " + d / "in.jsonl" + " -o " +
          d / "other.jsonl");
  CHECK(r.exit_code == 2);  // kExitBadInput: rerunning cannot help
  CHECK(r.err.find("not written by rwkvpp batch") != std::string::npos);

  CHECK(read_file(d / "out.jsonl") == before);  // refusals touch nothing
}

TEST_CASE("a model or input that cannot be opened exits 2, as a refused value does", "[batch]") {
  // cluster/*.sbatch requeue a job after a failure but never after exit 2 (or CLI11's 100-127).
  TempDir d;
  write_file(d / "in.jsonl", "{\"id\": 1, \"prompt\": \"p\"}\n");
  auto r = run(rwkvpp_binary() + " batch -m " + d / "no-model" + " -i " + d / "in.jsonl" + " -o " +
               d / "out.jsonl");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("no-model' does not exist") != std::string::npos);
  r = run(batch(d.path(), "--temprature 1"));  // a typo in a flag: CLI11's codes, 100-127
  INFO(r.err);
  CHECK(r.exit_code >= 100);
  CHECK(r.exit_code <= 127);
  r = run(rwkvpp_binary() + " batch -m " + byte_model() + " -i " + d / "missing.jsonl" + " -o " +
          d / "out.jsonl");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("cannot open --input") != std::string::npos);
  r = run(batch(d.path(), "--max-batch 0"));
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("--max-batch: 0 sequences per step") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(d / "out.jsonl"));
}

TEST_CASE("a torn last line is dropped and the missing records are redone identically", "[batch]") {
  TempDir d;
  write_standard_prompts(d / "in.jsonl");
  const auto& ref = standard_reference();
  // The reference's output minus its last 30 records, with half of the last kept line torn off,
  // as a kill in the middle of a write would leave it.
  std::string all;
  size_t kept = 0;
  for (auto& [k, line] : ref) {
    if (kept++ >= ref.size() - 30) break;
    all += line + "\n";
  }
  write_file(d / "out.jsonl", all.substr(0, all.size() - 40));
  write_file(d / "out.jsonl.meta.json", standard_reference_meta());
  auto r = run(rwkvpp_binary() + " batch " + standard_flags() + " -i " + d / "in.jsonl" + " -o " +
                   d / "out.jsonl",
               300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("dropped a torn last line") != std::string::npos);
  CHECK(r.err.find("resuming") != std::string::npos);
  CHECK(read_records(d / "out.jsonl") == ref);
}

TEST_CASE(
    "SIGKILL at any moment, then the same command: one record per (id, index), as uninterrupted",
    "[batch]") {
  TempDir d;
  write_standard_prompts(d / "in.jsonl");
  // Killed early (loading, first steps), then killed after some records, then completed.
  auto r = run(interrupted_run(d.path(), "", "KILL", 0, 0.3), 120);
  CHECK(exit_and_ms(r.out).first == 137);
  r = run(interrupted_run(d.path(), "", "KILL", 1, 0.2), 120);
  CHECK(exit_and_ms(r.out).first == 137);
  r = run(rwkvpp_binary() + " batch " + standard_flags() + " -i " + d / "in.jsonl" + " -o " +
              d / "out.jsonl",
          300);
  INFO(read_file(d / "log") << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(read_records(d / "out.jsonl") == standard_reference());
}

TEST_CASE(
    "SIGTERM stops within 10 s with exit 75 and complete lines; the same command then completes",
    "[batch]") {
  TempDir d;
  write_standard_prompts(d / "in.jsonl");
  auto r = run(interrupted_run(d.path(), "", "TERM", 1, 0.1), 120);
  std::string log = read_file(d / "log");
  INFO(r.out << log);
  auto [code, ms] = exit_and_ms(r.out);
  CHECK(code == 75);
  CHECK(ms < 10000);
  CHECK(log.find("stopped by SIGTERM") != std::string::npos);
  auto part = read_records(d / "out.jsonl");  // complete lines only
  CHECK(part.size() < standard_reference().size());
  for (auto& [k, line] : part) CHECK(standard_reference().at(k) == line);
  auto again = run(rwkvpp_binary() + " batch " + standard_flags() + " -i " + d / "in.jsonl" +
                       " -o " + d / "out.jsonl",
                   300);
  REQUIRE(again.exit_code == 0);
  CHECK(read_records(d / "out.jsonl") == standard_reference());
}

TEST_CASE(
    "under mpirun -np 3: SIGKILL of mpirun and every rank, then a rerun, equals the uninterrupted "
    "run",
    "[batch][mpi]") {
  TempDir d;
  write_standard_prompts(d / "in.jsonl");
  auto r = run(interrupted_run(d.path(), kMpirun3, "KILL", 1, 0.3), 180);
  INFO(r.out << read_file(d / "log"));
  CHECK(exit_and_ms(r.out).first == 137);
  CHECK(read_records(d / "out.jsonl").size() < standard_reference().size());
  auto again = run(kMpirun3 + rwkvpp_binary() + " batch " + standard_flags() + " -i " +
                       d / "in.jsonl" + " -o " + d / "out.jsonl",
                   300);
  INFO(again.err);
  REQUIRE(again.exit_code == 0);
  CHECK(read_records(d / "out.jsonl") == standard_reference());
}

TEST_CASE(
    "under mpirun -np 3: SIGTERM to mpirun ends the job cleanly within 10 s; a rerun completes it",
    "[batch][mpi]") {
  TempDir d;
  write_standard_prompts(d / "in.jsonl");
  auto r = run(interrupted_run(d.path(), kMpirun3, "TERM", 1, 0.1), 180);
  std::string log = read_file(d / "log");
  INFO(r.out << log);
  auto [code, ms] = exit_and_ms(r.out);
  CHECK(code != 0);  // mpirun reports its own signal (1); rank 0 itself exits 75
  CHECK(ms < 10000);
  CHECK(log.find("stopped by SIGTERM") != std::string::npos);  // rank 0 stopped, it was not killed
  auto part = read_records(d / "out.jsonl");
  CHECK(part.size() < standard_reference().size());
  auto again = run(kMpirun3 + rwkvpp_binary() + " batch " + standard_flags() + " -i " +
                       d / "in.jsonl" + " -o " + d / "out.jsonl",
                   300);
  INFO(again.err);
  REQUIRE(again.exit_code == 0);
  CHECK(read_records(d / "out.jsonl") == standard_reference());
}
