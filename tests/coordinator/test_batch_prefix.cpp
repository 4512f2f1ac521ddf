// Automatic prefix sharing in `rwkvpp batch` ([batch]): prompts sharing a long prefix give the
// same records as the same job with --no-auto-prefix (every prompt fed in full) and as
// `rwkvpp generate` of the whole prompt; with n > 1, with --prefix-file and across a kill and
// resume; the tokens saved are those counted from the inputs, and the tokens fed drop by as
// many. Also the PromptWindow's shared depths ([batch][prefix]).
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "catch.h"
#include "coordinator/batch/prefix_share.h"
#include "coordinator/batch_fixture.h"
#include "helpers.h"

using namespace rwkvpp::test;
using nlohmann::json;

namespace {

// A document of `len` bytes (the byte model reads one token per byte), no quotes or newlines.
std::string document(int len, int salt) {
  static const char* words[] = {"river", "stone", "lamp", "orchard", "signal", "harbor", "quiet"};
  std::string s;
  for (int i = 0; int(s.size()) < len; ++i) s += std::string(words[(i * 3 + salt) % 7]) + " ";
  s.resize(size_t(len));
  return s;
}

struct Job {
  std::string input;
  uint64_t expected_saved = 0;  // counted from the prompts, independently of the code
};

// Two documents, each asked questions that start with distinct characters (so the prompts of a
// document share exactly the document), a third asked two questions that share a long start and
// two that do not (a branch inside a branch), and short prompts that share nothing. Lines
// alternate between the documents, and some carry n > 1.
Job shared_job() {
  const std::string doc[2] = {document(300, 0), document(180, 4)};
  const std::string starts = "ABCDEFGHIJ";
  Job j;
  int count[2] = {0, 0};
  for (int i = 0; i < 10; ++i) {
    const int d = i % 2;
    ++count[d];
    std::string q = fmt::format("{} question {} about it?", starts[size_t(i)], i);
    j.input += fmt::format(
        "{{\"id\": \"q{}\", \"prompt\": \"{}{}\", \"max_tokens\": 12, \"n\": {}, \"seed\": {}}}\n",
        i, doc[d], q, i % 3 == 0 ? 3 : 1, 100 + i);
  }
  const std::string doc3 = document(150, 5);
  const std::string ask = "Please summarize the passage above in a few words and then tell me ";
  REQUIRE(ask.size() >= 64);  // at least --auto-prefix-min beyond the document
  const std::string tails[4] = {ask + "A why", ask + "B how", "X when is it", "Y who is it"};
  for (int i = 0; i < 4; ++i)
    j.input += fmt::format(
        "{{\"id\": \"t{}\", \"prompt\": \"{}{}\", \"max_tokens\": 10, \"n\": 2}}\n", i, doc3,
        tails[i]);
  for (int i = 0; i < 3; ++i)
    j.input += fmt::format("{{\"id\": \"s{}\", \"prompt\": \"{} short one\", \"max_tokens\": 8}}\n",
                           i, char('x' + i));
  // Every prompt of a document but the first skips the document; making the shared state
  // reads it once.
  for (int d = 0; d < 2; ++d) j.expected_saved += uint64_t(count[d] - 1) * doc[d].size();
  // The third document: all four share it, two of them the question start after it as well.
  j.expected_saved += 3 * doc3.size() + 1 * ask.size();
  return j;
}

std::string batch_cmd(const std::string& dir, const std::string& out, const std::string& flags) {
  return rwkvpp_binary() + " batch -m " + byte_model() + " -i " + dir + "/in.jsonl -o " + dir +
         "/" + out + " --progress none --temperature 1 --top-k 20 --seed 5 --logprobs --token-ids " +
         flags;
}

struct Summary {
  uint64_t fed = 0, saved = 0, states = 0;
  bool has_saved = false;
};

Summary summary_of(const std::string& err) {
  Summary s;
  std::smatch m;
  INFO(err);
  REQUIRE(std::regex_search(err, m, std::regex(R"((\d+) tokens fed to the model)")));
  s.fed = std::stoull(m[1]);
  if (std::regex_search(err, m,
                        std::regex(R"((\d+) prompt tokens saved by (\d+) shared prefix state)"))) {
    s.has_saved = true;
    s.saved = std::stoull(m[1]);
    s.states = std::stoull(m[2]);
  }
  return s;
}

}  // namespace

