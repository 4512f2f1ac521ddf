// Tokenizers against the outside test vectors (../shared/tokenizers/vectors.json), plus kind
// detection, Python-literal parsing of World vocab lines, round trips of arbitrary bytes, and
// the errors a user can cause.
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "catch.h"
#include "common/error.h"
#include "common/limits.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/tokenizer_bench.h"
#include "helpers.h"
#include "writers/tokenizer_writers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::string tok_file(const std::string& name) { return shared_dir() + "/tokenizers/" + name; }
std::string world_path() { return tok_file("rwkv_vocab_v20230424.txt"); }
std::string neox_path() { return tok_file("20B_tokenizer.json"); }

const Tokenizer& world() {
  static auto t = load_tokenizer(world_path());
  return *t;
}
// The 20B tokenizer, or null in a build without PCRE2/utf8proc (see coordinator/CMakeLists.txt),
// where its cases are skipped with a warning.
const Tokenizer* neox_or_null() {
  static std::unique_ptr<Tokenizer> t = []() -> std::unique_ptr<Tokenizer> {
    try {
      return load_tokenizer(neox_path());
    } catch (const Error& e) {
      if (std::string(e.what()).find("unavailable") == std::string::npos) throw;
      return nullptr;
    }
  }();
  return t.get();
}
bool have_20b() {
  if (neox_or_null()) return true;
  WARN("this build has no 20B tokenizer (no PCRE2/utf8proc): its checks are skipped");
  return false;
}
const Tokenizer& neox() { return *neox_or_null(); }
// World, and 20B where the build has it.
std::vector<const Tokenizer*> file_tokenizers() {
  std::vector<const Tokenizer*> v{&world()};
  if (have_20b()) v.push_back(&neox());
  return v;
}

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = char(rng() & 0xFF);
  return s;
}

}  // namespace

TEST_CASE("both tokenizers reproduce every case of vectors.json", "[tokenizer]") {
  auto j = nlohmann::json::parse(read_file(tok_file("vectors.json")));
  REQUIRE(j.at("cases").size() >= 10);
  for (const auto& c : j.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    INFO("text: " << text);
    for (const Tokenizer* tok : file_tokenizers()) {
      const char* key = tok->kind() == "world" ? "world" : "20B";
      INFO("tokenizer " << key);
      auto want = c.at(key).get<std::vector<int32_t>>();
      CHECK(tok->encode(text) == want);
      CHECK(tok->decode(want) == text);
    }
  }
}

TEST_CASE("tokenizer kinds are detected from content and blobs match files", "[tokenizer]") {
  CHECK(detect_tokenizer_kind(world_path()) == "world");
  CHECK(detect_tokenizer_kind(neox_path()) == "20b");
  CHECK(detect_tokenizer_kind("bytes") == "bytes");
  CHECK(world().kind() == "world");
  CHECK(world().vocab_size() == 65530);
  const std::string text = "Blob test: caf\xc3\xa9, \xe4\xb8\x96\xe7\x95\x8c!";
  auto w = tokenizer_from_blob("world", read_file(world_path()));
  CHECK(w->encode(text) == world().encode(text));
  if (have_20b()) {
    CHECK(neox().kind() == "20b");
    CHECK(neox().vocab_size() == 50277);
    auto n = tokenizer_from_blob("20B", read_file(neox_path()));
    CHECK(n->encode(text) == neox().encode(text));
  }
  auto b = tokenizer_from_blob("bytes", "");
  CHECK(b->kind() == "bytes");
  CHECK(b->vocab_size() == 256);
  CHECK(b->encode("A\xff") == std::vector<int32_t>{65, 255});
  CHECK(contains(error_of([] { tokenizer_from_blob("klingon", ""); }), "klingon"));
}

TEST_CASE("20B added tokens, whitespace runs and NFC", "[tokenizer]") {
  if (!have_20b()) return;
  const Tokenizer& t = neox();
  CHECK(t.encode("<|endoftext|>") == std::vector<int32_t>{0});
  CHECK(t.token_bytes(0) == "<|endoftext|>");
  // 30 spaces: the longest added run (24 spaces, id 50254) then 6 spaces (id 50272).
  CHECK(t.encode(std::string(30, ' ')) == std::vector<int32_t>{50254, 50272});
  CHECK(t.token_bytes(50276) == "  ");
  // e + combining acute is composed to U+00E9 before BPE, as the NFC normalizer does.
  CHECK(t.encode("caf\x65\xcc\x81") == t.encode("caf\xc3\xa9"));
  // Byte-level tokens: 'Ġ' in the vocab is a space.
  CHECK(t.encode(" the") == std::vector<int32_t>{253});
  CHECK(t.token_bytes(253) == " the");
}

