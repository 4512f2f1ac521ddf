// The state cache's radix trie (state_cache.h).
#include "coordinator/serve/state_cache.h"

#include <algorithm>

#include "common/error.h"

namespace rwkvpp {

struct StateCache::Node {
  std::vector<int32_t> edge;  // the tokens from the parent to here (empty only at the root)
  Node* parent = nullptr;
  std::map<int32_t, std::unique_ptr<Node>> children;  // by the first token of their edge
  size_t depth = 0;                                   // tokens from the root to here
  int handle = -1;                                    // the entry here, or -1
};

namespace {

// Length of the common start of `edge` and `tokens`.
size_t common(const std::vector<int32_t>& edge, std::span<const int32_t> tokens) {
  const size_t n = std::min(edge.size(), tokens.size());
  size_t k = 0;
  while (k < n && edge[k] == tokens[k]) ++k;
  return k;
}

}  // namespace

StateCache::StateCache(uint64_t budget_bytes, uint64_t entry_bytes, size_t max_entries)
    : budget_(budget_bytes),
      entry_bytes_(entry_bytes),
      max_entries_(max_entries),
      root_(std::make_unique<Node>()) {
  RWKVPP_CHECK(entry_bytes > 0);
}

StateCache::~StateCache() = default;

StateCache::Node* StateCache::walk(std::span<const int32_t> tokens, size_t* shared,
                                   const std::function<void(Node*)>& on_node) const {
  Node* n = root_.get();
  size_t pos = 0;
  while (pos < tokens.size()) {
    auto it = n->children.find(tokens[pos]);
    if (it == n->children.end()) break;
    Node* c = it->second.get();
    const size_t k = common(c->edge, tokens.subspan(pos));
    pos += k;
    if (k < c->edge.size()) break;  // the tokens leave the trie part way along c's edge
    n = c;
    if (on_node) on_node(n);
  }
  *shared = pos;
  return n;
}

StateCache::Match StateCache::lookup(std::span<const int32_t> tokens, size_t max_len) {
  Match m;
  walk(tokens, &m.shared, [&](Node* n) {
    if (n->handle >= 0 && n->depth <= max_len) {
      m.handle = n->handle;
      m.length = n->depth;
    }
  });
  if (m.handle >= 0) touch(entries_.at(m.handle));
  return m;
}

uint64_t StateCache::cost_of(std::span<const int32_t> tokens) const {
  size_t shared = 0;
  const Node* n = walk(tokens, &shared);
  if (n->depth == tokens.size()) return n->handle >= 0 ? 0 : entry_bytes_;
  uint64_t c = entry_bytes_;
  if (shared > n->depth) c += kNodeBytes;  // an edge is split where the tokens leave it
  if (shared < tokens.size()) c += kNodeBytes + kTokenBytes * (tokens.size() - shared);  // a leaf
  return c;
}

bool StateCache::make_room(std::span<const int32_t> tokens, std::vector<int>& released) {
  if (entry_bytes_ + kNodeBytes + kTokenBytes * tokens.size() > budget_ || max_entries_ == 0)
    return false;  // it would not fit in an empty cache: evict nothing for it
  for (;;) {
    const uint64_t c = cost_of(tokens);
    if (c == 0) return true;  // an entry is there already
    if (bytes_ + c <= budget_ && entries_.size() < max_entries_) return true;
    if (!evict_one(-1, released)) return false;
  }
}

void StateCache::insert(std::span<const int32_t> tokens, int handle, std::vector<int>& released) {
  RWKVPP_CHECK(handle >= 0 && !tokens.empty());
  RWKVPP_CHECK(!contains(handle), "the handle is in the cache already");
  Node* n = root_.get();
  size_t pos = 0;
  while (pos < tokens.size()) {
    auto it = n->children.find(tokens[pos]);
    if (it == n->children.end()) {  // a new leaf holds the rest
      auto leaf = std::make_unique<Node>();
      leaf->edge.assign(tokens.begin() + pos, tokens.end());
      leaf->parent = n;
      leaf->depth = tokens.size();
      bytes_ += kNodeBytes + kTokenBytes * leaf->edge.size();
      ++nodes_;
      Node* l = leaf.get();
      n->children.emplace(tokens[pos], std::move(leaf));
      n = l;
      break;
    }
    Node* c = it->second.get();
    const size_t k = common(c->edge, tokens.subspan(pos));
    if (k < c->edge.size()) {  // split c's edge after k tokens
      auto mid = std::make_unique<Node>();
      mid->edge.assign(c->edge.begin(), c->edge.begin() + long(k));
      mid->parent = n;
      mid->depth = n->depth + k;
      std::unique_ptr<Node> owned = std::move(it->second);
      owned->edge.erase(owned->edge.begin(), owned->edge.begin() + long(k));
      owned->parent = mid.get();
      mid->children.emplace(owned->edge.front(), std::move(owned));
      bytes_ += kNodeBytes;
      ++nodes_;
      it->second = std::move(mid);
      c = it->second.get();
    }
    pos += k;
    n = c;
  }
  if (n->handle >= 0) {  // the same tokens again: one of the two states goes
    Entry& old = entries_.at(n->handle);
    if (old.pins > 0) {
      touch(old);
      released.push_back(handle);
      return;
    }
    const int displaced = n->handle;
    lru_.erase(old.lru);
    entries_.erase(displaced);
    bytes_ -= entry_bytes_;
    released.push_back(displaced);
  }
  n->handle = handle;
  Entry e;
  e.node = n;
  e.lru = lru_.insert(lru_.end(), handle);
  entries_.emplace(handle, e);
  bytes_ += entry_bytes_;
  while (bytes_ > budget_ || entries_.size() > max_entries_)
    if (!evict_one(handle, released)) break;
}

bool StateCache::evict_one(int keep, std::vector<int>& released) {
  for (int h : lru_) {
    if (h == keep || entries_.at(h).pins > 0) continue;
    released.push_back(h);
    remove_entry(h);
    ++evictions_;
    return true;
  }
  return false;
}

void StateCache::remove_entry(int handle) {
  auto it = entries_.find(handle);
  RWKVPP_CHECK(it != entries_.end());
  Node* n = it->second.node;
  lru_.erase(it->second.lru);
  entries_.erase(it);
  n->handle = -1;
  bytes_ -= entry_bytes_;
  prune(n);
}

void StateCache::prune(Node* n) {
  while (n != root_.get() && n->handle < 0) {
    if (n->children.empty()) {  // leads to no entry any more
      Node* p = n->parent;
      bytes_ -= kNodeBytes + kTokenBytes * n->edge.size();
      --nodes_;
      p->children.erase(n->edge.front());  // frees n
      n = p;
      continue;
    }
    if (n->children.size() == 1) {  // a pass-through node: merge its only child into it
      std::unique_ptr<Node> c = std::move(n->children.begin()->second);
      n->children.clear();
      n->edge.insert(n->edge.end(), c->edge.begin(), c->edge.end());
      n->depth = c->depth;
      n->handle = c->handle;
      n->children = std::move(c->children);
      for (auto& [t, g] : n->children) g->parent = n;
      if (n->handle >= 0) entries_.at(n->handle).node = n;
      bytes_ -= kNodeBytes;
      --nodes_;
    }
    break;
  }
}

void StateCache::touch(Entry& e) { lru_.splice(lru_.end(), lru_, e.lru); }

void StateCache::pin(int handle) { ++entries_.at(handle).pins; }

void StateCache::unpin(int handle) {
  Entry& e = entries_.at(handle);
  RWKVPP_CHECK(e.pins > 0, "unpin without pin");
  --e.pins;
}

void StateCache::clear(std::vector<int>& released) {
  for (int h : lru_) released.push_back(h);
  lru_.clear();
  entries_.clear();
  root_ = std::make_unique<Node>();
  bytes_ = 0;
  nodes_ = 0;
}

size_t state_cache_entries(uint64_t budget_bytes, uint64_t entry_bytes, size_t cap) {
  if (entry_bytes == 0) return 0;
  return size_t(std::min<uint64_t>(budget_bytes / entry_bytes, cap));
}

}  // namespace rwkvpp
