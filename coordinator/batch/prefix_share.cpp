// Automatic prefix sharing for batch jobs (prefix_share.h).
#include "coordinator/batch/prefix_share.h"

#include <algorithm>
#include <functional>

#include "common/error.h"

namespace rwkvpp {

namespace {

// Leading tokens `a` and `b` share, counting at most `limit`.
size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b,
                     size_t limit = SIZE_MAX) {
  const size_t n = std::min({a.size(), b.size(), limit});
  return size_t(std::mismatch(a.begin(), a.begin() + long(n), b.begin()).first - a.begin());
}

// Token paths of the trie beside the states: a generous bound (a state is usually MBs).
constexpr uint64_t kPathBytes = uint64_t(64) << 20;

}  // namespace

void PromptWindow::add(const std::vector<int32_t>* prompt) { set_.insert(prompt); }

void PromptWindow::remove(const std::vector<int32_t>* prompt) { set_.erase(prompt); }

size_t PromptWindow::longest_shared(const std::vector<int32_t>* prompt) const {
  auto it = set_.find(prompt);
  RWKVPP_CHECK(it != set_.end(), "the prompt is not in the window");
  size_t best = 0;
  if (it != set_.begin()) best = common_prefix(*prompt, **std::prev(it));
  if (auto next = std::next(it); next != set_.end())
    best = std::max(best, common_prefix(*prompt, **next));
  return best;
}

std::vector<size_t> PromptWindow::shared_depths(const std::vector<int32_t>* prompt,
                                                size_t min_len, size_t max_len,
                                                size_t max_depths, size_t max_walk) const {
  auto at = set_.find(prompt);
  RWKVPP_CHECK(at != set_.end(), "the prompt is not in the window");
  std::vector<size_t> depths;
  // In sorted order the prefix shared with the k-th neighbour only shrinks as k grows, so each
  // side gives a descending run; compare no further than the run's current length.
  size_t run = max_len;
  auto visit = [&](const std::vector<int32_t>* other) {
    run = common_prefix(*prompt, *other, run);
    if (run < min_len) return false;
    depths.push_back(run);
    return true;
  };
  size_t k = 0;
  for (auto it = at; k < max_walk && it != set_.begin() && visit(*std::prev(it)); ++k) --it;
  run = max_len;
  k = 0;
  for (auto it = std::next(at); k < max_walk && it != set_.end() && visit(*it); ++k) ++it;
  std::sort(depths.begin(), depths.end(), std::greater<>());
  depths.erase(std::unique(depths.begin(), depths.end()), depths.end());
  // Too many: the deepest (the prefix to make) and the shallowest, which the most prompts share.
  if (depths.size() > max_depths && max_depths > 0)
    depths.erase(depths.begin() + 1, depths.end() - long(max_depths - 1));
  return depths;
}

AutoPrefix::AutoPrefix(Engine& e, size_t min_tokens, size_t max_states, uint64_t state_bytes,
                       int base)
    : e_(e),
      min_tokens_(std::max<size_t>(1, min_tokens)),
      base_(base),
      cache_(max_states * std::max<uint64_t>(1, state_bytes) + kPathBytes,
             std::max<uint64_t>(1, state_bytes), max_states) {}

AutoPrefix::~AutoPrefix() = default;

AutoPrefix::Start AutoPrefix::start(const std::vector<int32_t>& prompt, size_t max_len) {
  Start s;
  s.from = base_;
  s.skip = 0;
  StateCache::Match m = cache_.lookup(prompt, max_len);
  if (m.handle >= 0) {
    cache_.pin(m.handle);
    s.pins.push_back(m.handle);
    s.from = m.handle;
    s.skip = m.length;
  }
  // Where this prompt branches off the others in view, shallowest first: a chain of shared
  // states, each `min_tokens` beyond the one before, each continuing the one before. They are
  // in the cache at once (a prompt started next finds them before they are read), and pinned
  // for this prompt: the next link and the prompt itself read from them.
  const std::vector<size_t> depths =
      window_.shared_depths(&prompt, m.length + min_tokens_, max_len);
  std::vector<int> released;
  for (auto d = depths.rbegin(); d != depths.rend(); ++d) {
    if (*d < s.skip + min_tokens_) continue;
    const std::span<const int32_t> path(prompt.data(), *d);
    if (!cache_.make_room(path, released)) break;  // every state is in use: read the rest
    release(released);
    Request r;
    r.prompt.assign(prompt.begin() + long(s.skip), prompt.begin() + long(*d));
    r.prefix = s.from;
    const int id = e_.add_prefix(std::move(r));
    cache_.insert(path, id, released);
    RWKVPP_CHECK(cache_.contains(id), "a new shared state was not kept");
    release(released);
    cache_.pin(id);
    s.pins.push_back(id);
    ++made_;
    made_tokens_ += *d - s.skip;
    s.from = id;
    s.skip = *d;
  }
  release(released);
  skipped_ += s.skip;
  return s;
}

void AutoPrefix::done(Start& s) {
  for (int h : s.pins) cache_.unpin(h);
  s.pins.clear();
}

void AutoPrefix::release(std::vector<int>& handles) {
  for (int h : handles) e_.release_prefix(h);
  handles.clear();
}

void AutoPrefix::release_all() {
  std::vector<int> released;
  cache_.clear(released);
  release(released);
}

}  // namespace rwkvpp
