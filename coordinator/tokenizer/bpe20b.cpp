// The GPT-NeoX-20B tokenizer, read from a Hugging Face tokenizer.json: byte-level BPE.
//
// encode(), in the order the Hugging Face `tokenizers` library applies its stages:
//   1. added tokens with normalized=false (<|endoftext|>, <|padding|>) are cut out of the raw
//      text, leftmost-longest;
//   2. the rest is NFC-normalized (utf8proc), and added tokens with normalized=true (the runs of
//      2..24 spaces in 20B_tokenizer.json) are cut out the same way;
//   3. the ByteLevel pre-tokenizer splits each remaining piece with the GPT-2 regex over Unicode
//      classes (PCRE2, UTF + UCP, JIT);
//   4. each piece ("word") is turned into tokens by BPE merges applied lowest rank first, the
//      result being cached per word.
// Vocabulary and merges are converted from the byte-to-unicode alphabet back to raw bytes at
// load, so the BPE runs on token ids of byte strings. Bytes that are not valid UTF-8 (which
// the Hugging Face library cannot take at all) are encoded as their single-byte tokens, so that
// decode(encode(x)) == x, except for the bytes that never occur in UTF-8 (C0, C1, F5..FF): the
// 20B vocabulary has no token for them, and they are encoded as U+FFFD.
// decode() concatenates the tokens' bytes (the ByteLevel decoder), without a lossy UTF-8 step.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "common/error.h"
#include "common/limits.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/utf8_stream.h"

namespace rwkvpp {
namespace {

using json = nlohmann::json;

// The GPT-2 split pattern. `\s` is spelled out as the Unicode White_Space set (what Oniguruma,
// used by Hugging Face, means by \s) so that the result does not depend on the PCRE2 version's
// idea of a space.
const std::string kWs =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
const std::string kSplitPattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" + kWs +
                                  "\\p{L}\\p{N}]+|[" + kWs + "]+(?![^" + kWs + "])|[" + kWs + "]+";

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256 + n.
std::array<uint32_t, 256> byte_to_codepoint() {
  std::array<uint32_t, 256> m{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    m[b] = printable ? b : next++;
  }
  return m;
}

// Decodes one code point of valid UTF-8 at s[i], advancing i.
uint32_t next_codepoint(std::string_view s, size_t& i) {
  utf8proc_int32_t cp = -1;
  auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                            utf8proc_ssize_t(s.size() - i), &cp);
  if (n <= 0) {
    ++i;
    return 0xFFFFFFFFu;
  }
  i += size_t(n);
  return uint32_t(cp);
}

// A small trie over the added tokens, for leftmost-longest matching.
class AddedMatcher {
 public:
  void add(const std::string& content, int32_t id) {
    if (content.empty()) return;
    first_[static_cast<unsigned char>(content[0])] = true;
    size_t node = 0;
    for (unsigned char c : content) {
      auto& ch = nodes_[node].children;
      auto it = std::find_if(ch.begin(), ch.end(), [&](auto& e) { return e.first == c; });
      if (it == ch.end()) {
        ch.emplace_back(c, nodes_.size());
        node = nodes_.size();
        nodes_.emplace_back();
      } else {
        node = it->second;
      }
    }
    nodes_[node].token = id;
  }

  bool empty() const { return nodes_.size() == 1; }

  // Longest added token starting at text[i]: its id and length, or {-1, 0}.
  std::pair<int32_t, size_t> match(std::string_view text, size_t i) const {
    if (!first_[static_cast<unsigned char>(text[i])]) return {-1, 0};
    size_t node = 0;
    std::pair<int32_t, size_t> best{-1, 0};
    for (size_t j = i; j < text.size(); ++j) {
      const auto& ch = nodes_[node].children;
      auto c = static_cast<unsigned char>(text[j]);
      auto it = std::find_if(ch.begin(), ch.end(), [&](auto& e) { return e.first == c; });
      if (it == ch.end()) break;
      node = it->second;
      if (nodes_[node].token >= 0) best = {nodes_[node].token, j + 1 - i};
    }
    return best;
  }

