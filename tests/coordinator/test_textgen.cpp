// Text generation helpers (coordinator/textgen.h): stop strings across tokens, held-back text,
// UTF-8-safe streaming, tokenizer resolution, and the engine's kept state that chat turns chain
// (checked against re-reading the whole conversation).
#include <nlohmann/json.hpp>
#include <random>

#include "catch.h"
#include "common/error.h"
#include "coordinator/cluster.h"
#include "coordinator/textgen.h"
#include "coordinator/tokenizer/utf8_stream.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "shards/model_format.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

bool valid_utf8(const std::string& s) { return utf8_valid_prefix(s) == s.size(); }

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Drives a text request's callbacks by hand with the given ids (no engine): returns the pieces
// given to on_text and the result.
struct Fed {
  std::vector<std::string> pieces;
  TextResult res;
  bool engine_stopped = false;  // on_token returned false
  int fed = 0;                  // ids accepted before stopping
};

Fed feed(const Tokenizer& tok, const std::vector<int32_t>& ids, const TextOptions& o) {
  Fed f;
  Request r = make_text_request(
      tok, {1}, o, [&f](std::string_view s) { f.pieces.emplace_back(s); },
      [&f](TextResult t) { f.res = std::move(t); });
  Finish why = Finish::Length;
  for (int32_t id : ids) {
    ++f.fed;
    bool go_on = r.on_token(id, -0.5f);
    bool stop_id = std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end();
    if (!go_on || stop_id) {
      f.engine_stopped = true;
      why = Finish::Stop;
      break;
    }
  }
  r.on_finish(why);
  return f;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (auto& p : v) s += p;
  return s;
}

std::vector<int32_t> byte_ids(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(int32_t(c));
  return ids;
}

// The tiny trained byte-level RWKV-4 model from rwkv.cpp, converted with the bytes tokenizer.
struct ByteModel {
  TempDir dir;
  std::string path;
  ByteModel() {
    path = dir / "tiny";
    auto r =
        run(rwkvpp_binary() + " convert " + fixture("rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin") +
            " -o " + path + " --tokenizer bytes");
    if (r.exit_code != 0) throw std::runtime_error("convert failed: " + r.err);
  }
};

ByteModel& byte_model() {
  static ByteModel m;
  return m;
}

ClusterOptions opts(const std::string& model) {
  ClusterOptions o;
  o.model = model;
  o.device = "cpu";
  o.threads = 1;
  o.limits.chunk = 16;
  return o;
}

}  // namespace

TEST_CASE("a stop string split across two tokens ends the text before it", "[text]") {
  auto tok = load_tokenizer("bytes");
  TextOptions o;
  o.stop = {"END"};
  // Tokens "abc E", "ND more": the bytes tokenizer gives one byte per token, so use TextStream
  // for multi-byte tokens and the request for the byte-level path.
  TextStream ts({"END"});
  std::string out = ts.push("abc E");
  CHECK(out == "abc ");  // "E" may begin the stop string: held back
  CHECK_FALSE(ts.stopped());
  out += ts.push("ND more");
  CHECK(ts.stopped());
  CHECK(out == "abc ");
  CHECK(ts.text() == "abc ");
  CHECK(ts.push("ignored").empty());
  CHECK(ts.finish().empty());

  Fed f = feed(*tok, byte_ids("hello EN world END tail"), o);
  CHECK(f.engine_stopped);
  CHECK(f.res.text == "hello EN world ");
  CHECK(joined(f.pieces) == f.res.text);
  CHECK(f.res.finish == Finish::Stop);
  CHECK(f.res.ids == byte_ids("hello EN world END"));  // the stop string's tokens are generated ids
  CHECK(f.res.completion_tokens == int(f.res.ids.size()));
  CHECK(f.res.prompt_tokens == 1);
}

TEST_CASE("text held back as a possible stop string is released when it is not one, or at the end",
          "[text]") {
  TextStream ts({"\n\n", "\nUser:"});
  CHECK(ts.push("Hi there\n") == "Hi there");
  CHECK(ts.push("Us") == "");  // "\nUs" could still become "\nUser:"
  CHECK(ts.push("ual") == "\nUsual");
  CHECK(ts.push(".\n") == ".");
  CHECK(ts.finish() == "\n");  // the end releases what was held
  CHECK(ts.text() == "Hi there\nUsual.\n");
  CHECK_FALSE(ts.stopped());

  // The earliest of several stop strings wins, even inside one token.
  TextStream t2({"xyz", "\n\n"});
  CHECK(t2.push("a\n\nb xyz") == "a");
  CHECK(t2.stopped());
  CHECK(t2.text() == "a");

  // Through a request: the held-back "\n" comes out at the end of generation.
  auto tok = load_tokenizer("bytes");
  TextOptions o;
  o.stop = {"\n\n"};
  o.logprobs = true;
  Fed f = feed(*tok, byte_ids("line\n"), o);
  CHECK_FALSE(f.engine_stopped);
  CHECK(f.res.text == "line\n");
  CHECK(joined(f.pieces) == "line\n");
  CHECK(f.pieces.back() == "\n");
  CHECK(f.res.finish == Finish::Length);
  CHECK(f.res.logprobs.size() == f.res.ids.size());
}