TEST_CASE("automatic prefix sharing gives the records of feeding every prompt in full",
          "[batch]") {
  TempDir d;
  const Job job = shared_job();
  write_file(d / "in.jsonl", job.input);
  const bool with_prefix_file = GENERATE(false, true);
  std::string extra;
  if (with_prefix_file) {
    write_file(d / "prefix.txt", "System: answer briefly.\n");
    extra = " --prefix-file " + d / "prefix.txt";
  }
  INFO("--prefix-file: " << with_prefix_file);
  auto full = run(batch_cmd(d.path(), "full.jsonl", "--no-auto-prefix" + extra), 300);
  INFO(full.err);
  REQUIRE(full.exit_code == 0);
  auto shared = run(batch_cmd(d.path(), "shared.jsonl", extra), 300);
  INFO(shared.err);
  REQUIRE(shared.exit_code == 0);

  const auto a = read_records(d / "full.jsonl"), b = read_records(d / "shared.jsonl");
  CHECK(a.size() == 10 + 4 * 2 + 4 * 2 + 3);  // lines q0, q3, q6 and q9 have n = 3
  CHECK(a == b);

  const Summary sf = summary_of(full.err), ss = summary_of(shared.err);
  CHECK_FALSE(sf.has_saved);
  REQUIRE(ss.has_saved);
  CHECK(ss.saved == job.expected_saved);
  CHECK(sf.fed - ss.fed == job.expected_saved);
  CHECK(ss.states == 4);  // one per document, and the third's longer shared question
}