 private:
  struct Node {
    int32_t token = -1;
    std::vector<std::pair<unsigned char, size_t>> children;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class Bpe20bTokenizer final : public Tokenizer {
 public:
  Bpe20bTokenizer(const std::string& data, const std::string& source) : source_(source) {
    check_json_depth(data, "20b tokenizer " + source_);
    json j;
    try {
      j = json::parse(data);
    } catch (const json::exception& e) {
      fail("20b tokenizer {}: not valid JSON: {}", source_, e.what());
    }
    try {
      load(j);
    } catch (const json::exception& e) {
      fail("20b tokenizer {}: unexpected tokenizer.json structure: {}", source_, e.what());
    }
    compile_regex();
  }

  ~Bpe20bTokenizer() override {
    if (regex_) pcre2_code_free(regex_);
  }

  std::string kind() const override { return "20b"; }
  int64_t vocab_size() const override { return int64_t(tokens_.size()); }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 4 + 1);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(regex_, nullptr);
    if (!md) fail("20b tokenizer: out of memory");
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md_guard(
        md, &pcre2_match_data_free);
    // Valid UTF-8 runs go through the pipeline; each invalid byte becomes its byte token.
    size_t i = 0;
    while (i < text.size()) {
      size_t valid = utf8_valid_prefix(text.substr(i));
      if (valid > 0) encode_valid(text.substr(i, valid), md, out);
      i += valid;
      if (i < text.size()) {
        int32_t id = byte_token_[static_cast<unsigned char>(text[i++])];
        if (id >= 0) {
          out.push_back(id);
        } else {
          bpe("\xEF\xBF\xBD", out);  // U+FFFD for a byte the vocabulary cannot represent
        }
      }
    }
    return out;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      check_id(id);
      out += tokens_[size_t(id)];
    }
    return out;
  }

