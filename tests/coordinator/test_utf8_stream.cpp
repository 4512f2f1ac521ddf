// Utf8Stream: token streams whose characters are split across tokens come out whole, never as
// a partial character, and invalid bytes are passed through rather than lost.
#include <random>

#include "catch.h"
#include "common/error.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/utf8_stream.h"
#include "helpers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

bool valid_utf8(const std::string& s) { return utf8_valid_prefix(s) == s.size(); }

// Feeds the tokens one by one; checks that every piece is whole UTF-8; returns the text.
std::string stream_tokens(const Tokenizer& t, const std::vector<int32_t>& ids, int* split_pieces) {
  Utf8Stream st;
  std::string out;
  for (int32_t id : ids) {
    std::string bytes = t.token_bytes(id);
    if (!valid_utf8(bytes)) ++*split_pieces;
    std::string piece = st.push(bytes);
    INFO("token " << id);
    CHECK(valid_utf8(piece));
    out += piece;
  }
  std::string rest = st.flush();
  CHECK(rest.empty());
  return out + rest;
}

}  // namespace

TEST_CASE("characters split across tokens are reassembled, never emitted in part", "[tokenizer]") {
  const std::string text = "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82";  // héllo 世界 🙂
  auto world = load_tokenizer(shared_dir() + "/tokenizers/rwkv_vocab_v20230424.txt");
  auto bytes = load_tokenizer("bytes");
  std::vector<const Tokenizer*> toks{world.get(), bytes.get()};
  std::unique_ptr<Tokenizer> neox;
  try {
    neox = load_tokenizer(shared_dir() + "/tokenizers/20B_tokenizer.json");
    toks.push_back(neox.get());
  } catch (const Error& e) {  // a build without PCRE2/utf8proc has no 20B tokenizer
    WARN(e.what());
  }
  int split = 0;
  for (const Tokenizer* t : toks) {
    INFO(t->kind());
    CHECK(stream_tokens(*t, t->encode(text), &split) == text);
  }
  CHECK(split > 0);  // the test did see partial characters inside tokens
}

TEST_CASE("Utf8Stream holds back only a valid incomplete tail", "[tokenizer]") {
  Utf8Stream s;
  CHECK(s.push("a\xe4") == "a");
  CHECK(s.push("\xb8") == "");
  CHECK(s.push("\x96!") == "\xe4\xb8\x96!");
  CHECK(s.push("\xf0\x9f") == "");
  CHECK(s.push("\x99") == "");
  CHECK(s.push("\x82") == "\xf0\x9f\x99\x82");
  // Bytes that cannot become valid go straight through.
  CHECK(s.push("\xff") == "\xff");
  CHECK(s.push("\x80x") == "\x80x");
  CHECK(s.push("\xe4") == "");
  CHECK(s.push("a") == "\xe4" "a");       // a broken sequence is released as it is
  CHECK(s.push("\xe0") == "");            // E0 needs A0..BF next
  CHECK(s.push("\x80") == "\xe0\x80");    // overlong: invalid, released
  CHECK(s.push("\xed\xa0") == "\xed\xa0");  // a surrogate: invalid at once
  CHECK(s.push("\xf4\x90") == "\xf4\x90");  // above U+10FFFF
  // flush returns an incomplete tail as raw bytes, and empties the stream.
  CHECK(s.push("z\xf0\x9f\x99") == "z");
  CHECK(s.flush() == "\xf0\x9f\x99");
  CHECK(s.flush() == "");
  CHECK(s.push("") == "");
}

TEST_CASE("Utf8Stream loses nothing for any split of any bytes", "[tokenizer]") {
  std::mt19937 rng(11);
  const std::string sample = "Ünïcødé 世界 🙂👍🏽 ascii \xd0\x96\xe2\x82\xac";
  for (int round = 0; round < 300; ++round) {
    std::string input;
    bool only_valid = round % 2 == 0;
    size_t len = 1 + rng() % 64;
    while (input.size() < len) {
      if (only_valid) {
        input += sample.substr(0, 1 + rng() % sample.size());
        input.resize(utf8_valid_prefix(input));
        if (input.empty()) input.push_back('x');
      } else {
        input += char(rng() & 0xFF);
      }
    }
    Utf8Stream s;
    std::string out;
    for (size_t i = 0; i < input.size();) {
      size_t n = std::min(input.size() - i, size_t(1 + rng() % 5));
      std::string piece = s.push(std::string_view(input).substr(i, n));
      if (only_valid) REQUIRE(valid_utf8(piece));
      out += piece;
      i += n;
    }
    out += s.flush();
    REQUIRE(out == input);
  }
}
