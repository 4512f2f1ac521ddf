// Text generation on top of the Engine: prompts as text, generated tokens decoded through a
// tokenizer, stop strings, and text streamed out as it is produced. Shared by the commands that
// take text (generate --prompt, chat, batch jobs).
//
// Streaming contract (make_text_request): the pieces given to `on_text` concatenate to exactly
// TextResult::text. A piece never ends inside a UTF-8 character (an incomplete character is held
// back until the token that completes it arrives), and text that could still turn out to be the
// start of a stop string is held back until it cannot; everything held back is released when the
// request finishes (except a stop string and what follows it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/engine.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "common/sampling_params.h"

namespace rwkvpp {

struct TextOptions {
  int max_tokens = 32;            // tokens to generate at most
  SamplingParams sampling;        // greedy by default
  std::vector<std::string> stop;  // stop strings (not empty); the text ends before the first
  std::vector<int32_t> stop_ids;  // stop after generating one of these ids (its text is dropped)
  bool logprobs = false;          // fill TextResult::logprobs
};

struct TextResult {
  std::string text;                // generated text, up to (excluding) a stop string
  Finish finish = Finish::Length;  // Stop for a stop string or a stop id
  int prompt_tokens = 0;
  int completion_tokens = 0;    // == ids.size()
  std::vector<int32_t> ids;     // every generated id, including a stop id and the tokens
                                // that carry a stop string (and anything after it)
  std::vector<float> logprobs;  // per id (when TextOptions::logprobs), as the sampler gives
};

// Resolves the tokenizer for a command: `--tokenizer` (a path or "bytes") when given, else the
// one embedded in the model; a clear error when neither exists or the vocabulary size exceeds
// the model's. `model` may be empty (then only the flag counts); both empty is an error.
std::unique_ptr<Tokenizer> tokenizer_for(const std::string& model,
                                         const std::string& tokenizer_flag);

// The bytes of one generated token; ids the tokenizer lacks (a model's vocabulary may be padded
// beyond the tokenizer's, e.g. 65536 rows for World's 65530 ids) decode to nothing.
std::string token_bytes_or_empty(const Tokenizer& tok, int32_t id);

// The ids that end a text for this tokenizer: World's and 20B's <|endoftext|> (0); none for the
// bytes tokenizer. rwkvpp serve stops every choice at them, and so do OpenAI Batch lines.
std::vector<int32_t> end_of_text_ids(const Tokenizer& tok);

// A Request whose generated tokens are decoded through `tok`; it stops at any stop string (the
// returned text excludes it and anything after) or stop id; `on_text` (may be empty) receives
// the text as it is produced, never splitting a UTF-8 character and holding back text that may
// still turn into a stop string; `on_done` (may be empty) receives the result. `tok` must
// outlive the request. Throws Error for invalid options (sampling values, an empty stop
// string, negative max_tokens, an empty prompt). The callbacks never throw themselves (ids the
// tokenizer does not know decode to no text); on_text/on_done must not throw either.
Request make_text_request(const Tokenizer& tok, std::vector<int32_t> prompt_ids,
                          const TextOptions& o, std::function<void(std::string_view)> on_text,
                          std::function<void(TextResult)> on_done);

// Incremental stop-string matching and UTF-8-safe release of generated text; the engine-free
// core of make_text_request (exposed for tests and other front ends).
class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop);  // throws Error for an empty stop string
  // Appends a token's bytes. Returns the text that is now safe to release (possibly empty).
  // After a stop string is found, stopped() is true, and the returned text ends right before
  // it; later calls return nothing.
  std::string push(std::string_view bytes);
  // Releases everything held back (at the end of generation); nothing after a stop string.
  std::string finish();
  bool stopped() const { return stop_at_ != std::string::npos; }
  // The text so far: all bytes pushed, cut before the stop string once one was found.
  std::string text() const { return stopped() ? all_.substr(0, stop_at_) : all_; }

 private:
  std::vector<std::string> stop_;
  std::string all_;                     // every byte pushed
  size_t released_ = 0;                 // bytes of all_ given out
  size_t stop_at_ = std::string::npos;  // where the first stop string starts
};

// The RWKV chat format (spoken by `rwkvpp chat` and by `rwkvpp serve`'s chat endpoint): a
// conversation is a sequence of turns "User: {text}\n\n" and "Assistant: {text}\n\n" (a
// "System: {text}\n\n" turn may open it); the model answers after the cue "Assistant:" and its
// answer ends at one of chat_stop_strings().
inline constexpr std::string_view kChatAnswerCue = "Assistant:";
// "Role: text\n\n" (role "User", "Assistant" or "System"; `text` should hold no "\n\n").
std::string chat_turn(std::string_view role, std::string_view text);
// "\n\n" and "\nUser:": where an answer ends (the second: the model starts the user's turn).
const std::vector<std::string>& chat_stop_strings();

// The RWKV chat format, one conversation whose recurrent state stays resident in the engine
// between turns (Request::keep_state): turn k reads only its own new tokens
// ("User: {line}\n\nAssistant:", plus the previous answer's last token), never the earlier
// turns. Answers stop at "\n\n" or "\nUser:" (and at the options' own stop strings). Run on
// the coordinator, inside run_cluster's body; not thread-safe.
class ChatSession {
 public:
  ChatSession(Engine& e, const Tokenizer& tok, TextOptions o);
  ~ChatSession();  // releases the conversation's state in the engine
  ChatSession(const ChatSession&) = delete;
  ChatSession& operator=(const ChatSession&) = delete;

  // One turn: the user's line in, the assistant's answer out (streamed to on_text, which may be
  // empty). Returns the answer without the stop string.
  TextResult turn(const std::string& user_line, std::function<void(std::string_view)> on_text);
  // Tokens the last turn fed to the model (its prompt + the fed-back generated tokens).
  uint64_t last_turn_tokens() const { return last_turn_tokens_; }

 private:
  Engine& e_;
  const Tokenizer& tok_;
  TextOptions o_;
  int state_ = -1;                 // kept state of the conversation so far (engine prefix id)
  std::vector<int32_t> carry_;     // the previous answer's last token, not yet in the state
  std::string prev_answer_bytes_;  // all bytes the previous turn generated
  uint64_t last_turn_tokens_ = 0;
};

}  // namespace rwkvpp
