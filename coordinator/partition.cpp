#include "coordinator/partition.h"

#include <algorithm>
#include <limits>
#include <sstream>

#include "common/error.h"
#include "shards/layer_size.h"

namespace rwkvpp {

static uint64_t stage_bytes(const PlanInputs& in, int first, int last, bool embed, bool head) {
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

std::vector<StagePlan> plan_partition(const PlanInputs& in, const std::string& spec) {
  const int L = int(in.cfg.n_layer);
  const int S = int(in.free_memory.size());
  RWKVPP_CHECK(S >= 1 && in.ranks.size() == size_t(S));
  if (S > L) fail("{} stages for a model of {} layers: every stage needs at least one layer (use fewer ranks)", S, L);
  std::vector<StagePlan> plan;
  if (spec.empty() || spec == "auto") {
    // Head cost in layer units: its matrix against one layer's matrices (per token).
    const ModelConfig& c = in.cfg;
    double head_cost = double(c.vocab_size * c.n_embd) / double(layer_weight_bytes(c, DType::F32) / 4);
    // DP over (stages, layers): minimise the largest stage cost among feasible partitions.
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<std::vector<double>> best(size_t(S + 1), std::vector<double>(size_t(L + 1), inf));
    std::vector<std::vector<int>> cut(size_t(S + 1), std::vector<int>(size_t(L + 1), -1));
    best[0][0] = 0;
    for (int s = 1; s <= S; ++s)
      for (int l = s; l <= L - (S - s); ++l)
        for (int k = s - 1; k < l; ++k) {
          if (best[size_t(s - 1)][size_t(k)] == inf) continue;
          bool embed = s == 1, head = s == S;
          if (stage_bytes(in, k, l, embed, head) > in.free_memory[size_t(s - 1)]) continue;
          double cost = double(l - k) + (head ? head_cost : 0.0);
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

std::string describe(const std::vector<StagePlan>& plan) {
  std::string s;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (i) s += " | ";
    s += std::to_string(plan[i].first) + "-" + std::to_string(plan[i].last - 1);
  }
  return s;
}

}  // namespace rwkvpp
