// The index of rwkvpp serve's state cache: a radix trie over token ids whose nodes may hold an
// entry, the handle of a recurrent state that has read exactly the tokens on the path from the
// root to that node (in the server, an Engine prefix: a resident state slot on every stage, each
// stage holding its own layers' part). RWKV's state has the same size after 10 tokens as after
// 10,000, so an entry costs the same wherever it sits; a request whose prompt starts with an
// entry's tokens starts from that state and reads only the rest (docs/serve.md, state cache).
//
// Bounded by bytes: every entry costs `entry_bytes`, every token held on the trie's edges
// kTokenBytes and every node kNodeBytes; the least recently used entries go first when room is
// needed, never pinned ones (a running request started from them). A node without an entry
// stays only while an entry lies below it, so the trie never holds more tokens than its
// entries' paths. Nothing here knows about the engine: the caller frees the handles it is
// given back (`released`). Not thread-safe (the server's engine thread owns it).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

namespace rwkvpp {

class StateCache {
 public:
  static constexpr uint64_t kTokenBytes = 4;  // an int32 token id on an edge
  static constexpr uint64_t kNodeBytes = 96;  // a node's bookkeeping (a fixed estimate)

  // `budget_bytes`: the bound on bytes(); `entry_bytes`: what one state costs (> 0);
  // `max_entries`: the most entries at once (the state slots set aside for them).
  StateCache(uint64_t budget_bytes, uint64_t entry_bytes, size_t max_entries);
  ~StateCache();
  StateCache(const StateCache&) = delete;
  StateCache& operator=(const StateCache&) = delete;

  struct Match {
    int handle = -1;    // the deepest entry whose tokens start `tokens`, at most max_len; -1: none
    size_t length = 0;  // the tokens that entry has read (0 without one)
    // How many leading tokens of `tokens` follow a path of the trie (>= length): where they
    // branch off the prompts seen before, a good point to keep a state for the next request.
    size_t shared = 0;
  };
  // Looks `tokens` up and marks the entry found as the most recently used.
  Match lookup(std::span<const int32_t> tokens, size_t max_len);

  // Evicts least recently used, unpinned entries until an entry for exactly `tokens` fits (in
  // bytes and in max_entries); appends their handles to `released`. False when it cannot fit
  // (larger than the whole budget, or the rest is pinned). True at once when `tokens` already
  // has an entry (insert then keeps one of the two).
  bool make_room(std::span<const int32_t> tokens, std::vector<int>& released);

  // Adds entry `handle` (>= 0, not in the cache) for exactly `tokens` (not empty). Where
  // `tokens` already has an entry, the new one replaces it and the old handle is released;
  // if the old one is pinned it stays and the new handle is released instead. Then evicts
  // (never the new entry) while over the budget. Appends what the caller must free to
  // `released`.
  void insert(std::span<const int32_t> tokens, int handle, std::vector<int>& released);

  // A pinned entry is never evicted or replaced. Pins count (pin twice, unpin twice).
  void pin(int handle);
  void unpin(int handle);

  // Removes every entry (their handles appended to `released`), pinned or not.
  void clear(std::vector<int>& released);

  bool contains(int handle) const { return entries_.count(handle) != 0; }
  size_t entries() const { return entries_.size(); }
  uint64_t bytes() const { return bytes_; }
  uint64_t budget() const { return budget_; }
  uint64_t entry_bytes() const { return entry_bytes_; }
  size_t max_entries() const { return max_entries_; }
  uint64_t evictions() const { return evictions_; }
  size_t nodes() const { return nodes_; }  // without the root

 private:
  struct Node;
  struct Entry {
    Node* node = nullptr;
    int pins = 0;
    std::list<int>::iterator lru;  // position in lru_ (front: least recently used)
  };
  // Walks `tokens` down: the deepest node whose path is a prefix of them, and how many tokens
  // follow the trie (into an edge, possibly part way); on_node sees every node passed, in order.
  Node* walk(std::span<const int32_t> tokens, size_t* shared,
             const std::function<void(Node*)>& on_node = {}) const;
  uint64_t cost_of(std::span<const int32_t> tokens) const;  // bytes an entry there would add
  bool evict_one(int keep, std::vector<int>& released);     // the LRU unpinned entry but `keep`
  void remove_entry(int handle);
  void prune(Node* n);  // drops nodes that no longer lead to an entry, merges single children
  void touch(Entry& e);

  uint64_t budget_, entry_bytes_;
  size_t max_entries_;
  std::unique_ptr<Node> root_;
  std::unordered_map<int, Entry> entries_;
  std::list<int> lru_;
  uint64_t bytes_ = 0, evictions_ = 0;
  size_t nodes_ = 0;
};

// State slots to set aside for a cache of `budget_bytes` whose entries cost `entry_bytes`:
// what the budget can hold, at most `cap`.
size_t state_cache_entries(uint64_t budget_bytes, uint64_t entry_bytes, size_t cap = 4096);

}  // namespace rwkvpp
