#include "coordinator/partition.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <sstream>

#include "common/error.h"
#include "shards/layer_size.h"

namespace rwkvpp {

uint64_t stage_bytes(const PlanInputs& in, int first, int last, bool embed, bool head) {
  const ModelConfig& c = in.cfg;
  uint64_t b = uint64_t(last - first) * (layer_weight_bytes(c, in.dtype) + layer_state_bytes(c) * uint64_t(in.max_slots));
  if (embed) b += uint64_t(c.vocab_size * c.n_embd) * dtype_size(unquantised_dtype(in.dtype));  // never int8
  if (head) b += matrix_bytes(head_dtype(in.dtype), c.vocab_size, c.n_embd);
  return b;
}

static std::string gib(uint64_t b) {
  std::ostringstream s;
  s.precision(3);
  s << double(b) / double(1ull << 30) << " GiB";
  return s.str();
}

// The head's cost in layer units: its matrix against one layer's matrices (per token).
static double head_cost(const ModelConfig& c) {
  return double(c.vocab_size * c.n_embd) / double(layer_weight_bytes(c, DType::F32) / 4);
}

std::string memory_text(uint64_t b) {
  const double v = double(b);
  if (b < (1ull << 10)) return fmt::format("{} bytes", b);
  if (b < (1ull << 20)) return fmt::format("{:.1f} KiB", v / double(1ull << 10));
  if (b < (1ull << 30)) return fmt::format("{:.2f} MiB", v / double(1ull << 20));
  return fmt::format("{:.2f} GiB", v / double(1ull << 30));
}

std::vector<StagePlan> plan_partition(const PlanInputs& in, const std::string& spec) {
  const int L = int(in.cfg.n_layer);
  const int S = int(in.free_memory.size());
  RWKVPP_CHECK(S >= 1 && in.ranks.size() == size_t(S));
  if (S > L) fail("{} stages for a model of {} layers: every stage needs at least one layer (use fewer ranks)", S, L);
  std::vector<StagePlan> plan;
  if (spec.empty() || spec == "auto") {
    const double head = head_cost(in.cfg);
    // DP over (stages, layers): minimise the largest stage cost among feasible partitions.
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<std::vector<double>> best(size_t(S + 1), std::vector<double>(size_t(L + 1), inf));
    std::vector<std::vector<int>> cut(size_t(S + 1), std::vector<int>(size_t(L + 1), -1));
    best[0][0] = 0;
    for (int s = 1; s <= S; ++s)
      for (int l = s; l <= L - (S - s); ++l)
        for (int k = s - 1; k < l; ++k) {
          if (best[size_t(s - 1)][size_t(k)] == inf) continue;
          const bool is_first = s == 1, is_last = s == S;
          if (stage_bytes(in, k, l, is_first, is_last) > in.free_memory[size_t(s - 1)]) continue;
          double cost = double(l - k) + (is_last ? head : 0.0);
          double v = std::max(best[size_t(s - 1)][size_t(k)], cost);
          if (v < best[size_t(s)][size_t(l)]) {
            best[size_t(s)][size_t(l)] = v;
            cut[size_t(s)][size_t(l)] = k;
          }
        }
    if (best[size_t(S)][size_t(L)] == inf) {
      uint64_t total = stage_bytes(in, 0, L, true, true);
      uint64_t avail = 0;
      for (auto m : in.free_memory) avail += m;
      fail("the model needs about {} (weights and state for {} slots) but the {} stage(s) report {} free in all; "
           "no partition fits (use more ranks, fewer --max-batch slots, or a smaller dtype)",
           gib(total), in.max_slots, S, gib(avail));
    }
    plan.resize(size_t(S));
    for (int s = S, l = L; s >= 1; --s) {
      int k = cut[size_t(s)][size_t(l)];
      plan[size_t(s - 1)].first = k;
      plan[size_t(s - 1)].last = l;
      l = k;
    }
  } else {
    std::stringstream ss(spec);
    std::string part;
    int expect = 0;
    while (std::getline(ss, part, ',')) {
      int a = -1, b = -1;
      char dash = 0;
      std::stringstream ps(part);
      if (!(ps >> a) || !(ps >> dash) || dash != '-' || !(ps >> b) || !ps.eof() || a < 0 || b < a)
        fail("--layers: cannot read range '{}' (expected FIRST-LAST, e.g. 0-2,3-5)", part);
      if (b >= L) fail("--layers: range {}-{} is out of range (the model has layers 0-{})", a, b, L - 1);
      if (a < expect) fail("--layers: range {}-{} overlaps the previous range (which ended at layer {})", a, b, expect - 1);
      if (a > expect) fail("--layers: layers {}-{} are in no range (gap before {}-{})", expect, a - 1, a, b);
      plan.push_back({a, b + 1, false, false, 0});
      expect = b + 1;
    }
    if (plan.empty()) fail("--layers: empty specification");
    if (expect != L) fail("--layers: layers {}-{} are in no range (the model has {} layers)", expect, L - 1, L);
    if (int(plan.size()) != S)
      fail("--layers gives {} ranges but there are {} stages (ranks holding layers)", plan.size(), S);
  }
  for (int s = 0; s < S; ++s) {
    auto& p = plan[size_t(s)];
    p.embed = s == 0;
    p.head = s == S - 1;
    p.bytes = stage_bytes(in, p.first, p.last, p.embed, p.head);
    if (p.bytes > in.free_memory[size_t(s)])
      fail("stage {} (rank {}, layers {}-{}) needs about {} but rank {} reports {} free", s, in.ranks[size_t(s)],
           p.first, p.last - 1, gib(p.bytes), in.ranks[size_t(s)], gib(in.free_memory[size_t(s)]));
  }
  return plan;
}

Repartition plan_repartition(const PlanInputs& in, const std::vector<StagePlan>& plan, int lost) {
  const int S = int(plan.size());
  RWKVPP_CHECK(lost >= 0 && lost < S && in.free_memory.size() == size_t(S) && in.ranks.size() == size_t(S));
  const StagePlan& gone = plan[size_t(lost)];
  const bool has_prev = lost > 0, has_next = lost + 1 < S;
  Repartition out;
  const std::string what = fmt::format("layers {}-{} of lost rank {} (stage {})", gone.first, gone.last - 1,
                                       in.ranks[size_t(lost)], lost);
  if (!has_prev && !has_next) {
    out.why = fmt::format("no other stage is left to take {}", what);
    return out;
  }
  const double head = head_cost(in.cfg);
  // The neighbours as they would be for a cut m (the previous one holding up to m, the next
  // from m), what each would need beyond what its rank offered, and its cost.
  struct Side {
    StagePlan p;
    uint64_t excess = 0;
    double cost = 0;
    bool extended = false;
  };
  auto side = [&](int s, int first, int last, bool embed, bool hd) {
    Side d;
    d.p = {first, last, embed, hd, stage_bytes(in, first, last, embed, hd)};
    d.extended = first != plan[size_t(s)].first || last != plan[size_t(s)].last;
    const uint64_t offered = in.free_memory[size_t(s)];
    d.excess = d.extended && d.p.bytes > offered ? d.p.bytes - offered : 0;
    d.cost = double(last - first) + (hd ? head : 0.0);
    return d;
  };
  const int m_lo = has_next ? gone.first : gone.last, m_hi = has_prev ? gone.last : gone.first;
  uint64_t least_short = UINT64_MAX;
  double best_cost = 0;
  int best_extended = 0;
  for (int m = m_hi; m >= m_lo; --m) {  // the previous stage's largest share first
    std::vector<Side> sides;
    if (has_prev) {
      const StagePlan& p = plan[size_t(lost - 1)];
      sides.push_back(side(lost - 1, p.first, m, p.embed, p.head || gone.head));
    }
    if (has_next) {
      const StagePlan& n = plan[size_t(lost + 1)];
      sides.push_back(side(lost + 1, m, n.last, n.embed || gone.embed, n.head));
    }
    uint64_t excess = 0;
    double cost = 0;
    int extended = 0;
    for (const Side& d : sides) {
      excess += d.excess;
      cost = std::max(cost, d.cost);
      extended += d.extended ? 1 : 0;
    }
    least_short = std::min(least_short, excess);
    if (excess > 0) continue;
    if (out.cut >= 0 && (cost > best_cost || (cost == best_cost && extended >= best_extended))) continue;
    out.cut = m;
    best_cost = cost;
    best_extended = extended;
    out.plan = plan;
    size_t k = 0;
    if (has_prev) out.plan[size_t(lost - 1)] = sides[k++].p;
    if (has_next) out.plan[size_t(lost + 1)] = sides[k].p;
  }
  if (out.cut >= 0) {
    out.plan.erase(out.plan.begin() + lost);
    return out;
  }
  std::string free;
  for (int s : {lost - 1, lost + 1}) {
    if (s < 0 || s >= S) continue;
    const StagePlan& p = plan[size_t(s)];
    const uint64_t held = stage_bytes(in, p.first, p.last, p.embed, p.head), offered = in.free_memory[size_t(s)];
    free += fmt::format("{}rank {} (stage {}, layers {}-{}) has {} free of the {} it offered", free.empty() ? "" : "; ",
                        in.ranks[size_t(s)], s, p.first, p.last - 1, memory_text(offered > held ? offered - held : 0),
                        memory_text(offered));
  }
  out.why = fmt::format("{} need about {} (weights and the state of {} slots) on its neighbours, which cannot "
                        "hold them: {}; at least {} short",
                        what, memory_text(stage_bytes(in, gone.first, gone.last, gone.embed, gone.head)),
                        in.max_slots, free, memory_text(least_short));
  return out;
}

std::string describe(const std::vector<StagePlan>& plan) {
  std::string s;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (i) s += " | ";
    s += std::to_string(plan[i].first) + "-" + std::to_string(plan[i].last - 1);
  }
  return s;
}

}  // namespace rwkvpp
