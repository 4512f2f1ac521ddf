// Automatic prefix sharing for batch jobs (prefix_share.h).
#include "coordinator/batch/prefix_share.h"

#include <algorithm>

#include "common/error.h"

namespace rwkvpp {

namespace {

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
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

AutoPrefix::AutoPrefix(Engine& e, size_t min_tokens, size_t max_states, uint64_t state_bytes,
                       int base)
    : e_(e),
      min_tokens_(std::max<size_t>(1, min_tokens)),
      base_(base),
      cache_(max_states * state_bytes + kPathBytes, std::max<uint64_t>(1, state_bytes),
             max_states) {}

AutoPrefix::~AutoPrefix() = default;

AutoPrefix::Start AutoPrefix::start(const std::vector<int32_t>& prompt, size_t max_len) {
  Start s;
  s.from = base_;
  StateCache::Match m = cache_.lookup(prompt, max_len);
  const size_t shared = std::min(window_.longest_shared(&prompt), max_len);
  std::vector<int> released;
  if (shared >= m.length + min_tokens_) {
    // The new state reads from the deepest one there is: keep that one meanwhile.
    if (m.handle >= 0) cache_.pin(m.handle);
    if (cache_.make_room({prompt.data(), shared}, released)) {
      release(released);
      Request r;
      r.prompt.assign(prompt.begin() + long(m.length), prompt.begin() + long(shared));
      r.prefix = m.handle >= 0 ? m.handle : base_;
      r.max_tokens = 0;
      r.keep_state = true;
      const int id = e_.submit(std::move(r));
      cache_.insert({prompt.data(), shared}, id, released);
      ++made_;
      made_tokens_ += shared - m.length;
      if (m.handle >= 0) s.pins.push_back(m.handle);
      m.handle = id;
      m.length = shared;
    } else if (m.handle >= 0) {
      cache_.unpin(m.handle);
    }
  }
  release(released);
  if (m.handle >= 0) {
    cache_.pin(m.handle);
    s.pins.push_back(m.handle);
    s.from = m.handle;
    s.skip = m.length;
    skipped_ += m.length;
  }
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