  std::string token_bytes(int32_t id) const override {
    check_id(id);
    return tokens_[size_t(id)];
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };

  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size())
      fail("20b tokenizer ({}): token id {} is out of range [0, {})", source_, id, vocab_size());
    if (!present_[size_t(id)])
      fail("20b tokenizer ({}): token id {} is not in the vocabulary", source_, id);
  }

  // A byte-level token string (GPT-2 alphabet) as raw bytes; false if it is not byte-level.
  bool to_bytes(const std::string& s, std::string* out) const {
    out->clear();
    for (size_t i = 0; i < s.size();) {
      uint32_t cp = next_codepoint(s, i);
      if (cp >= unicode_to_byte_.size() || unicode_to_byte_[cp] < 0) return false;
      *out += char(unicode_to_byte_[cp]);
    }
    return true;
  }

  // A token id from the file: an integer in [0, kMaxVocab).
  int32_t token_id(const json& j) const {
    if (!j.is_number_integer() || (!j.is_number_unsigned() && j.get<int64_t>() < 0) ||
        j.get<uint64_t>() >= uint64_t(kMaxVocab))
      fail("20b tokenizer {}: token id {} is not an integer in [0, {})", source_,
           j.dump().substr(0, 40), kMaxVocab);
    return int32_t(j.get<int64_t>());
  }

  void set_token(int32_t id, std::string bytes) {
    if (bytes.size() > kMaxTokenBytes)
      fail("20b tokenizer {}: token {} has {} bytes, over the limit of {}", source_, id,
           bytes.size(), kMaxTokenBytes);
    if (size_t(id) >= tokens_.size()) {
      tokens_.resize(size_t(id) + 1);
      present_.resize(size_t(id) + 1, false);
    }
    tokens_[size_t(id)] = std::move(bytes);
    present_[size_t(id)] = true;
  }

  void load(const json& j) {
    const json& model = j.at("model");
    if (model.value("type", "") != "BPE")
      fail("20b tokenizer {}: model type is not BPE", source_);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null())
        fail("20b tokenizer {}: model.{} is not supported", source_, key);
    }
    const json& pre = j.at("pre_tokenizer");
    if (pre.is_null() || pre.value("type", "") != "ByteLevel")
      fail("20b tokenizer {}: pre_tokenizer is not ByteLevel", source_);
    add_prefix_space_ = pre.value("add_prefix_space", false);
    use_regex_ = pre.value("use_regex", true);
    const json& norm = j.contains("normalizer") ? j["normalizer"] : json();
    if (!norm.is_null()) {
      if (norm.value("type", "") != "NFC")
        fail("20b tokenizer {}: normalizer {} is not supported (only NFC)", source_,
             norm.dump().substr(0, 80));
      nfc_ = true;
    }

    auto b2u = byte_to_codepoint();
    unicode_to_byte_.assign(512, -1);
    for (int b = 0; b < 256; ++b) unicode_to_byte_[b2u[size_t(b)]] = int16_t(b);

    std::string bytes;
    for (auto& [tok, idj] : model.at("vocab").items()) {
      if (!to_bytes(tok, &bytes))
        fail("20b tokenizer {}: vocab token {} is not in the byte-level alphabet", source_,
             tok.substr(0, 40));
      int32_t id = token_id(idj);
      set_token(id, bytes);
      if (!by_bytes_.emplace(bytes, id).second)
        fail("20b tokenizer {}: two vocab tokens decode to the same bytes (id {})", source_, id);
    }
    // Every byte that can occur in UTF-8 needs a token; C0, C1 and F5..FF may lack one.
    for (int b = 0; b < 256; ++b) {
      auto it = by_bytes_.find(std::string(1, char(b)));
      bool optional = b == 0xC0 || b == 0xC1 || b >= 0xF5;
      if (it == by_bytes_.end() && !optional)
        fail("20b tokenizer {}: byte {:#04x} has no token of its own", source_, b);
      byte_token_[size_t(b)] = it == by_bytes_.end() ? -1 : it->second;
    }

    const json& merges = model.at("merges");
    merges_.reserve(merges.size());
    std::string a, b;
    for (size_t r = 0; r < merges.size(); ++r) {
      const json& m = merges[r];
      std::string left, right;
      if (m.is_string()) {  // "left right"
        const std::string& s = m.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail("20b tokenizer {}: merge {} is not two tokens: {}", source_, r, s.substr(0, 80));
        left = s.substr(0, sp);
        right = s.substr(sp + 1);
      } else {  // ["left", "right"]
        left = m.at(0).get<std::string>();
        right = m.at(1).get<std::string>();
      }
      if (!to_bytes(left, &a) || !to_bytes(right, &b))
        fail("20b tokenizer {}: merge {} is not in the byte-level alphabet", source_, r);
      auto ia = by_bytes_.find(a), ib = by_bytes_.find(b), im = by_bytes_.find(a + b);
      if (ia == by_bytes_.end() || ib == by_bytes_.end() || im == by_bytes_.end())
        fail("20b tokenizer {}: merge {} ({} {}) uses a token missing from the vocab", source_, r,
             left.substr(0, 40), right.substr(0, 40));
      merges_.emplace(pair_key(ia->second, ib->second), Merge{int32_t(r), im->second});
    }

    if (j.contains("added_tokens")) {
      for (const json& t : j["added_tokens"]) {
        std::string content = t.at("content").get<std::string>();
        int32_t id = token_id(t.at("id"));
        for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
          if (t.value(flag, false))
            fail("20b tokenizer {}: added token {} uses {}, which is not supported", source_, id,
                 flag);
        }
        // The ByteLevel decoder maps a token through the byte alphabet when every character is
        // in it, and otherwise keeps the token's UTF-8 as it is.
        std::string dec;
        if (!to_bytes(content, &dec)) dec = content;
        set_token(id, dec);
        if (t.value("normalized", !t.value("special", false))) {
          normalized_added_.add(nfc_ ? normalize(content) : content, id);
        } else {
          raw_added_.add(content, id);
        }
      }
    }
  }

  void compile_regex() {
    int err = 0;
    PCRE2_SIZE off = 0;
    regex_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kSplitPattern.c_str()),
                           PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!regex_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("20b tokenizer: cannot compile the split pattern at {}: {}", off,
           reinterpret_cast<const char*>(msg));
    }
    jit_ = pcre2_jit_compile(regex_, PCRE2_JIT_COMPLETE) == 0;
  }

  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  // NFC of valid UTF-8. Text whose code points are all below U+0300 (every byte < 0xCC) is
  // already in NFC: nothing there decomposes, and nothing composes without a combining mark.
  std::string normalize(std::string_view s) const {
    if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0xCC; }))
      return std::string(s);
    utf8proc_uint8_t* dst = nullptr;
    auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                          utf8proc_ssize_t(s.size()), &dst,
                          utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) fail("20b tokenizer: NFC normalization failed: {}", utf8proc_errmsg(n));
    std::string out(reinterpret_cast<const char*>(dst), size_t(n));
    std::free(dst);
    return out;
  }

  // Calls emit(id) or emit_gap(piece) for the parts of text, cutting out the added tokens.
  template <typename Gap>
  static void split_added(const AddedMatcher& m, std::string_view text, std::vector<int32_t>& out,
                          Gap&& gap) {
    if (m.empty()) {
      if (!text.empty()) gap(text);
      return;
    }
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
      auto [id, len] = m.match(text, i);
      if (id < 0) {
        ++i;
        continue;
      }
      if (i > start) gap(text.substr(start, i - start));
      out.push_back(id);
      i += len;
      start = i;
    }
    if (start < text.size()) gap(text.substr(start));
  }

  void encode_valid(std::string_view text, pcre2_match_data* md, std::vector<int32_t>& out) const {
    split_added(raw_added_, text, out, [&](std::string_view raw) {
      std::string norm = nfc_ ? normalize(raw) : std::string(raw);
      split_added(normalized_added_, norm, out,
                  [&](std::string_view piece) { pre_tokenize(piece, md, out); });
    });
  }

  void pre_tokenize(std::string_view piece, pcre2_match_data* md, std::vector<int32_t>& out) const {
    std::string prefixed;
    if (add_prefix_space_ && piece[0] != ' ') {
      prefixed.reserve(piece.size() + 1);
      prefixed.push_back(' ');
      prefixed.append(piece);
      piece = prefixed;
    }
    if (!use_regex_) return bpe(piece, out);
    auto subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t pos = 0;
    while (pos < piece.size()) {
      int rc = jit_ ? pcre2_jit_match(regex_, subject, piece.size(), pos, 0, md, nullptr)
                    : pcre2_match(regex_, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) fail("20b tokenizer: pre-tokenizer match failed (PCRE2 error {})", rc);
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t s = ov[0], e = ov[1];
      if (s > pos) bpe(piece.substr(pos, s - pos), out);  // unmatched gap: its own word
      if (e == s) e = s + 1;                              // cannot happen with this pattern
      bpe(piece.substr(s, e - s), out);
      pos = e;
    }
    if (pos < piece.size()) bpe(piece.substr(pos), out);
  }

  // Appends the BPE tokens of one word (cached).
  void bpe(std::string_view word, std::vector<int32_t>& out) const {
    if (word.size() == 1) {
      out.push_back(byte_token_[static_cast<unsigned char>(word[0])]);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(word);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = bpe_uncached(word);
    out.insert(out.end(), ids.begin(), ids.end());
    if (word.size() > kCacheWordMax) return;  // long runs (base64, minified code) rarely repeat
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kCacheMax) cache_.clear();
    cache_.emplace(std::string(word), std::move(ids));
  }

  // Merges adjacent symbols, always the pair of lowest rank next (leftmost among equals),
  // as Hugging Face's BPE does; a heap keeps long words O(n log n).
  std::vector<int32_t> bpe_uncached(std::string_view word) const {
    const int n = int(word.size());
    struct Sym {
      int32_t id;
      int prev, next;  // -1 at the ends
    };
    std::vector<Sym> sym(static_cast<size_t>(n));
    for (int k = 0; k < n; ++k)
      sym[size_t(k)] = {byte_token_[static_cast<unsigned char>(word[size_t(k)])], k - 1,
                        k + 1 < n ? k + 1 : -1};
    struct Cand {
      int32_t rank;
      int pos;
      int32_t left, right;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int pos) {
      if (pos < 0 || sym[size_t(pos)].next < 0) return;
      int32_t l = sym[size_t(pos)].id, r = sym[size_t(sym[size_t(pos)].next)].id;
      auto it = merges_.find(pair_key(l, r));
      if (it != merges_.end()) heap.push({it->second.rank, pos, l, r});
    };
    for (int k = 0; k + 1 < n; ++k) push(k);
    while (!heap.empty()) {
      Cand c = heap.top();
      heap.pop();
      Sym& s = sym[size_t(c.pos)];
      if (s.id != c.left || s.next < 0 || sym[size_t(s.next)].id != c.right) continue;  // stale
      s.id = merges_.at(pair_key(c.left, c.right)).id;
      Sym& gone = sym[size_t(s.next)];
      gone.id = -1;
      s.next = gone.next;
      if (s.next >= 0) sym[size_t(s.next)].prev = c.pos;
      push(s.prev);
      push(c.pos);
    }
    std::vector<int32_t> ids;
    for (int k = 0; k >= 0; k = sym[size_t(k)].next) ids.push_back(sym[size_t(k)].id);
    return ids;
  }

  static constexpr size_t kCacheMax = 1 << 18;  // words; the cache is emptied when full
  static constexpr size_t kCacheWordMax = 256;   // bytes; longer words are not cached

  std::string source_;
  std::vector<std::string> tokens_;  // [vocab]: raw bytes of each id
  std::vector<bool> present_;        // [vocab]: the id exists
  std::unordered_map<std::string, int32_t> by_bytes_;  // vocab (not added) tokens by bytes
  std::array<int32_t, 256> byte_token_{};              // id of each single-byte token
  std::unordered_map<uint64_t, Merge> merges_;         // (left id, right id) -> merge
  std::vector<int16_t> unicode_to_byte_;               // GPT-2 alphabet code point -> byte
  AddedMatcher raw_added_, normalized_added_;
  bool nfc_ = false, add_prefix_space_ = false, use_regex_ = true, jit_ = false;
  pcre2_code* regex_ = nullptr;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe20b_tokenizer(const std::string& data, const std::string& source) {
  return std::make_unique<Bpe20bTokenizer>(data, source);
}

}  // namespace rwkvpp
