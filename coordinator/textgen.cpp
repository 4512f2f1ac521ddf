// Text generation on top of the Engine: tokenizer resolution, TextStream (stop strings and
// UTF-8-safe streaming), make_text_request, and ChatSession (multi-turn chat on a resident state).
#include "coordinator/textgen.h"

#include <algorithm>

#include "common/error.h"
#include "coordinator/tokenizer/utf8_stream.h"
#include "shards/model_reader.h"

namespace rwkvpp {

std::vector<int32_t> end_of_text_ids(const Tokenizer& tok) {
  if (tok.kind() == "world" || tok.kind() == "20b") return {0};
  return {};
}

std::string token_bytes_or_empty(const Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.vocab_size()) return {};
  try {
    return tok.token_bytes(id);
  } catch (const std::exception&) {
    return {};
  }
}

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_for(const std::string& model,
                                         const std::string& tokenizer_flag) {
  if (model.empty() && tokenizer_flag.empty())
    fail("give --model MODEL (with an embedded tokenizer) or --tokenizer FILE|bytes");
  std::unique_ptr<Tokenizer> tok;
  int64_t model_vocab = -1;
  if (!model.empty()) {
    ModelReader reader(model);
    model_vocab = reader.config().vocab_size;
    if (tokenizer_flag.empty()) {
      TokenizerBlob b = reader.read_tokenizer();
      if (b.kind.empty())
        fail(
            "model '{}' has no embedded tokenizer: give --tokenizer FILE|bytes, or convert it with "
            "--tokenizer",
            model);
      tok = tokenizer_from_blob(b.kind, b.data);
    }
  }
  if (!tokenizer_flag.empty()) tok = load_tokenizer(tokenizer_flag);
  if (model_vocab >= 0 && tok->vocab_size() > model_vocab)
    fail(
        "the {} tokenizer{} has {} ids but model '{}' has a vocabulary of {}: the tokenizer does "
        "not belong to this "
        "model",
        tok->kind(),
        tokenizer_flag.empty() ? std::string(" embedded in the model")
                               : " '" + tokenizer_flag + "'",
        tok->vocab_size(), model, model_vocab);
  return tok;
}

TextStream::TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {
  for (const auto& s : stop_)
    if (s.empty()) fail("a stop string must not be empty");
}

