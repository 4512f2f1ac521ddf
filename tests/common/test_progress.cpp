// common/progress.h: log lines on a pipe carry the work done, its total and an ETA; a bar is
// redrawn in place; None prints nothing.
#include <cstdio>
#include <string>

#include "catch.h"
#include "common/progress.h"

using namespace rwkvpp;

namespace {

std::string contents(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

}  // namespace

TEST_CASE("progress: log lines say bytes and items done of their totals, with an ETA",
          "[progress]") {
  FILE* f = std::tmpfile();
  REQUIRE(f);
  WorkProgress p(ProgressMode::Log, "convert", 4000000, 8, "tensors", 0.0, f);
  p.update(1000000, 2);
  p.update(3000000, 6);
  const std::string s = contents(f);
  INFO(s);
  CHECK(s.find("convert: 1.0 MB of 4.0 MB, 2/8 tensors") != std::string::npos);
  CHECK(s.find("convert: 3.0 MB of 4.0 MB, 6/8 tensors") != std::string::npos);
  CHECK(s.find("ETA ") != std::string::npos);
  CHECK(s.find('\r') == std::string::npos);  // no bar on a pipe
  std::fclose(f);
}

TEST_CASE("progress: a bar redraws one line; None prints nothing", "[progress]") {
  FILE* f = std::tmpfile();
  REQUIRE(f);
  {
    ProgressLine bar(ProgressMode::Bar, "load", 5, f);
    bar.draw(0.5, "half");
    bar.clear();
  }
  const std::string s = contents(f);
  CHECK(s.find("\r\033[K[###############...............] half") != std::string::npos);
  CHECK(s.find('\n') == std::string::npos);
  std::fclose(f);

  FILE* g = std::tmpfile();
  REQUIRE(g);
  WorkProgress quiet(ProgressMode::None, "synth", 10, 1, "tensors", 0.0, g);
  quiet.update(10, 1);
  quiet.finish();
  CHECK(contents(g).empty());
  std::fclose(g);
}

TEST_CASE("progress: durations read as hours, minutes and seconds", "[progress]") {
  CHECK(format_duration(12.2) == "12s");
  CHECK(format_duration(185) == "3m05s");
  CHECK(format_duration(3720) == "1h02m");
  CHECK(format_duration(-1) == "?");
}