TEST_CASE("World vocab lines are Python literals with checked lengths", "[tokenizer]") {
  TempDir dir;
  // Escapes of str and bytes literals; é is two UTF-8 bytes in a str, one byte in bytes.
  std::vector<std::string> extra = {
      R"('\u00e9' 2)",   R"(b'\xe9\x41' 2)", R"('a\\' 2)",          R"("it's" 4)",
      R"('say \"hi\"' 8)", R"('\n\t' 2)",    "'\xe4\xb8\x96' 3", R"('\x80' 2)",
      R"('ab' 2)",        R"('abc' 3)",      R"('abcd' 4)",      R"('\'q' 2)",
      R"('\101\0' 2)",    R"('\U0001F642' 4)"};
  write_file(dir / "vocab.txt", make_world_vocab(extra));
  auto t = load_tokenizer(dir / "vocab.txt");
  CHECK(t->kind() == "world");
  CHECK(t->vocab_size() == 257 + int64_t(extra.size()));
  CHECK(t->token_bytes(257) == "\xc3\xa9");
  CHECK(t->token_bytes(258) == "\xe9" "A");
  CHECK(t->token_bytes(259) == "a\\");
  CHECK(t->token_bytes(260) == "it's");
  CHECK(t->token_bytes(261) == "say \"hi\"");
  CHECK(t->token_bytes(262) == "\n\t");
  CHECK(t->token_bytes(263) == "\xe4\xb8\x96");
  CHECK(t->token_bytes(264) == "\xc2\x80");
  CHECK(t->token_bytes(268) == "'q");
  CHECK(t->token_bytes(269) == std::string("A\0", 2));
  CHECK(t->token_bytes(270) == "\xf0\x9f\x99\x82");
  CHECK(t->token_bytes(0).empty());  // the end-of-text marker
  // Greedy longest match: "abcab" -> abc, ab; "abx" -> ab, x.
  CHECK(t->encode("abcab") == std::vector<int32_t>{266, 265});
  CHECK(t->encode("abx") == std::vector<int32_t>{265, 'x' + 1});
  CHECK(t->encode("abcdabcd") == std::vector<int32_t>{267, 267});
}

TEST_CASE("errors name the file, the line or the id", "[tokenizer]") {
  TempDir dir;
  write_file(dir / "notes.txt", "hello\nworld\n");
  auto msg = error_of([&] { load_tokenizer(dir / "notes.txt"); });
  CHECK(contains(msg, dir / "notes.txt"));
  CHECK(contains(msg, "unknown format"));
  CHECK(contains(error_of([&] { detect_tokenizer_kind(dir / "missing.json"); }), "missing.json"));
  write_file(dir / "other.json", R"({"model": {"type": "WordPiece"}})");
  CHECK(contains(error_of([&] { load_tokenizer(dir / "other.json"); }), "other.json"));
  write_file(dir / "broken.json", R"({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel")");
  if (have_20b()) CHECK(contains(error_of([&] { load_tokenizer(dir / "broken.json"); }), "broken.json"));

  // A corrupt vocab line: the length says 3 but the token has 2 bytes.
  write_file(dir / "bad_len.txt", make_world_vocab({"'ab' 2", "'cd' 3"}));
  msg = error_of([&] { load_tokenizer(dir / "bad_len.txt"); });
  CHECK(contains(msg, "bad_len.txt"));
  CHECK(contains(msg, "line 258"));
  write_file(dir / "bad_lit.txt", make_world_vocab({"'ab' 2", "'\\xZZ' 1"}));
  msg = error_of([&] { load_tokenizer(dir / "bad_lit.txt"); });
  CHECK(contains(msg, "bad_lit.txt"));
  CHECK(contains(msg, "line 258"));
  std::string no_byte = make_world_vocab({});
  no_byte.erase(0, no_byte.find('\n') + 1);  // drop the token of byte 0x00
  write_file(dir / "no_byte.txt", no_byte);
  CHECK(contains(error_of([&] { load_tokenizer(dir / "no_byte.txt"); }), "0x00"));

  for (const Tokenizer* t : file_tokenizers()) {
    int32_t big = int32_t(t->vocab_size());
    std::vector<int32_t> ids{1, big};
    msg = error_of([&] { t->decode(ids); });
    CHECK(contains(msg, std::to_string(big)));
    CHECK(contains(error_of([&] { t->token_bytes(-3); }), "-3"));
  }
  auto b = load_tokenizer("bytes");
  std::vector<int32_t> ids{256};
  CHECK(contains(error_of([&] { b->decode(ids); }), "256"));
}

