// The RWKVPP_* tuning switches (common/env_options.h): the defaults, every variable's values as
// its former reader took them, the warnings for tolerated malformed text, the errors for refused
// values, that every variable is in docs/environment.md, and the once-parsed process options
// with their override and reload hooks.
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "catch.h"
#include "common/env_options.h"
#include "helpers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

using Env = std::map<std::string, std::string>;

// Parses `env` alone (nothing of the process's environment), collecting the warnings.
EnvOptions parse(const Env& env, std::vector<std::string>* warnings = nullptr) {
  std::vector<std::string> w;
  EnvOptions o = parse_env_options(
      [&](const char* n) {
        auto it = env.find(n);
        return it == env.end() ? nullptr : it->second.c_str();
      },
      warnings ? warnings : &w);
  return o;
}

// The one warning that parsing `name=value` gives ("" for none).
std::string warning_of(const std::string& name, const std::string& value) {
  std::vector<std::string> w;
  parse({{name, value}}, &w);
  REQUIRE(w.size() <= 1);
  return w.empty() ? "" : w[0];
}

// Every variable the parser asks for.
std::vector<std::string> variable_names() {
  std::vector<std::string> names;
  parse_env_options(
      [&](const char* n) -> const char* {
        names.push_back(n);
        return nullptr;
      },
      nullptr);
  return names;
}

}  // namespace

TEST_CASE("env options: unset or empty variables give the defaults", "[common]") {
  Env all_empty;
  for (const std::string& n : variable_names()) all_empty[n] = "";
  REQUIRE(all_empty.size() == 21);
  for (const Env& env : {Env{}, all_empty}) {
    std::vector<std::string> w;
    const EnvOptions o = parse(env, &w);
    CHECK(w.empty());
    CHECK(o.cpu.isa.empty());
    CHECK(o.cpu.spin_us == 200);
    CHECK_FALSE(o.cuda.invariant);
    CHECK(o.cuda.v7_fused);
    CHECK(o.cuda.seg_cache);
    CHECK(o.cuda.inline_ids);
    CHECK(o.cuda.pdl);
    CHECK(o.cuda.imma_tile == 64);
    CHECK(o.cuda.gemv_wpr == 0);
    CHECK(o.cuda.gemv_pipe == -1);
    CHECK_FALSE(o.cuda.share_events);
    CHECK(o.cuda.share_kernel);
    CHECK(o.stage.share);
    CHECK_FALSE(o.stage.share_graph);
    CHECK(o.stage.side_copies == SideCopies::Large);
    CHECK_FALSE(o.stage.device_times);
    CHECK(o.stage.trace_device_every == 4);
    CHECK(o.stage.sample_threads == 0);
    CHECK(o.stage.spin_us == 50000);
    CHECK(o.net.peer_timeout_s == 20);
    CHECK(o.net.ucx_peer_errors);
  }
}

