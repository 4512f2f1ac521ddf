// The RWKVPP_* tuning switches, parsed once (common/env_options.h; docs/environment.md).
//
// Every rule below reproduces what the variable's former reader did with the same text, so
// that no value changes meaning; what is new is the warning for text those readers silently
// bent (a switch that is neither 0 nor 1, a count with trailing characters).
#include "common/env_options.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>

#include "common/error.h"

namespace rwkvpp {

namespace {

// One variable at a time: its text, and where its complaints go.
class Reader {
 public:
  Reader(const std::function<const char*(const char*)>& lookup, std::vector<std::string>* warnings)
      : lookup_(lookup), warnings_(warnings) {}

  // The text of `name`; empty when unset (every former reader treated "" as unset).
  std::string text(const char* name) const {
    const char* v = lookup_(name);
    return v ? v : "";
  }

  // On unless "0" (the CUDA backend's former switch_on(), RWKVPP_SHARE's test).
  bool on_unless_0(const char* name) {
    const std::string v = text(name);
    if (!v.empty() && v != "0" && v != "1")
      warn("{}='{}': 0 turns it off, anything else leaves it on (read as on)", name, v);
    return v != "0";
  }

  // Off unless "1" (RWKVPP_INVARIANT, RWKVPP_DEVICE_TIMES, RWKVPP_SHARE_GRAPH).
  bool off_unless_1(const char* name) {
    const std::string v = text(name);
    if (!v.empty() && v != "0" && v != "1")
      warn("{}='{}': 1 turns it on, anything else leaves it off (read as off)", name, v);
    return v == "1";
  }

  // An integer read as atol() read it (leading digits; 0 for none), `dflt` when unset; a text
  // that is not exactly an integer is warned about. With `what`, a value outside [lo, hi] is an
  // error (its reader refused it) and `dflt` is kept.
  int64_t integer(const char* name, int64_t dflt, const char* what = nullptr, int64_t lo = 0,
                  int64_t hi = 0) {
    const std::string v = text(name);
    if (v.empty()) return dflt;
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (what && (x < lo || x > hi)) {
      error("{}='{}': {}", name, v, what);
      return dflt;
    }
    if (end == v.c_str() || *end != '\0' || errno != 0)
      warn("{}='{}' is not an integer (read as {}, as before)", name, v, x);
    return x;
  }

