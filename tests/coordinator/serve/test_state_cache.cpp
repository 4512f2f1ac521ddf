// The state cache's trie (coordinator/serve/state_cache.h): insert, longest-prefix lookup, the
// branch point, byte accounting, eviction by bytes (least recently used first, never pinned),
// overwrite; and 20,000 random operations against a naive model written from the contract
// (a list of keys, each looked up by scanning; bytes from the definition).
#include <algorithm>
#include <list>
#include <map>
#include <random>
#include <set>

#include "catch.h"
#include "coordinator/serve/state_cache.h"

using namespace rwkvpp;

namespace {

using Tokens = std::vector<int32_t>;
constexpr uint64_t kE = 1000;  // bytes of one state in these tests
constexpr uint64_t kT = StateCache::kTokenBytes, kN = StateCache::kNodeBytes;

StateCache::Match look(StateCache& c, const Tokens& t, size_t max_len = ~size_t(0)) {
  return c.lookup(t, max_len);
}

std::vector<int> put(StateCache& c, const Tokens& t, int h) {
  std::vector<int> released;
  c.insert(t, h, released);
  return released;
}

}  // namespace

TEST_CASE("state cache: the longest cached prefix, within max_len, and where a prompt branches off",
          "[serve][state_cache]") {
  StateCache c(1 << 20, kE, 100);
  CHECK(put(c, {1, 2, 3}, 10).empty());
  CHECK(put(c, {1, 2, 3, 4, 5}, 11).empty());
  CHECK(put(c, {1, 2, 9}, 12).empty());
  CHECK(c.entries() == 3);

  auto m = look(c, {1, 2, 3, 4, 5, 6});
  CHECK(m.handle == 11);
  CHECK(m.length == 5);
  CHECK(m.shared == 5);
  m = look(c, {1, 2, 3, 4, 5, 6}, 4);  // the request must read at least its last token
  CHECK(m.handle == 10);
  CHECK(m.length == 3);
  m = look(c, {1, 2, 3, 4});  // part way along the edge to {..., 4, 5}
  CHECK(m.handle == 10);
  CHECK(m.shared == 4);
  m = look(c, {1, 2, 7, 7});  // branches off where no state is kept
  CHECK(m.handle == -1);
  CHECK(m.length == 0);
  CHECK(m.shared == 2);
  m = look(c, {1, 2, 9, 9});
  CHECK(m.handle == 12);
  CHECK(m.shared == 3);
  m = look(c, {5});
  CHECK(m.handle == -1);
  CHECK(m.shared == 0);
  CHECK(look(c, {}).handle == -1);
}

TEST_CASE("state cache: bytes are the states, the tokens on the edges and the nodes",
          "[serve][state_cache]") {
  StateCache c(1 << 20, kE, 100);
  put(c, {1, 2, 3}, 0);  // one leaf of 3 tokens
  CHECK(c.bytes() == kE + 3 * kT + kN);
  put(c, {1, 2, 3, 4, 5}, 1);  // a leaf of 2 below it
  CHECK(c.bytes() == 2 * kE + 5 * kT + 2 * kN);
  put(c, {1, 2, 9}, 2);  // splits {1,2,3} after 2 tokens: a node more, and a leaf {9}
  CHECK(c.bytes() == 3 * kE + 6 * kT + 4 * kN);
  CHECK(c.nodes() == 4);
  std::vector<int> released;
  c.clear(released);
  std::sort(released.begin(), released.end());
  CHECK(released == std::vector<int>{0, 1, 2});
  CHECK(c.bytes() == 0);
  CHECK(c.nodes() == 0);
}

TEST_CASE("state cache: eviction by bytes takes the least recently used entry, never a pinned one",
          "[serve][state_cache]") {
  const uint64_t one = kE + 3 * kT + kN;  // an entry of 3 tokens on a branch of its own
  StateCache c(2 * one + 10, kE, 100);    // room for two such entries
  put(c, {1, 1, 1}, 1);
  put(c, {2, 2, 2}, 2);
  std::vector<int> released;
  CHECK(look(c, {1, 1, 1, 7}).handle == 1);  // 1 is now the most recently used
  REQUIRE(c.make_room(Tokens{3, 3, 3}, released));
  CHECK(released == std::vector<int>{2});
  CHECK_FALSE(c.contains(2));
  put(c, {3, 3, 3}, 3);
  CHECK(c.bytes() == 2 * one);
  CHECK(c.evictions() == 1);

  c.pin(1);
  c.pin(3);
  released.clear();
  CHECK_FALSE(c.make_room(Tokens{4, 4, 4}, released));  // everything is pinned
  CHECK(released.empty());
  c.unpin(3);
  CHECK(c.make_room(Tokens{4, 4, 4}, released));
  CHECK(released == std::vector<int>{3});  // 1 stays although it is older
  released.clear();

  CHECK(put(c, {4, 4, 4}, 4).empty());
  // insert() itself keeps the bound, evicting the oldest others but never the new entry.
  c.unpin(1);
  CHECK(put(c, {5, 5, 5, 5, 5, 5}, 5) == std::vector<int>{1, 4});
  CHECK(c.bytes() == kE + 6 * kT + kN);
  CHECK(c.contains(5));

  // An entry larger than the whole budget: make_room refuses and evicts nothing.
  released.clear();
  CHECK_FALSE(c.make_room(Tokens(1000, 5), released));
  CHECK(released.empty());

  // The entry limit (the state slots set aside) holds like the byte bound.
  StateCache two(1 << 20, kE, 2);
  put(two, {1}, 1);
  put(two, {2}, 2);
  released.clear();
  CHECK(two.make_room(Tokens{3}, released));
  CHECK(released == std::vector<int>{1});
  released = put(two, {3}, 3);
  CHECK(two.entries() == 2);
  released = put(two, {4}, 4);
  CHECK(released == std::vector<int>{2});
}