TEST_CASE("env options: each variable means what its former reader made of it", "[common]") {
  CHECK(parse({{"RWKVPP_CPU_ISA", "avx2"}}).cpu.isa == "avx2");
  CHECK(parse({{"RWKVPP_CPU_SPIN_US", "0"}}).cpu.spin_us == 0);
  CHECK(parse({{"RWKVPP_INVARIANT", "1"}}).cuda.invariant);
  CHECK_FALSE(parse({{"RWKVPP_V7_FUSED", "0"}}).cuda.v7_fused);
  CHECK_FALSE(parse({{"RWKVPP_SEG_CACHE", "0"}}).cuda.seg_cache);
  CHECK_FALSE(parse({{"RWKVPP_INLINE_IDS", "0"}}).cuda.inline_ids);
  CHECK_FALSE(parse({{"RWKVPP_PDL", "0"}}).cuda.pdl);
  CHECK(parse({{"RWKVPP_PDL", "1"}}).cuda.pdl);
  CHECK(parse({{"RWKVPP_IMMA_TILE", "128"}}).cuda.imma_tile == 128);
  for (int w : {1, 2, 4, 8})
    CHECK(parse({{"RWKVPP_GEMV_WPR", std::to_string(w)}}).cuda.gemv_wpr == w);
  CHECK(parse({{"RWKVPP_GEMV_PIPE", "0"}}).cuda.gemv_pipe == 0);
  CHECK(parse({{"RWKVPP_GEMV_PIPE", "1"}}).cuda.gemv_pipe == 1);
  CHECK(parse({{"RWKVPP_SHARE_SIGNAL", "event"}}).cuda.share_events);
  CHECK_FALSE(parse({{"RWKVPP_SHARE_KERNEL", "0"}}).cuda.share_kernel);
  CHECK_FALSE(parse({{"RWKVPP_SHARE", "0"}}).stage.share);
  CHECK(parse({{"RWKVPP_SHARE_GRAPH", "1"}}).stage.share_graph);
  CHECK(parse({{"RWKVPP_SIDE_COPIES", "0"}}).stage.side_copies == SideCopies::Off);
  CHECK(parse({{"RWKVPP_SIDE_COPIES", "1"}}).stage.side_copies == SideCopies::Large);
  CHECK(parse({{"RWKVPP_SIDE_COPIES", "all"}}).stage.side_copies == SideCopies::All);
  CHECK(parse({{"RWKVPP_DEVICE_TIMES", "1"}}).stage.device_times);
  CHECK(parse({{"RWKVPP_TRACE_DEVICE_EVERY", "1"}}).stage.trace_device_every == 1);
  CHECK(parse({{"RWKVPP_SAMPLE_THREADS", "3"}}).stage.sample_threads == 3);
  CHECK(parse({{"RWKVPP_SPIN_US", "0"}}).stage.spin_us == 0);
  CHECK(parse({{"RWKVPP_PEER_TIMEOUT_S", "2.5"}}).net.peer_timeout_s == 2.5);
  CHECK(parse({{"RWKVPP_PEER_TIMEOUT_S", "0"}}).net.peer_timeout_s == 0);
  CHECK_FALSE(parse({{"RWKVPP_UCX_ERRORS", "none"}}).net.ucx_peer_errors);
  CHECK(parse({{"RWKVPP_UCX_ERRORS", "peer"}}).net.ucx_peer_errors);
}

TEST_CASE("env options: tolerated malformed values keep their old reading and warn", "[common]") {
  // A switch set to neither 0 nor 1: "on unless 0" stays on, "off unless 1" stays off.
  CHECK(parse({{"RWKVPP_V7_FUSED", "off"}}).cuda.v7_fused);
  CHECK(contains(warning_of("RWKVPP_V7_FUSED", "off"), "RWKVPP_V7_FUSED='off'"));
  CHECK_FALSE(parse({{"RWKVPP_INVARIANT", "yes"}}).cuda.invariant);
  CHECK(contains(warning_of("RWKVPP_INVARIANT", "yes"), "read as off"));
  CHECK(warning_of("RWKVPP_INVARIANT", "0").empty());
  // Counts read as atol() read them.
  CHECK(parse({{"RWKVPP_SPIN_US", "100us"}}).stage.spin_us == 100);
  CHECK(
      contains(warning_of("RWKVPP_SPIN_US", "100us"), "RWKVPP_SPIN_US='100us' is not an integer"));
  CHECK(parse({{"RWKVPP_CPU_SPIN_US", "abc"}}).cpu.spin_us == 0);
  CHECK(parse({{"RWKVPP_TRACE_DEVICE_EVERY", "8x"}}).stage.trace_device_every == 8);
  CHECK(parse({{"RWKVPP_GEMV_PIPE", "abc"}}).cuda.gemv_pipe == 0);  // atoi: 0, plain
  // Values the reader ignored.
  CHECK(parse({{"RWKVPP_GEMV_WPR", "3"}}).cuda.gemv_wpr == 0);
  CHECK(contains(warning_of("RWKVPP_GEMV_WPR", "3"), "RWKVPP_GEMV_WPR=3"));
  CHECK(warning_of("RWKVPP_GEMV_WPR", "0").empty());
  CHECK(parse({{"RWKVPP_GEMV_PIPE", "2"}}).cuda.gemv_pipe == -1);
  CHECK(parse({{"RWKVPP_IMMA_TILE", "256"}}).cuda.imma_tile == 64);
  CHECK(contains(warning_of("RWKVPP_IMMA_TILE", "256"), "RWKVPP_IMMA_TILE"));
  CHECK(warning_of("RWKVPP_IMMA_TILE", "64").empty());
  CHECK_FALSE(parse({{"RWKVPP_SHARE_SIGNAL", "events"}}).cuda.share_events);
  CHECK(contains(warning_of("RWKVPP_SHARE_SIGNAL", "events"), "RWKVPP_SHARE_SIGNAL"));
  CHECK(parse({{"RWKVPP_SIDE_COPIES", "some"}}).stage.side_copies == SideCopies::Large);
  CHECK(contains(warning_of("RWKVPP_SIDE_COPIES", "some"), "RWKVPP_SIDE_COPIES"));
}