TEST_CASE("streamed text never splits a UTF-8 character; invalid bytes pass through", "[text]") {
  const std::string text =
      "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82!";  // héllo 世界 🙂!
  auto bytes = load_tokenizer("bytes");
  auto world = load_tokenizer(shared_dir() + "/tokenizers/rwkv_vocab_v20230424.txt");
  for (const Tokenizer* tok : {bytes.get(), world.get()}) {
    INFO(tok->kind());
    // Byte by byte through the tokenizer's own single-byte tokens, and as the tokenizer encodes it.
    std::vector<int32_t> per_byte;
    for (unsigned char c : text) {
      auto ids = tok->encode(std::string(1, char(c)));
      per_byte.insert(per_byte.end(), ids.begin(), ids.end());
    }
    for (const auto& ids : {per_byte, tok->encode(text)}) {
      Fed f = feed(*tok, ids, TextOptions{});
      for (auto& p : f.pieces) CHECK(valid_utf8(p));
      CHECK(joined(f.pieces) == text);
      CHECK(f.res.text == text);
    }
  }
  // A stray continuation byte and an unfinished character at the end.
  Utf8Stream u;
  CHECK(u.push("a\x80") == "a\x80");
  CHECK(u.push("\xe4\xb8") == "");
  CHECK(u.push("\x96z") == "\xe4\xb8\x96z");
  CHECK(u.push("\xf0\x9f") == "");
  CHECK(u.flush() == "\xf0\x9f");
  TextStream ts({});
  CHECK(ts.push("ok\xe4") == "ok");
  CHECK(ts.finish() == "\xe4");
}

TEST_CASE("random token splits: the released text is always a prefix of the answer", "[text]") {
  // Texts from pieces that share bytes with the stop strings, cut into tokens at random byte
  // positions (also inside characters); the answer is the text up to the first stop string.
  const std::vector<std::string> alphabet = {"a", "b", "\n", "\xc3\xa9", "\xe4\xb8\x96", " "};
  const std::vector<std::string> stops = {"\n\n", "ab", "\xc3\xa9\n", "b\xe4\xb8\x96"};
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string full;
    for (int k = int(rng() % 24); k >= 0; --k) full += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stop;
    for (const auto& st : stops)
      if (rng() % 2) stop.push_back(st);
    size_t first = std::string::npos;
    for (const auto& st : stop) first = std::min(first, full.find(st));
    const std::string want = first == std::string::npos ? full : full.substr(0, first);
    TextStream ts(stop);
    std::string got;
    for (size_t pos = 0; pos < full.size();) {
      size_t len = 1 + rng() % 4;
      std::string piece = ts.push(full.substr(pos, len));
      CHECK(valid_utf8(piece));
      got += piece;
      REQUIRE(want.compare(0, got.size(), got) == 0);  // never beyond the answer
      pos += len;
    }
    got += ts.finish();
    INFO(iter);
    REQUIRE(got == want);
    REQUIRE(ts.text() == want);
    REQUIRE(ts.stopped() == (first != std::string::npos));
  }
}

TEST_CASE("stop ids end the text without their bytes; unknown ids decode to nothing", "[text]") {
  auto tok = load_tokenizer("bytes");
  TextOptions o;
  o.stop_ids = {int32_t('!')};
  Fed f = feed(*tok, byte_ids("yes!no"), o);
  CHECK(f.engine_stopped);
  CHECK(f.res.text == "yes");
  CHECK(f.res.ids == byte_ids("yes!"));
  Fed g =
      feed(*tok, {int32_t('a'), 300, int32_t('b')}, TextOptions{});  // 300: beyond the tokenizer
  CHECK(g.res.text == "ab");
}

TEST_CASE("text requests and tokenizer resolution reject bad input with clear errors", "[text]") {
  auto tok = load_tokenizer("bytes");
  TextOptions bad;
  bad.sampling.top_p = 0.0f;
  CHECK(has(error_of([&] { make_text_request(*tok, {1}, bad, nullptr, nullptr); }), "top_p"));
  TextOptions empty_stop;
  empty_stop.stop = {""};
  CHECK(has(error_of([&] { make_text_request(*tok, {1}, empty_stop, nullptr, nullptr); }),
            "stop string"));
  CHECK(has(error_of([&] { make_text_request(*tok, {}, TextOptions{}, nullptr, nullptr); }),
            "empty"));
  CHECK(has(error_of([] { tokenizer_for("", ""); }), "--tokenizer"));
  CHECK(
      has(error_of([] { tokenizer_for("", "/nonexistent/vocab.txt"); }), "/nonexistent/vocab.txt"));
  const auto& m = byte_model();
  CHECK(tokenizer_for(m.path, "")->kind() == "bytes");
  CHECK(has(error_of([&] {
              tokenizer_for(m.path, shared_dir() + "/tokenizers/rwkv_vocab_v20230424.txt");
            }),
            "vocabulary of 256"));
}