TEST_CASE("state cache: the same tokens again replace the entry, unless it is pinned",
          "[serve][state_cache]") {
  StateCache c(1 << 20, kE, 100);
  put(c, {1, 2, 3}, 1);
  const uint64_t b = c.bytes();
  CHECK(put(c, {1, 2, 3}, 2) == std::vector<int>{1});
  CHECK(c.bytes() == b);
  CHECK(c.entries() == 1);
  CHECK(look(c, {1, 2, 3, 4}).handle == 2);
  std::vector<int> released;
  CHECK(c.make_room(Tokens{1, 2, 3}, released));  // there already: nothing to evict
  CHECK(released.empty());
  c.pin(2);
  CHECK(put(c, {1, 2, 3}, 3) == std::vector<int>{3});  // the pinned one stays
  CHECK(look(c, {1, 2, 3, 4}).handle == 2);
  CHECK_FALSE(c.contains(3));
  // An entry on a node that only branched before (no state of its own yet).
  put(c, {1, 2, 3, 4}, 4);
  put(c, {1, 2, 5}, 5);
  CHECK(put(c, {1, 2}, 6).empty());
  CHECK(look(c, {1, 2, 7}).handle == 6);
  CHECK(c.entries() == 4);
}

TEST_CASE("state cache: evicting entries gives back their nodes and tokens",
          "[serve][state_cache]") {
  StateCache c(3 * kE + 7 * kT + 4 * kN, kE, 100);  // these three and one token more
  put(c, {1, 2, 3}, 1);
  put(c, {1, 2, 3, 4, 5}, 2);
  put(c, {1, 2, 9}, 3);
  CHECK(c.bytes() == 3 * kE + 6 * kT + 4 * kN);
  look(c, {1, 2, 3, 4, 5});  // 2 is the most recent; 1 the least
  std::vector<int> released;
  // A new branch {7} needs kE + kT + kN: 1 goes, and its node, now a pass-through, merges with
  // its only child into {3, 4, 5}.
  REQUIRE(c.make_room(Tokens{7}, released));
  CHECK(released == std::vector<int>{1});
  CHECK(c.nodes() == 3);  // {1, 2} -> {3, 4, 5} and {9}
  CHECK(c.bytes() == 2 * kE + 6 * kT + 3 * kN);
  CHECK(look(c, {1, 2, 3, 4, 5, 6}).handle == 2);
  CHECK(look(c, {1, 2, 3, 7}).handle == -1);
  CHECK(put(c, {7}, 7).empty());
  // Two more tokens than the room left: 3 goes (the oldest now), then {1, 2} merges too.
  released.clear();
  REQUIRE(c.make_room(Tokens{8, 8}, released));
  CHECK(released == std::vector<int>{3});
  CHECK(c.nodes() == 2);  // {1, 2, 3, 4, 5} and {7}
  CHECK(c.bytes() == 2 * kE + 6 * kT + 2 * kN);
  CHECK(c.evictions() == 2);
}

namespace {

// The contract written out naively: keys in a list, every question answered by a scan.
struct Naive {
  uint64_t budget, entry;
  size_t max_entries;
  std::map<Tokens, int> key_handle;
  std::map<int, Tokens> handle_key;
  std::map<int, int> pins;
  std::list<int> lru;  // front: least recently used