std::string TextStream::push(std::string_view bytes) {
  if (stopped()) return {};
  all_.append(bytes);
  // A stop string starts at or after released_: text that might begin one is never released.
  size_t at = std::string::npos;
  for (const auto& s : stop_) at = std::min(at, all_.find(s, released_));
  if (at != std::string::npos) {
    stop_at_ = at;
    std::string out = all_.substr(released_, at - released_);
    released_ = at;
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of a stop string...
  size_t hold = 0;
  for (const auto& s : stop_) {
    for (size_t k = std::min(s.size() - 1, all_.size() - released_); k > hold; --k)
      if (all_.compare(all_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  }
  size_t safe = all_.size() - hold;
  // ...and an incomplete UTF-8 character at the end of what remains (Utf8Stream's rule: invalid
  // bytes go out as they are, only a valid but unfinished character waits).
  Utf8Stream u;
  size_t cut =
      released_ + u.push(std::string_view(all_).substr(released_, safe - released_)).size();
  std::string out = all_.substr(released_, cut - released_);
  released_ = cut;
  return out;
}

std::string TextStream::finish() {
  size_t end = stopped() ? stop_at_ : all_.size();
  std::string out = all_.substr(released_, end - released_);
  released_ = end;
  return out;
}

Request make_text_request(const Tokenizer& tok, std::vector<int32_t> prompt_ids,
                          const TextOptions& o, std::function<void(std::string_view)> on_text,
                          std::function<void(TextResult)> on_done) {
  validate(o.sampling);
  if (o.max_tokens < 0) fail("max tokens must not be negative (got {})", o.max_tokens);
  if (prompt_ids.empty()) fail("the prompt is empty (it must have at least one token)");

  struct State {
    TextStream stream;
    TextResult res;
    std::vector<int32_t> stop_ids;
    bool logprobs = false;
  };
  auto st = std::make_shared<State>(State{TextStream(o.stop), {}, o.stop_ids, o.logprobs});
  st->res.prompt_tokens = int(prompt_ids.size());

  Request r;
  r.prompt = std::move(prompt_ids);
  r.sampling = o.sampling;
  r.max_tokens = o.max_tokens;
  r.stop_ids = o.stop_ids;
  const Tokenizer* tp = &tok;
  r.on_token = [st, tp, on_text](int32_t id, float logprob) {
    st->res.ids.push_back(id);
    if (st->logprobs) st->res.logprobs.push_back(logprob);
    if (st->stream.stopped()) return false;
    // A stop id ends the sequence (the engine sees it too); its text is not part of the answer.
    if (std::find(st->stop_ids.begin(), st->stop_ids.end(), id) != st->stop_ids.end()) return true;
    std::string out = st->stream.push(token_bytes_or_empty(*tp, id));
    if (!out.empty() && on_text) on_text(out);
    return !st->stream.stopped();
  };
  r.on_finish = [st, on_text, on_done](Finish why) {
    std::string out = st->stream.finish();
    if (!out.empty() && on_text) on_text(out);
    st->res.text = st->stream.text();
    st->res.finish = why;
    st->res.completion_tokens = int(st->res.ids.size());
    if (on_done) on_done(std::move(st->res));
  };
  return r;
}

std::string chat_turn(std::string_view role, std::string_view text) {
  std::string t(role);
  t += ": ";
  t += text;
  t += "\n\n";
  return t;
}

const std::vector<std::string>& chat_stop_strings() {
  static const std::vector<std::string> stops = {"\n\n", "\nUser:"};
  return stops;
}

ChatSession::ChatSession(Engine& e, const Tokenizer& tok, TextOptions o)
    : e_(e), tok_(tok), o_(std::move(o)) {
  if (o_.max_tokens < 1)
    fail("chat needs at least one token per answer (max tokens {})", o_.max_tokens);
  for (const std::string& s : chat_stop_strings())
    if (std::find(o_.stop.begin(), o_.stop.end(), s) == o_.stop.end()) o_.stop.push_back(s);
}

ChatSession::~ChatSession() {
  if (state_ < 0) return;
  try {
    e_.release_prefix(state_);
  } catch (const std::exception&) {
    // The engine is going away with the conversation; nothing to undo.
  }
}

TextResult ChatSession::turn(const std::string& user_line,
                             std::function<void(std::string_view)> on_text) {
  // The conversation reads "User: ...\n\nAssistant: ...\n\nUser: ...". The state already holds
  // everything the previous answer generated (but its last token, carried in carry_), so the
  // separator depends on how that answer ended.
  std::string text;
  const std::string& prev = prev_answer_bytes_;
  if (state_ < 0 || ends_with(prev, "\n\n"))
    text = chat_turn("User", user_line);
  else if (ends_with(prev, "\nUser:"))
    text = " " + user_line + "\n\n";  // the model already opened the user's turn
  else if (ends_with(prev, "\n"))
    text = "\n" + chat_turn("User", user_line);
  else
    text = "\n\n" + chat_turn("User", user_line);
  text += kChatAnswerCue;

  std::vector<int32_t> prompt = carry_;
  auto ids = tok_.encode(text);
  prompt.insert(prompt.end(), ids.begin(), ids.end());

  TextResult out;
  Request r = make_text_request(tok_, std::move(prompt), o_, std::move(on_text),
                                [&out](TextResult t) { out = std::move(t); });
  r.prefix = state_;
  r.keep_state = true;
  const uint64_t before = e_.tokens_processed();
  int id = e_.submit(std::move(r));
  e_.run();
  last_turn_tokens_ = e_.tokens_processed() - before;
  if (state_ >= 0)
    e_.release_prefix(state_);  // the new state continues it; the old one is not needed
  state_ = id;
  carry_.clear();
  prev_answer_bytes_.clear();
  if (!out.ids.empty()) carry_.push_back(out.ids.back());
  for (int32_t t : out.ids) prev_answer_bytes_ += token_bytes_or_empty(tok_, t);
  return out;
}

}  // namespace rwkvpp
