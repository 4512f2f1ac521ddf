// The re-partition over the survivors (coordinator/partition.h, plan_repartition): a lost
// stage's layers go to its neighbours, extending their ranges, within the memory their ranks
// offered; the cut balances the planner's cost; when nothing fits, the reason names the lost
// rank and the memory missing. On the tiny RWKV-4 shape (6 layers), whose head costs about a
// third of a layer.
#include <limits>
#include <string>
#include <vector>

#include "catch.h"
#include "coordinator/partition.h"
#include "shards/synthetic.h"

using namespace rwkvpp;

namespace {

constexpr uint64_t kPlenty = std::numeric_limits<uint64_t>::max() / 4;

PlanInputs inputs(const std::vector<uint64_t>& free_memory) {
  PlanInputs in;
  in.cfg = synthetic_config("tiny", DType::F32);
  in.dtype = DType::F32;
  in.max_slots = 16;
  in.free_memory = free_memory;
  for (size_t s = 0; s < free_memory.size(); ++s) in.ranks.push_back(int(s) + 1);
  return in;
}

// A plan of these [first, last) ranges, the embedding on the first and the head on the last.
std::vector<StagePlan> plan_of(const PlanInputs& in, const std::vector<std::pair<int, int>>& ranges) {
  std::vector<StagePlan> p;
  for (size_t s = 0; s < ranges.size(); ++s) {
    const bool embed = s == 0, head = s + 1 == ranges.size();
    p.push_back({ranges[s].first, ranges[s].second, embed, head,
                 stage_bytes(in, ranges[s].first, ranges[s].second, embed, head)});
  }
  return p;
}

std::vector<std::pair<int, int>> ranges(const std::vector<StagePlan>& p) {
  std::vector<std::pair<int, int>> r;
  for (const StagePlan& s : p) r.push_back({s.first, s.last});
  return r;
}

using Ranges = std::vector<std::pair<int, int>>;

}  // namespace

TEST_CASE("re-partition: a middle stage's layers are cut between its neighbours to balance them", "[partition]") {
  const PlanInputs in = inputs({kPlenty, kPlenty, kPlenty, kPlenty});
  const auto plan = plan_of(in, {{0, 1}, {1, 3}, {3, 5}, {5, 6}});
  // Cuts 5 (4 layers and 1 + head), 4 (3 and 2 + head) and 3 (2 and 3 + head): 4 is the most even.
  const Repartition r = plan_repartition(in, plan, 2);
  REQUIRE(r.why.empty());
  CHECK(r.cut == 4);
  CHECK(ranges(r.plan) == Ranges{{0, 1}, {1, 4}, {4, 6}});
  CHECK(r.plan.front().embed);
  CHECK(r.plan.back().head);
  CHECK(!r.plan[1].head);
  CHECK(r.plan[1].bytes == stage_bytes(in, 1, 4, false, false));
}

TEST_CASE("re-partition: the last stage's layers and the head go to the stage before it", "[partition]") {
  const PlanInputs in = inputs({kPlenty, kPlenty, kPlenty});
  const Repartition r = plan_repartition(in, plan_of(in, {{0, 2}, {2, 4}, {4, 6}}), 2);
  REQUIRE(r.why.empty());
  CHECK(ranges(r.plan) == Ranges{{0, 2}, {2, 6}});
  CHECK(r.plan[1].head);
  CHECK(!r.plan[1].embed);
}

TEST_CASE("re-partition: the first stage's layers and the embedding go to the stage after it", "[partition]") {
  const PlanInputs in = inputs({kPlenty, kPlenty, kPlenty});
  const Repartition r = plan_repartition(in, plan_of(in, {{0, 2}, {2, 4}, {4, 6}}), 0);
  REQUIRE(r.why.empty());
  CHECK(ranges(r.plan) == Ranges{{0, 4}, {4, 6}});
  CHECK(r.plan[0].embed);
  CHECK(r.plan[1].head);
}

TEST_CASE("re-partition: one neighbour takes a one-layer stage; on a tie the previous one", "[partition]") {
  const PlanInputs in = inputs({kPlenty, kPlenty, kPlenty, kPlenty, kPlenty});
  const auto plan = plan_of(in, {{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 6}});
  const Repartition r = plan_repartition(in, plan, 2);  // stages 1 and 3 hold one layer each
  REQUIRE(r.why.empty());
  CHECK(ranges(r.plan) == Ranges{{0, 1}, {1, 3}, {3, 4}, {4, 6}});
}

TEST_CASE("re-partition: only within the memory the neighbours offered", "[partition]") {
  // The previous stage has no room beyond its own layers: the next one takes them all, though
  // the cut would otherwise be even.
  PlanInputs in = inputs({kPlenty, 0, kPlenty, kPlenty});
  const auto plan = plan_of(in, {{0, 1}, {1, 3}, {3, 5}, {5, 6}});
  in.free_memory[1] = plan[1].bytes;
  Repartition r = plan_repartition(in, plan, 2);
  REQUIRE(r.why.empty());
  CHECK(ranges(r.plan) == Ranges{{0, 1}, {1, 3}, {3, 6}});

  // Room for one more layer each: the only cut that fits is 4.
  in.free_memory[1] = stage_bytes(in, 1, 4, false, false);
  in.free_memory[3] = stage_bytes(in, 4, 6, false, true);
  r = plan_repartition(in, plan, 2);
  REQUIRE(r.why.empty());
  CHECK(ranges(r.plan) == Ranges{{0, 1}, {1, 4}, {4, 6}});
}

TEST_CASE("re-partition: when no cut fits, the reason names the lost rank, the neighbours' memory and the "
          "shortfall",
          "[partition]") {
  PlanInputs in = inputs({kPlenty, 0, kPlenty, 0});
  const auto plan = plan_of(in, {{0, 1}, {1, 3}, {3, 5}, {5, 6}});
  const uint64_t layer = stage_bytes(in, 3, 4, false, false);
  in.free_memory[1] = plan[1].bytes + layer / 2;  // half a layer free each
  in.free_memory[3] = plan[3].bytes + layer / 2;
  const Repartition r = plan_repartition(in, plan, 2);
  CHECK(r.plan.empty());
  CHECK(r.cut == -1);
  INFO(r.why);
  CHECK(r.why.find("layers 3-4 of lost rank 3 (stage 2)") != std::string::npos);
  CHECK(r.why.find("rank 2 (stage 1, layers 1-2) has " + memory_text(layer / 2) + " free") != std::string::npos);
  CHECK(r.why.find("rank 4 (stage 3, layers 5-5) has " + memory_text(layer / 2) + " free") != std::string::npos);
  // The best cut (one layer each) misses half a layer on each side.
  CHECK(r.why.find("at least " + memory_text(2 * (layer - layer / 2)) + " short") != std::string::npos);

  const PlanInputs one = inputs({kPlenty});
  const Repartition none = plan_repartition(one, plan_of(one, {{0, 6}}), 0);
  CHECK(none.plan.empty());
  CHECK(none.why == "no other stage is left to take layers 0-5 of lost rank 1 (stage 0)");
}

TEST_CASE("memory_text: bytes in the unit that reads", "[partition]") {
  CHECK(memory_text(512) == "512 bytes");
  CHECK(memory_text(1536) == "1.5 KiB");
  CHECK(memory_text(3u << 20) == "3.00 MiB");
  CHECK(memory_text(uint64_t(3) << 29) == "1.50 GiB");
}