  // Bytes of a set of keys: states, one token per distinct non-empty prefix, one node per key or
  // branching prefix.
  uint64_t bytes_of(const std::set<Tokens>& keys) const {
    std::set<Tokens> prefixes;
    for (const Tokens& k : keys)
      for (size_t l = 1; l <= k.size(); ++l)
        prefixes.insert(Tokens(k.begin(), k.begin() + long(l)));
    uint64_t nodes = 0;
    for (const Tokens& p : prefixes) {
      std::set<int32_t> next;
      for (const Tokens& q : prefixes)
        if (q.size() == p.size() + 1 && std::equal(p.begin(), p.end(), q.begin()))
          next.insert(q.back());
      if (keys.count(p) || next.size() >= 2) ++nodes;
    }
    return keys.size() * entry + prefixes.size() * kT + nodes * kN;
  }
  std::set<Tokens> keys() const {
    std::set<Tokens> s;
    for (auto& [k, h] : key_handle) s.insert(k);
    return s;
  }
  uint64_t bytes() const { return bytes_of(keys()); }
  void touch(int h) {
    lru.remove(h);
    lru.push_back(h);
  }
  StateCache::Match lookup(const Tokens& t, size_t max_len) {
    StateCache::Match m;
    for (auto& [k, h] : key_handle) {
      size_t c = 0;
      while (c < k.size() && c < t.size() && k[c] == t[c]) ++c;
      m.shared = std::max(m.shared, c);
      if (c == k.size() && k.size() <= max_len && k.size() > m.length) {
        m.length = k.size();
        m.handle = h;
      }
    }
    if (m.handle >= 0) touch(m.handle);
    return m;
  }
  void remove(int h) {
    key_handle.erase(handle_key.at(h));
    handle_key.erase(h);
    pins.erase(h);
    lru.remove(h);
  }
  bool evict_one(int keep, std::vector<int>& released) {
    for (int h : lru)
      if (h != keep && pins[h] == 0) {
        released.push_back(h);
        remove(h);
        return true;
      }
    return false;
  }
  bool make_room(const Tokens& t, std::vector<int>& released) {
    if (key_handle.count(t)) return true;
    if (entry + kN + kT * t.size() > budget || max_entries == 0) return false;
    for (;;) {
      std::set<Tokens> with = keys();
      with.insert(t);
      if (bytes_of(with) <= budget && key_handle.size() < max_entries) return true;
      if (!evict_one(-1, released)) return false;
    }
  }
  void insert(const Tokens& t, int h, std::vector<int>& released) {
    if (auto it = key_handle.find(t); it != key_handle.end()) {
      if (pins[it->second] > 0) {
        touch(it->second);
        released.push_back(h);
        return;
      }
      released.push_back(it->second);
      remove(it->second);
    }
    key_handle[t] = h;
    handle_key[h] = t;
    pins[h] = 0;
    lru.push_back(h);
    while (bytes() > budget || key_handle.size() > max_entries)
      if (!evict_one(h, released)) break;
  }
};

}  // namespace

TEST_CASE("state cache: 20,000 random operations agree with the naive model",
          "[serve][state_cache]") {
  std::mt19937 rng(7);
  auto below = [&](int n) { return int(rng() % uint32_t(n)); };
  const uint64_t budget = 6 * kE + 40 * kT + 10 * kN;
  StateCache c(budget, kE, 5);
  Naive n{budget, kE, 5, {}, {}, {}, {}};
  std::vector<Tokens> seen;  // keys reused so that lookups hit and prefixes are shared
  int next_handle = 0;
  std::vector<int> pinned;
  for (int step = 0; step < 20000; ++step) {
    Tokens t;
    if (!seen.empty() && below(3) > 0) {
      t = seen[size_t(below(int(seen.size())))];
      t.resize(size_t(1 + below(int(t.size()) + 2)), int32_t(below(3)));
    } else {
      t.resize(size_t(1 + below(12)));
      for (auto& x : t) x = below(3);
    }
    const int op = below(10);
    if (op < 4) {
      const size_t max_len = size_t(below(14));
      StateCache::Match a = c.lookup(t, max_len), b = n.lookup(t, max_len);
      REQUIRE(a.handle == b.handle);
      REQUIRE(a.length == b.length);
      REQUIRE(a.shared == b.shared);
    } else if (op < 8) {
      std::vector<int> ra, rb;
      const bool fa = c.make_room(t, ra), fb = n.make_room(t, rb);
      REQUIRE(fa == fb);
      REQUIRE(ra == rb);
      if (fa) {
        const int h = next_handle++;
        ra.clear();
        rb.clear();
        c.insert(t, h, ra);
        n.insert(t, h, rb);
        REQUIRE(ra == rb);
        seen.push_back(t);
      }
    } else if (op == 8 && !n.handle_key.empty()) {
      auto it = n.handle_key.begin();
      std::advance(it, below(int(n.handle_key.size())));
      c.pin(it->first);
      ++n.pins[it->first];
      pinned.push_back(it->first);
    } else if (op == 9 && !pinned.empty()) {
      const size_t i = size_t(below(int(pinned.size())));
      const int h = pinned[i];
      pinned.erase(pinned.begin() + long(i));
      if (c.contains(h)) {
        c.unpin(h);
        --n.pins[h];
      }
    }
    REQUIRE(c.entries() == n.key_handle.size());
    REQUIRE(c.bytes() == n.bytes());
    REQUIRE(c.bytes() <= budget);
  }
  CHECK(c.evictions() > 100);
}

TEST_CASE("state cache: the slots set aside for a budget", "[serve][state_cache]") {
  CHECK(state_cache_entries(1000, 300) == 3);
  CHECK(state_cache_entries(1 << 30, 1, 4096) == 4096);
  CHECK(state_cache_entries(0, 300) == 0);
}