TEST_CASE("any bytes round-trip through every tokenizer", "[tokenizer]") {
  std::mt19937 rng(7);
  auto bytes = load_tokenizer("bytes");
  auto toks = file_tokenizers();
  toks.push_back(bytes.get());
  std::vector<std::string> texts = {
      "", "\xff\xfe", "ok\xc3", "\xe4\xb8", "a\x80z", std::string("nul\0in", 6),
      "Grüße, Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト 🙂👍🏽",
      "tabs\t\tand\r\nnewlines\n\n\n   and   spaces     ",
      "numbers 12345 3.14159 1e-9 0x1F ½ ² Ⅻ", "'s 're 'VE 'll ''' \"quoted\""};
  for (int i = 0; i < 20; ++i) texts.push_back(random_bytes(rng, size_t(1 + rng() % 300)));
  for (auto text : texts) {
    for (const Tokenizer* t : toks) {
      // 20B has no token for the bytes that never occur in UTF-8 (checked below).
      if (t->kind() == "20b")
        for (char& c : text)
          if (uint8_t(c) == 0xC0 || uint8_t(c) == 0xC1 || uint8_t(c) >= 0xF5) c = '?';
      INFO(t->kind() << " on " << text.size() << " bytes");
      auto ids = t->encode(text);
      for (int32_t id : ids) REQUIRE((id >= 0 && id < t->vocab_size()));
      CHECK(t->decode(ids) == text);
      std::string joined;
      for (int32_t id : ids) joined += t->token_bytes(id);
      CHECK(joined == text);
    }
  }
}

TEST_CASE("20B encodes bytes that never occur in UTF-8 as U+FFFD", "[tokenizer]") {
  if (!have_20b()) return;
  const std::string fffd = "\xEF\xBF\xBD";
  CHECK(neox().encode("a\xff") == neox().encode("a" + fffd));
  CHECK(neox().decode(neox().encode("\xc0\xc1\xf5")) == fffd + fffd + fffd);
}

TEST_CASE("tokenizers may be shared between threads", "[tokenizer]") {
  std::string text;
  for (int i = 0; i < 200; ++i) text += fmt::format("Sentence {} says something about word{}. ", i, i % 37);
  if (!have_20b()) return;
  auto want_n = neox().encode(text);
  auto want_w = world().encode(text);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      bool good = true;
      for (int r = 0; r < 5; ++r)
        good = good && neox().encode(text) == want_n && world().encode(text) == want_w;
      ok[size_t(k)] = good;
    });
  }
  for (auto& th : threads) th.join();
  CHECK(ok == std::vector<int>(4, 1));
}

TEST_CASE("the tokenizer benchmark reports JSON and a clean round trip", "[tokenizer]") {
  TempDir dir;
  std::string text = generate_english_text(20000);
  CHECK(text.size() >= 20000);
  CHECK(text == generate_english_text(20000));  // deterministic
  write_file(dir / "text.txt", text);
  std::vector<std::string> paths{world_path(), "bytes"};
  if (have_20b()) paths.push_back(neox_path());
  for (const std::string& tok : paths) {
    std::ostringstream out;
    run_tokenizer_bench(tok, dir / "text.txt", out);
    auto j = nlohmann::json::parse(out.str());
    INFO(out.str());
    CHECK(j.at("bytes").get<size_t>() == text.size());
    CHECK(j.at("roundtrip").get<bool>());
    CHECK(j.at("encode_MBps").get<double>() > 0);
    CHECK(j.at("decode_MBps").get<double>() > 0);
  }
  CHECK(contains(error_of([&] { std::ostringstream o; run_tokenizer_bench("bytes", dir / "nope.txt", o); }),
                 "nope.txt"));
}

