// End-to-end pipelines over the UCX transport ([ucx][pipeline]): 2 and 3 ranks started as plain
// processes (tests/launch_ranks.h, no mpirun) run `rwkvpp logits` and `rwkvpp generate` on the
// small RWKV-4 fixture; the output must equal the single-process run's byte for byte (the CPU
// backend is batch- and partition-invariant). With RWKVPP_SHARE=0 the hidden vectors cross the
// transport itself instead of the shared slots of stages on one host.
#include <regex>
#include <string>
#include <vector>

#include "catch.h"
#include "helpers.h"
#include "launch_ranks.h"
#include "net/transports.h"
#include "small_model.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

const std::string& model() { return small_sharded_model(); }

// Three prompts of different lengths in one batch.
std::vector<std::string> logits_args(const std::string& out) {
  return {rwkvpp_binary(), "logits", "-m", model(), "--tokens", "5,17,200,3,9,22,81,1,2,3,4,5,6,7,8,9,10,11,12",
          "--tokens", "30,31,32,33,34", "--tokens", "7", "--chunk", "4", "--threads", "1", "--stats", "-o", out};
}

std::vector<std::string> generate_args() { return small_generate_args(); }
std::string shell(const std::vector<std::string>& a) { return shell_line(a); }

}  // namespace

TEST_CASE("pipelines of 2 and 3 UCX ranks reproduce the single-process run exactly", "[ucx][pipeline]") {
  if (!have_ucx_transport()) {
    WARN("SKIPPED: this build has no UCX transport");
    return;
  }
  TempDir d;
  auto single = run(shell(logits_args(d / "single.npy")), 120);
  INFO(single.err);
  REQUIRE(single.exit_code == 0);
  const std::string want_logits = read_file(d / "single.npy");
  auto single_gen = run(shell(generate_args()), 120);
  REQUIRE(single_gen.exit_code == 0);
  REQUIRE(single_gen.out.size() > 10);

  for (const char* share : {"RWKVPP_SHARE=1", "RWKVPP_SHARE=0"}) {
    for (int n : {2, 3}) {
      INFO(n << " UCX ranks, " << share);
      std::string out = d / ("ucx" + std::to_string(n) + ".npy");
      RankRun r = run_ranks(n, logits_args(out), {{share}, 180, 30});
      INFO(r.all());
      for (int i = 0; i < n; ++i) REQUIRE(r.exit_codes[size_t(i)] == 0);
      CHECK(read_file(out) == want_logits);
      // Stage 1 got its input from stage 0: through the transport, or through shared slots.
      std::smatch m;
      REQUIRE(std::regex_search(r.err[0], m, std::regex(R"(\[stats\] stage 1 rank 1 .*received (\d+) B \(and (\d+) B through shared slots\))")));
      if (std::string(share) == "RWKVPP_SHARE=0") CHECK((std::stoull(m[1]) > 4000 && std::stoull(m[2]) == 0));

      RankRun g = run_ranks(n, generate_args(), {{share}, 180, 30});
      INFO(g.all());
      for (int i = 0; i < n; ++i) REQUIRE(g.exit_codes[size_t(i)] == 0);
      CHECK(g.out[0] == single_gen.out);
    }
  }
}