TEST_CASE("env options: refused values are errors naming every such variable", "[common]") {
  for (const char* bad : {"abc", "5s", "-1", "1e8"})
    CHECK(contains(error_of([&] {
                     parse({{"RWKVPP_PEER_TIMEOUT_S", bad}});
                   }),
                   "RWKVPP_PEER_TIMEOUT_S"));
  CHECK(contains(error_of([] {
                   parse({{"RWKVPP_UCX_ERRORS", "all"}});
                 }),
                 "RWKVPP_UCX_ERRORS='all'"));
  for (const char* bad : {"0", "abc", "1000001"})
    CHECK(contains(error_of([&] {
                     parse({{"RWKVPP_TRACE_DEVICE_EVERY", bad}});
                   }),
                   "RWKVPP_TRACE_DEVICE_EVERY"));
  for (const char* bad : {"0", "-3", "1025"})
    CHECK(contains(error_of([&] {
                     parse({{"RWKVPP_SAMPLE_THREADS", bad}});
                   }),
                   "RWKVPP_SAMPLE_THREADS"));
  const std::string both = error_of([] {
    parse({{"RWKVPP_UCX_ERRORS", "x"}, {"RWKVPP_SAMPLE_THREADS", "0"}});
  });
  CHECK(contains(both, "RWKVPP_UCX_ERRORS"));
  CHECK(contains(both, "RWKVPP_SAMPLE_THREADS"));
}

TEST_CASE("env options: every variable is documented in docs/environment.md", "[common]") {
  const std::string doc = read_file(std::string(RWKVPP_SOURCE_DIR) + "/docs/environment.md");
  for (const std::string& n : variable_names()) CHECK(contains(doc, "`" + n + "`"));
}

TEST_CASE("env options: parsed once; override and reload for what rewrote the environment",
          "[common]") {
  const char* old = std::getenv("RWKVPP_SPIN_US");
  const std::string saved = old ? old : "";
  setenv("RWKVPP_SPIN_US", "123", 1);
  reload_env_options();
  const EnvOptions& first = env_options();
  CHECK(first.stage.spin_us == 123);
  setenv("RWKVPP_SPIN_US", "456", 1);
  CHECK(env_options().stage.spin_us == 123);  // not read again
  override_env_options([](EnvOptions& o) { o.net.peer_timeout_s *= 1.5; });
  CHECK(env_options().net.peer_timeout_s == first.net.peer_timeout_s * 1.5);
  CHECK(env_options().stage.spin_us == 123);
  CHECK(first.stage.spin_us == 123);  // a reference taken before stays valid
  reload_env_options();
  CHECK(env_options().stage.spin_us == 456);
  if (old)
    setenv("RWKVPP_SPIN_US", saved.c_str(), 1);
  else
    unsetenv("RWKVPP_SPIN_US");
  reload_env_options();
}