  template <typename... Args>
  void warn(fmt::format_string<Args...> f, Args&&... args) {
    if (warnings_) warnings_->push_back(fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void error(fmt::format_string<Args...> f, Args&&... args) {
    errors_.push_back(fmt::format(f, std::forward<Args>(args)...));
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  const std::function<const char*(const char*)>& lookup_;
  std::vector<std::string>* warnings_;
  std::vector<std::string> errors_;
};

void read_cpu(Reader& r, EnvOptions::Cpu& o) {
  o.isa = r.text("RWKVPP_CPU_ISA");
  o.spin_us = r.integer("RWKVPP_CPU_SPIN_US", o.spin_us);
}

void read_cuda(Reader& r, EnvOptions::Cuda& o) {
  o.invariant = r.off_unless_1("RWKVPP_INVARIANT");
  o.v7_fused = r.on_unless_0("RWKVPP_V7_FUSED");
  o.seg_cache = r.on_unless_0("RWKVPP_SEG_CACHE");
  o.inline_ids = r.on_unless_0("RWKVPP_INLINE_IDS");
  o.pdl = r.on_unless_0("RWKVPP_PDL");
  o.share_kernel = r.on_unless_0("RWKVPP_SHARE_KERNEL");
  if (const std::string v = r.text("RWKVPP_IMMA_TILE"); v == "128")
    o.imma_tile = 128;
  else if (!v.empty() && v != "64")
    r.warn("RWKVPP_IMMA_TILE='{}': 128 or 64 (read as 64)", v);
  const int64_t wpr = r.integer("RWKVPP_GEMV_WPR", 0);
  o.gemv_wpr = (wpr == 1 || wpr == 2 || wpr == 4 || wpr == 8) ? int(wpr) : 0;
  if (wpr != o.gemv_wpr) r.warn("RWKVPP_GEMV_WPR={}: 1, 2, 4 or 8 (ignored: chosen by shape)", wpr);
  const int64_t pipe = r.integer("RWKVPP_GEMV_PIPE", -1);
  o.gemv_pipe = (pipe == 0 || pipe == 1) ? int(pipe) : -1;
  if (pipe != o.gemv_pipe) r.warn("RWKVPP_GEMV_PIPE={}: 0 or 1 (ignored: chosen by dtype)", pipe);
  const std::string sig = r.text("RWKVPP_SHARE_SIGNAL");
  o.share_events = sig == "event";
  if (!sig.empty() && !o.share_events)
    r.warn("RWKVPP_SHARE_SIGNAL='{}': only 'event' changes the signals (read as counters)", sig);
}

void read_stage(Reader& r, EnvOptions::Stage& o) {
  o.share = r.on_unless_0("RWKVPP_SHARE");
  o.share_graph = r.off_unless_1("RWKVPP_SHARE_GRAPH");
  o.device_times = r.off_unless_1("RWKVPP_DEVICE_TIMES");
  const std::string side = r.text("RWKVPP_SIDE_COPIES");
  o.side_copies = side == "0"     ? SideCopies::Off
                  : side == "all" ? SideCopies::All
                                  : SideCopies::Large;
  if (!side.empty() && side != "0" && side != "1" && side != "all")
    r.warn("RWKVPP_SIDE_COPIES='{}': 0, 1 or all (read as 1: copies of 256 KiB or more)", side);
  o.trace_device_every =
      uint64_t(r.integer("RWKVPP_TRACE_DEVICE_EVERY", int64_t(o.trace_device_every),
                         "mark every N-th step on the device, N >= 1", 1, 1000000));
  o.sample_threads = int(r.integer("RWKVPP_SAMPLE_THREADS", o.sample_threads,
                                   "give a thread count from 1 to 1024", 1, 1024));
  o.spin_us = r.integer("RWKVPP_SPIN_US", o.spin_us);
}

void read_net(Reader& r, EnvOptions::Net& o) {
  if (const std::string v = r.text("RWKVPP_PEER_TIMEOUT_S"); !v.empty()) {
    char* end = nullptr;
    const double s = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !std::isfinite(s) || s < 0 || s > 1e7)
      r.error(
          "RWKVPP_PEER_TIMEOUT_S='{}' is not a number of seconds (0 disables the liveness check)",
          v);
    else
      o.peer_timeout_s = s;
  }
  const std::string ucx = r.text("RWKVPP_UCX_ERRORS");
  if (ucx == "none")
    o.ucx_peer_errors = false;
  else if (!ucx.empty() && ucx != "peer")
    r.error("RWKVPP_UCX_ERRORS='{}': 'peer' (default: UCX reports a lost peer) or 'none'", ucx);
}

// The options handed out: the current one (null: parse at the next call) and every earlier one,
// kept so that references taken before a reload or an override stay valid.
struct Current {
  std::mutex mu;
  std::atomic<const EnvOptions*> now{nullptr};
  std::vector<std::unique_ptr<const EnvOptions>> kept;  // guarded by mu

  const EnvOptions& publish(EnvOptions o) {
    kept.push_back(std::make_unique<const EnvOptions>(std::move(o)));
    now.store(kept.back().get(), std::memory_order_release);
    return *kept.back();
  }
};

// Never destroyed: a reader running during exit (a detached thread, a static's destructor)
// must not find the options freed.
Current& current() {
  static Current* c = new Current;
  return *c;
}

// Parses the environment (under c.mu), prints the warnings, publishes the result.
const EnvOptions& load(Current& c) {
  std::vector<std::string> warnings;
  EnvOptions o = parse_env_options([](const char* n) { return std::getenv(n); }, &warnings);
  for (const std::string& w : warnings) fmt::print(stderr, "rwkvpp: warning: {}\n", w);
  return c.publish(std::move(o));
}

}  // namespace

EnvOptions parse_env_options(const std::function<const char*(const char*)>& lookup,
                             std::vector<std::string>* warnings) {
  Reader r(lookup, warnings);
  EnvOptions o;
  read_cpu(r, o.cpu);
  read_cuda(r, o.cuda);
  read_stage(r, o.stage);
  read_net(r, o.net);
  if (!r.errors().empty()) fail("{}", fmt::join(r.errors(), "; "));
  return o;
}

const EnvOptions& env_options() {
  Current& c = current();
  if (const EnvOptions* o = c.now.load(std::memory_order_acquire)) return *o;
  std::lock_guard<std::mutex> lock(c.mu);
  if (const EnvOptions* o = c.now.load(std::memory_order_acquire)) return *o;
  return load(c);
}

void override_env_options(const std::function<void(EnvOptions&)>& change) {
  Current& c = current();
  std::lock_guard<std::mutex> lock(c.mu);
  const EnvOptions* now = c.now.load(std::memory_order_acquire);
  EnvOptions o = now ? *now : load(c);
  change(o);
  c.publish(std::move(o));
}

void reload_env_options() {
  Current& c = current();
  std::lock_guard<std::mutex> lock(c.mu);
  c.now.store(nullptr, std::memory_order_release);
}

}  // namespace rwkvpp