TEST_CASE("World vocabs with very long tokens: deep tries are built without recursion, and bounded",
          "[tokenizer][hostile]") {
  // A chain of tokens a, aa, aaa, ... up to the longest allowed: the trie is as deep as the
  // longest token, and greedy longest match still holds at every length.
  std::vector<std::string> extra;
  for (size_t n = 2; n <= kMaxTokenBytes; ++n)
    extra.push_back(fmt::format("'{}' {}", std::string(n, 'a'), n));
  extra.push_back(fmt::format("'{}b' {}", std::string(kMaxTokenBytes - 1, 'a'), kMaxTokenBytes));
  auto t = tokenizer_from_file_bytes(make_world_vocab(extra), "chain.txt");
  const int32_t longest = 257 + int32_t(kMaxTokenBytes) - 2;  // id of 'a' * kMaxTokenBytes
  CHECK(t->token_bytes(longest) == std::string(kMaxTokenBytes, 'a'));
  const std::string text =
      std::string(2 * kMaxTokenBytes + 3, 'a') + "b" + std::string(kMaxTokenBytes - 1, 'a') + "b";
  auto ids = t->encode(text);
  CHECK(ids == std::vector<int32_t>{longest, longest, 257 + 1, 'b' + 1, longest + 1});
  CHECK(t->decode(ids) == text);

  // One token far longer than any real one (the crash of issue 21: dozens of mutants had one):
  // refused with its line, at any length.
  for (size_t n : {kMaxTokenBytes + 1, size_t(200000), size_t(4) << 20}) {
    INFO(n << " bytes");
    auto msg = error_of([&] {
      tokenizer_from_file_bytes(make_world_vocab({fmt::format("'{}' {}", std::string(n, 'x'), n)}),
                                "long.txt");
    });
    CHECK(contains(msg, "long.txt"));
    CHECK(contains(msg, "line 257"));
    CHECK(contains(msg, fmt::format("a token of {} bytes", n)));
  }
  // Ids that would size the tables without bound.
  std::string v = make_world_vocab({}) + fmt::format("{} 'ab' 2\n", kMaxVocab);
  auto msg = error_of([&] { tokenizer_from_file_bytes(v, "ids.txt"); });
  CHECK(contains(msg, "ids.txt"));
  CHECK(contains(msg, "line 257"));
  CHECK(contains(msg, "over the limit"));
  v = make_world_vocab({}) + fmt::format("{} 'ab' 2\n", kMaxVocab - 1);
  CHECK(tokenizer_from_file_bytes(v, "ok.txt")->vocab_size() == kMaxVocab);
}

TEST_CASE("tokenizer.json: ids, token lengths and nesting from the file are bounded",
          "[tokenizer][hostile]") {
  if (!have_20b()) return;
  const std::string good =
      make_bpe_tokenizer_json({{"t", "h"}, {"th", "e"}, {" ", "the"}}, {"<|endoftext|>"}, true);
  auto t = tokenizer_from_file_bytes(good, "good.json");
  CHECK(t->kind() == "20b");
  auto ids = t->encode("the the<|endoftext|>");
  CHECK(ids == std::vector<int32_t>{257 + 1, 257 + 2, 0});
  CHECK(t->decode(ids) == "the the<|endoftext|>");
  // Replace the id of token "e" by hostile values.
  auto with_id = [&](const std::string& id) {
    std::string s = good;
    const std::string key = "\"e\": " + std::to_string(int('e') + 1);
    REQUIRE(s.find(key) != std::string::npos);
    return s.replace(s.find(key), key.size(), "\"e\": " + id);
  };
  for (const char* id : {"1e300", "-1", "4194304", "18446744073709551615", "\"five\""}) {
    INFO(id);
    auto msg = error_of([&] { tokenizer_from_file_bytes(with_id(id), "ids.json"); });
    CHECK(contains(msg, "ids.json"));
    CHECK((contains(msg, "token id") || contains(msg, "structure")));
  }
  auto msg = error_of([&] {
    tokenizer_from_file_bytes(good.substr(0, good.size() - 1) + ", \"x\": " +
                                  std::string(100000, '[') + std::string(100000, ']') + "}",
                              "deep.json");
  });
  CHECK(contains(msg, "deep.json"));
  CHECK(contains(msg, "nested"));
  const std::string long_added(kMaxTokenBytes + 1, 'z');
  msg = error_of([&] {
    tokenizer_from_file_bytes(make_bpe_tokenizer_json({}, {long_added}, false), "added.json");
  });
  CHECK(contains(msg, "added.json"));
  CHECK(contains(msg, "over the limit"));
}
