// Batch inputs read line by line (coordinator/batch/batch_input.h) and output records read back
// (journal.h), without a model: every bad value is that line's reject with its number, never
// the job's end (issue 21: `1e999` in one line used to end the whole job), lines over the limit
// are refused without being held, and the counts a line may ask for are bounded.
#include <sstream>

#include "catch.h"
#include "common/error.h"
#include "coordinator/batch/batch_input.h"
#include "coordinator/batch/journal.h"
#include "helpers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

struct Scanned {
  InputScan scan;
  std::map<int64_t, std::string> why;   // line -> reason
  std::map<int64_t, size_t> text_size;  // line -> bytes of the text the reject carries
};

Scanned scan_text(const std::string& text, uint64_t max_line = 1 << 20) {
  Scanned s;
  std::istringstream in(text);
  s.scan = scan_lines(
      in, BatchDefaults{},
      [&](const Reject& r) {
        s.why[r.line] = r.reason;
        s.text_size[r.line] = r.text.size();
      },
      nullptr, max_line);
  return s;
}

}  // namespace

TEST_CASE("a bad value in one line is that line's reject, with its number", "[batch][hostile]") {
  const std::string deep = std::string(5000, '[') + std::string(5000, ']');
  const std::string text =
      "{\"id\": \"a\", \"prompt\": \"ok\"}\n"
      "{\"id\": \"b\", \"prompt\": \"p\", \"temperature\": 1e999}\n"
      "{\"id\": \"c\", \"prompt\": \"p\", \"n\": 1e999}\n"
      "{\"id\": 1e999, \"prompt\": \"p\"}\n"
      "{\"id\": \"d\", \"prompt\": \"p\", \"stop\": " +
      deep +
      "}\n"
      "{\"id\": \"e\", \"prompt\": \"p\", \"n\": 2147483647}\n"
      "{\"id\": \"f\", \"prompt\": \"p\", \"max_tokens\": 99999999999999999999}\n"
      "{\"id\": \"g\", \"prompt\": \"p\", \"seed\": -1}\n"
      "{\"id\": \"h\", \"prompt\": \"p\", \"top_k\": [[[1]]]}\r\n"
      "{\"id\": 18446744073709551615, \"prompt\": \"p\", \"n\": 100000}\n"
      "{\"id\": \"i\", \"prompt\": \"ok too\"}";
  Scanned s = scan_text(text);
  const std::map<int64_t, std::string> want = {
      {2, "invalid JSON"},  // nlohmann refuses the number while parsing
      {3, "invalid JSON"},
      {4, "invalid JSON"},
      {5, "nested 5001 deep"},
      {6, "field 'n' must be in [1, 100000]"},
      {7, "field 'max_tokens' must be"},
      {8, "field 'seed'"},
      {9, "field 'top_k' must be an integer, got [[[1]]]"}};
  REQUIRE(s.why.size() == want.size());
  for (auto& [line, text] : want) {
    INFO("line " << line << ": " << s.why[line]);
    CHECK(contains(s.why[line], text));
  }
  REQUIRE(s.scan.lines.size() == 3);
  CHECK(s.scan.lines[0].line == 1);
  CHECK(s.scan.lines[1].line == 10);
  CHECK(s.scan.lines[1].n == 100000);
  CHECK(s.scan.lines[2].line == 11);
  CHECK(s.scan.samples == 100002);
}

TEST_CASE("lines over the limit are refused without being held whole", "[batch][hostile]") {
  const std::string big = "{\"id\": \"big\", \"prompt\": \"" + std::string(5000, 'x') + "\"}";
  const std::string text = "{\"id\": 1, \"prompt\": \"a\"}\n" + big + "\n" + big +
                           "\n{\"id\": 2, \"prompt\": \"b\"}\n" + big;
  Scanned s = scan_text(text, 4096);
  REQUIRE(s.why.size() == 3);
  for (int64_t line : {2, 3, 5}) {
    INFO(s.why[line]);
    CHECK(contains(s.why[line], "the line has " + std::to_string(big.size()) +
                                    " bytes, over the limit of 4096"));
    CHECK(s.text_size[line] == 1024);  // the reject shows its first KiB
  }
  REQUIRE(s.scan.lines.size() == 2);
  CHECK(s.scan.lines[1].line == 4);
  CHECK(s.scan.lines[1].offset == 25 + 2 * (big.size() + 1));
  // Within the limit the same line is fine.
  CHECK(scan_text(big, big.size()).scan.lines.size() == 1);
}

TEST_CASE("output records read back: ids, indices and nesting are checked", "[batch][hostile]") {
  JournalRecord r;
  CHECK(parse_journal_record(R"({"id": "q1", "index": 3, "text": "t"})", &r).empty());
  CHECK(r.key == "\"q1\"");
  CHECK(r.index == 3);
  CHECK(parse_journal_record(R"({"id": 7, "index": 0})", &r).empty());
  CHECK(r.key == "7");
  for (const std::string& bad : std::vector<std::string>{
           R"({"id": "q", "index": 100000})", R"({"id": "q", "index": -1})",
           R"({"id": "q", "index": 18446744073709551615})", R"({"id": "q", "index": 1.5})",
           R"({"id": [1], "index": 0})", R"({"id": "q"})", R"([1, 2])",
           R"({"id": "q", "index": 1e999})",
           "{\"id\": \"q\", \"index\": 0, \"x\": " + std::string(1000, '[') + "}", "not json"}) {
    INFO(bad.substr(0, 60));
    CHECK_FALSE(parse_journal_record(bad, &r).empty());
  }
}
