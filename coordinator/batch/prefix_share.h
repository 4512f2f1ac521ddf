// Automatic prefix sharing for `rwkvpp batch` (docs/batch.md): prompts that start with the same
// tokens (a system prompt, a few-shot block, a document asked many questions) read those tokens
// once. The job tells AutoPrefix about every prompt it has read ahead or is running (add/remove);
// when it starts a prompt, start() finds the depths where that prompt's path branches off the
// others' (the prefixes it shares with them), and at those that are at least `min_tokens`
// beyond the deepest shared state already on the prompt's path (and beyond each other) makes
// a chain of new shared states, each an Engine prefix continuing the one before
// (Engine::add_prefix); the prompt then continues the deepest and reads only the rest. The
// shallower links matter: a prompt that shares less (the same document, another question)
// still finds a state on its path.
//
// The shared states live in rwkvpp serve's StateCache (a radix trie over token ids, entries
// bounded in number, least recently used first out, pinned while a prompt started from them is
// running) in state slots of their own (ClusterOptions::extra_slots). Which prompts share is
// found without a second trie: the prompts in view are kept in lexicographic order of their
// tokens, where the longest prefix a prompt shares with any other is the longer of those it
// shares with its two neighbours, and the prefixes it shares with prompts further away only
// shrink (the depths where it branches off them).
//
// Results do not change: on a batch-invariant pipeline (the CPU backend) a state that read
// tokens [0, a) and then, cloned, [a, b) is bit-identical to one that read [0, b) at once.
// Not thread-safe: the coordinator's loop only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "coordinator/engine.h"
#include "coordinator/serve/state_cache.h"

namespace rwkvpp {

// The prompts in view, in lexicographic order of their tokens (compared by content; equal
// prompts by address). Holds pointers: a prompt must stay where it is until remove().
class PromptWindow {
 public:
  void add(const std::vector<int32_t>* prompt);
  void remove(const std::vector<int32_t>* prompt);
  // The most leading tokens `prompt` (which must be in the window) shares with another prompt.
  size_t longest_shared(const std::vector<int32_t>* prompt) const;
  // The distinct lengths of the prefixes `prompt` shares with other prompts of the window, at
  // least `min_len` and at most `max_len`, deepest first, looking at most `max_walk` neighbours
  // each side: where its path branches off theirs. Of more than `max_depths`, the deepest and the
  // shallowest `max_depths - 1`.
  std::vector<size_t> shared_depths(const std::vector<int32_t>* prompt, size_t min_len,
                                    size_t max_len, size_t max_depths = 8,
                                    size_t max_walk = 64) const;
  size_t size() const { return set_.size(); }

 private:
  struct Less {
    bool operator()(const std::vector<int32_t>* a, const std::vector<int32_t>* b) const {
      return *a < *b || (*a == *b && a < b);
    }
  };
  std::set<const std::vector<int32_t>*, Less> set_;
};

class AutoPrefix {
 public:
  // `base`: the state every prompt continues (the --prefix-file's), -1 for a fresh one;
  // `max_states`: the state slots set aside; `state_bytes`: one state's size on all stages.
  AutoPrefix(Engine& e, size_t min_tokens, size_t max_states, uint64_t state_bytes, int base);
  ~AutoPrefix();
  AutoPrefix(const AutoPrefix&) = delete;
  AutoPrefix& operator=(const AutoPrefix&) = delete;

  // A prompt read ahead or running; the vector must stay where it is until remove().
  void add(const std::vector<int32_t>* prompt) { window_.add(prompt); }
  void remove(const std::vector<int32_t>* prompt) { window_.remove(prompt); }

  struct Start {
    int from = -1;          // the state the prompt continues (a shared one, or `base`)
    size_t skip = 0;        // the prompt's tokens that state has read
    std::vector<int> pins;  // shared states pinned for it until done()
  };
  // Where a prompt (in the window, the very vector given to add()) starts: it reads at most
  // `max_len` of its tokens from shared states (the rest itself). May submit the prefix that
  // makes a new shared state. Call done() once the requests continuing `from` have finished.
  Start start(const std::vector<int32_t>& prompt, size_t max_len);
  void done(Start& s);  // the prompt no longer needs its shared states
  // Gives every shared state back to the engine (at the end, when no request runs).
  void release_all();

  // Prompt tokens not read thanks to the shared states, net of what making them read.
  uint64_t tokens_saved() const { return skipped_ - made_tokens_; }
  uint64_t states_made() const { return made_; }

 private:
  void release(std::vector<int>& handles);

  Engine& e_;
  size_t min_tokens_;
  int base_;
  PromptWindow window_;
  StateCache cache_;
  uint64_t skipped_ = 0, made_tokens_ = 0, made_ = 0;
};

}  // namespace rwkvpp