TEST_CASE("a kept state holds the prompt and all generated tokens but the last", "[text][engine]") {
  // hf-rwkv4-small (vocab 300): continuing a kept state gives the logits of reading everything.
  TempDir d;
  std::string path = d / "m";
  Checkpoint ck = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
  write_model(ck, infer_config(ck), path, WriteOptions{});
  auto tokens = nlohmann::json::parse(read_file(fixture("hf-rwkv4/hf-rwkv4-small.json")))
                    .at("tokens")
                    .get<std::vector<int32_t>>();
  std::vector<int32_t> first(tokens.begin(), tokens.begin() + 12),
      then(tokens.begin() + 12, tokens.begin() + 20);
  std::vector<int32_t> gen;
  std::vector<float> cont, whole;
  uint64_t fed_turn2 = 0;
  run_cluster(opts(path), [&](Engine& e) {
    Request a;
    a.prompt = first;
    a.max_tokens = 6;
    a.keep_state = true;
    a.on_token = [&](int32_t id, float) {
      gen.push_back(id);
      return true;
    };
    int kept = e.submit(std::move(a));
    e.run();
    REQUIRE(gen.size() == 6);
    for (int copy = 0; copy < 2; ++copy) {  // the kept state is not consumed by a continuation
      cont.clear();
      Request b;
      b.prefix = kept;
      b.prompt = {gen.back()};
      b.prompt.insert(b.prompt.end(), then.begin(), then.end());
      b.logits_all = true;
      b.on_logits = [&](int64_t, const float* l) { cont.insert(cont.end(), l, l + 300); };
      uint64_t before = e.tokens_processed();
      e.submit(std::move(b));
      e.run();
      fed_turn2 = e.tokens_processed() - before;
    }
    e.release_prefix(kept);
    Request w;
    w.prompt = first;
    w.prompt.insert(w.prompt.end(), gen.begin(), gen.end());
    w.prompt.insert(w.prompt.end(), then.begin(), then.end());
    w.logits_all = true;
    w.on_logits = [&](int64_t pos, const float* l) {
      if (pos >= int64_t(first.size() + gen.size()) - 1) whole.insert(whole.end(), l, l + 300);
    };
    e.submit(std::move(w));
    e.run();
    return 0;
  });
  CHECK(fed_turn2 == 1 + then.size());
  REQUIRE(cont.size() == whole.size());
  CHECK(max_abs_diff(cont, whole) < 1e-5);
}

TEST_CASE("chat turns continue the conversation's state and read only their own tokens",
          "[text][engine]") {
  const auto& m = byte_model();
  auto tok = tokenizer_for(m.path, "");
  TextOptions o;
  o.max_tokens = 24;
  std::vector<TextResult> turns;
  std::vector<uint64_t> fed;
  std::string streamed;
  run_cluster(opts(m.path), [&](Engine& e) {
    ChatSession chat(e, *tok, o);
    for (const char* line : {"Hello, who are you?", "Tell me more."}) {
      streamed.clear();
      turns.push_back(chat.turn(line, [&](std::string_view s) { streamed += s; }));
      CHECK(streamed == turns.back().text);
      fed.push_back(chat.last_turn_tokens());
    }
    return 0;
  });
  REQUIRE(turns.size() == 2);
  const std::string t1 = "User: Hello, who are you?\n\nAssistant:";
  CHECK(turns[0].prompt_tokens == int(t1.size()));
  for (size_t k = 0; k < 2; ++k)
    CHECK(fed[k] == uint64_t(turns[k].prompt_tokens + turns[k].completion_tokens - 1));
  // Turn 2 reads the previous answer's last token and its own words, nothing of turn 1.
  CHECK(turns[1].prompt_tokens <=
        int(1 + std::string("\n\nUser: Tell me more.\n\nAssistant:").size()));

  // The same second answer as re-reading the whole conversation from scratch (greedy).
  std::string answer1;
  for (int32_t id : turns[0].ids) answer1 += tok->token_bytes(id);
  std::vector<int32_t> all = tok->encode(t1 + answer1);
  std::string t2 = answer1.ends_with("\n\n")      ? "User: Tell me more.\n\nAssistant:"
                   : answer1.ends_with("\nUser:") ? " Tell me more.\n\nAssistant:"
                   : answer1.ends_with("\n")      ? "\nUser: Tell me more.\n\nAssistant:"
                                                  : "\n\nUser: Tell me more.\n\nAssistant:";
  auto t2_ids = tok->encode(t2);
  all.insert(all.end(), t2_ids.begin(), t2_ids.end());
  CHECK(turns[1].prompt_tokens == int(1 + t2_ids.size()));
  std::vector<int32_t> again;
  o.stop = {"\n\n", "\nUser:"};
  run_cluster(opts(m.path), [&](Engine& e) {
    Request r = make_text_request(*tok, all, o, nullptr, [&](TextResult t) { again = t.ids; });
    e.submit(std::move(r));
    e.run();
    return 0;
  });
  CHECK(again == turns[1].ids);
}