TEST_CASE("the progress line reports the tokens fed and saved so far", "[batch]") {
  TempDir d;
  const Job job = shared_job();
  write_file(d / "in.jsonl", job.input);
  auto r = run(rwkvpp_binary() + " batch -m " + byte_model() + " -i " + d / "in.jsonl" + " -o " +
                   d / "out.jsonl" + " --progress log --log-interval 0",
               300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::regex line(R"(records \(.*, (\d+) tokens fed, (\d+) saved\n)");
  uint64_t lines = 0, fed = 0, saved = 0;
  for (auto it = std::sregex_iterator(r.err.begin(), r.err.end(), line);
       it != std::sregex_iterator(); ++it, ++lines) {
    const uint64_t f = std::stoull((*it)[1]), s = std::stoull((*it)[2]);
    CHECK(f >= fed);  // counts only grow
    CHECK(s >= saved);
    fed = f;
    saved = s;
  }
  CHECK(lines > 0);
  CHECK(saved == job.expected_saved);  // every prompt had started before the last record
  const Summary sum = summary_of(r.err);
  CHECK(sum.saved == job.expected_saved);
  CHECK(fed <= sum.fed);
}

TEST_CASE("a shared-prefix record equals rwkvpp generate of its whole prompt", "[batch]") {
  TempDir d;
  const std::string doc = document(200, 1);
  std::string in;
  for (int i = 0; i < 4; ++i)
    in += fmt::format(
        "{{\"id\": \"g{}\", \"prompt\": \"{}{} then?\", \"max_tokens\": 64, \"n\": 2, "
        "\"seed\": {}, \"temperature\": 1.5, \"top_k\": 0}}\n",
        i, doc, char('K' + i), 40 + 10 * i);
  write_file(d / "in.jsonl", in);
  auto r = run(batch_cmd(d.path(), "out.jsonl", ""), 300);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(summary_of(r.err).saved == 3 * doc.size());
  std::stringstream ss(read_file(d / "out.jsonl"));
  std::string line;
  int seen = 0;
  while (std::getline(ss, line)) {
    const json j = json::parse(line);
    const int i = j["id"].get<std::string>()[1] - '0', index = j["index"].get<int>();
    if (i != 2) continue;  // one line's two samples (each generate is a separate process)
    const std::string prompt = fmt::format("{}{} then?", doc, char('K' + i));
    auto g = run(rwkvpp_binary() + " generate -m " + byte_model() +
                 fmt::format(" --temperature 1.5 --seed {} -n 64", 40 + 10 * i + index) +
                 " --prompt '" + prompt + "'");
    INFO(j.dump() << "\n" << g.err);
    REQUIRE(g.exit_code == 0);
    const std::string want =
        json::parse(json(g.out).dump(-1, ' ', false, json::error_handler_t::replace))
            .get<std::string>();
    CHECK(j["text"].get<std::string>() == want);
    ++seen;
  }
  CHECK(seen == 2);
}

TEST_CASE("prompts sharing less than --auto-prefix-min tokens read their prompts in full",
          "[batch]") {
  TempDir d;
  const std::string doc = document(50, 2);
  std::string in;
  for (int i = 0; i < 5; ++i)
    in += fmt::format("{{\"id\": \"m{}\", \"prompt\": \"{}{} end\", \"max_tokens\": 4}}\n", i, doc,
                      char('a' + i));
  write_file(d / "in.jsonl", in);
  auto off = run(batch_cmd(d.path(), "a.jsonl", ""), 300);  // default minimum: 64 tokens
  INFO(off.err);
  REQUIRE(off.exit_code == 0);
  CHECK(summary_of(off.err).saved == 0);
  auto on = run(batch_cmd(d.path(), "b.jsonl", "--auto-prefix-min 40"), 300);
  INFO(on.err);
  REQUIRE(on.exit_code == 0);
  CHECK(summary_of(on.err).saved == 4 * doc.size());
  CHECK(read_records(d / "a.jsonl") == read_records(d / "b.jsonl"));
  auto bad = run(batch_cmd(d.path(), "c.jsonl", "--auto-prefix-min 0"), 60);
  CHECK(bad.exit_code != 0);
  CHECK(contains(bad.err, "--auto-prefix-min must be at least 1"));
}

TEST_CASE("a job with shared prefixes killed and resumed equals one fed in full", "[batch]") {
  TempDir d;
  const std::string doc = document(400, 3);
  std::string in;
  for (int i = 0; i < 24; ++i)
    in += fmt::format("{{\"id\": \"k{}\", \"prompt\": \"{}{}{} asks\", \"max_tokens\": {}}}\n", i,
                      doc, char('A' + i), i, 300 + 150 * (i % 5));
  write_file(d / "in.jsonl", in);
  auto ref = run(batch_cmd(d.path(), "ref.jsonl", "--no-auto-prefix --n 2"), 300);
  INFO(ref.err);
  REQUIRE(ref.exit_code == 0);
  const std::string cmd = batch_cmd(d.path(), "out.jsonl", "--n 2");
  auto k = run(cmd + " >" + d / "log" + " 2>&1 & p=$!; for i in $(seq 1 1200); do [ $(cat " +
                   d / "out.jsonl" +
                   " 2>/dev/null | wc -l) -ge 3 ] && break; sleep 0.02; done; kill -KILL $p; "
                   "wait $p; echo exit=$?",
               120);
  CHECK(contains(k.out, "exit=137"));
  const size_t before = read_records(d / "out.jsonl").size();
  CHECK(before >= 3);
  CHECK(before < 48);  // killed before the end
  auto r = run(cmd, 300);
  INFO(read_file(d / "log") << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(read_records(d / "out.jsonl") == read_records(d / "ref.jsonl"));
}

TEST_CASE("PromptWindow: the depths where a prompt branches off the others", "[batch][prefix]") {
  using V = std::vector<int32_t>;
  const V a = {1, 2, 3, 4, 5}, b = {1, 2, 3, 9}, c = {1, 2, 7}, e = {1, 2, 3, 4, 6}, f = {8};
  rwkvpp::PromptWindow w;
  for (const V* p : {&a, &b, &c, &e, &f}) w.add(p);
  CHECK(w.longest_shared(&a) == 4);
  CHECK(w.longest_shared(&f) == 0);
  CHECK(w.shared_depths(&a, 1, 100) == std::vector<size_t>{4, 3, 2});
  CHECK(w.shared_depths(&a, 3, 100) == std::vector<size_t>{4, 3});
  CHECK(w.shared_depths(&a, 1, 3) == std::vector<size_t>{3, 2});  // at most max_len
  CHECK(w.shared_depths(&a, 1, 100, 2) == std::vector<size_t>{4, 2});  // deepest, shallowest
  CHECK(w.shared_depths(&f, 1, 100).empty());
  w.remove(&e);
  CHECK(w.longest_shared(&a) == 3);
  const V a2 = a;  // an equal prompt shares all of it
  w.add(&a2);
  CHECK(w.longest_shared(&a) == 5);
}
