// The RWKV World tokenizer (rwkv_vocab_v20230424.txt): every line is `id repr(token) length`,
// with the token written as a Python str or bytes literal (a str stands for its UTF-8 bytes).
// Encoding is greedy longest match over bytes, walking a trie from each position; id 0 is the
// end-of-text marker and has no bytes.
//
// The trie is built without recursion, and ids and token lengths are bounded
// (common/limits.h), so that a hostile vocabulary costs memory and time in proportion to its size.
//
// The trie is flat: nodes with a sorted run of (byte, child) edges, and a dense 256-entry table
// for the root and for nodes with many children, plus one 65536-entry table for the first two
// bytes, so that the steps near the root (where most of the work is) are single table loads
// and deeper steps a short scan.
#include <algorithm>
#include <array>
#include <cstring>

#include "common/error.h"
#include "common/limits.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace rwkvpp {
namespace {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes a Python str or bytes literal (without string prefixes other than b) into the bytes
// it stands for. Returns an empty string and sets *err on a malformed literal.
std::string parse_py_literal(std::string_view lit, std::string* err) {
  std::string out;
  bool is_bytes = false;
  if (!lit.empty() && (lit[0] == 'b' || lit[0] == 'B')) {
    is_bytes = true;
    lit.remove_prefix(1);
  }
  if (lit.size() < 2 || (lit[0] != '\'' && lit[0] != '"') || lit.back() != lit[0]) {
    *err = "not a quoted Python literal";
    return {};
  }
  const char quote = lit[0];
  std::string_view body = lit.substr(1, lit.size() - 2);
  // A code point from an escape: a byte in a bytes literal, UTF-8 in a str literal.
  auto emit = [&](uint32_t cp) -> bool {
    if (is_bytes) {
      if (cp > 0xFF) return false;
      out += char(cp);
    } else {
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
      append_utf8(out, cp);
    }
    return true;
  };
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c == quote) {
      *err = "unescaped quote inside the literal";
      return {};
    }
    if (c != '\\') {
      if (is_bytes && static_cast<unsigned char>(c) >= 0x80) {
        *err = "non-ASCII character in a bytes literal";
        return {};
      }
      out += c;
      continue;
    }
    if (++i >= body.size()) {
      *err = "literal ends with a backslash";
      return {};
    }
    char e = body[i];
    switch (e) {
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x':
      case 'u':
      case 'U': {
        size_t digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        if (is_bytes && e != 'x') {  // Python keeps \u and \U verbatim in bytes literals
          out += '\\';
          out += e;
          break;
        }
        uint32_t cp = 0;
        for (size_t k = 1; k <= digits; ++k) {
          int h = i + k < body.size() ? hex_value(body[i + k]) : -1;
          if (h < 0) {
            *err = fmt::format("bad \\{} escape", e);
            return {};
          }
          cp = cp * 16 + uint32_t(h);
        }
        i += digits;
        if (!emit(cp)) {
          *err = fmt::format("escape \\{} gives an invalid code point {:#x}", e, cp);
          return {};
        }
        break;
      }
      default:
        if (e >= '0' && e <= '7') {  // up to three octal digits
          uint32_t cp = uint32_t(e - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7';
               ++k) {
            cp = cp * 8 + uint32_t(body[++i] - '0');
          }
          if (!emit(cp)) {
            *err = fmt::format("octal escape gives an invalid value {:#o}", cp);
            return {};
          }
        } else if (e == 'N') {
          *err = "\\N{...} escapes are not supported";
          return {};
        } else {  // an unknown escape stands for itself, backslash included
          out += '\\';
          out += e;
        }
    }
  }
  return out;
}

class WorldTokenizer final : public Tokenizer {
 public:
  WorldTokenizer(const std::string& data, const std::string& source) : source_(source) {
    parse(data);
    build_trie();
  }

  std::string kind() const override { return "world"; }
  int64_t vocab_size() const override { return int64_t(offsets_.size()) - 1; }

  std::vector<int32_t> encode(std::string_view text) const override {
    auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    std::vector<int32_t> ids;
    ids.reserve(n / 3 + 1);
    size_t i = 0;
    while (i < n) {
      // Every byte is a token (checked at load); the first two steps use the dense tables.
      int32_t best = byte_token_[p[i]];
      size_t best_end = i + 1;
      uint32_t node = i + 1 < n ? root2_[size_t(p[i]) << 8 | p[i + 1]] : 0;
      if (node != 0) {
        if (int32_t t = nodes_[node].token; t >= 0) {
          best = t;
          best_end = i + 2;
        }
        for (size_t j = i + 2; j < n; ++j) {
          node = child(node, p[j]);
          if (node == 0) break;
          if (int32_t t = nodes_[node].token; t >= 0) {
            best = t;
            best_end = j + 1;
          }
        }
      }
      ids.push_back(best);
      i = best_end;
    }
    return ids;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    size_t total = 0;
    for (int32_t id : ids) {
      check_id(id);
      total += offsets_[size_t(id) + 1] - offsets_[size_t(id)];
    }
    std::string out;
    out.reserve(total);
    for (int32_t id : ids) out.append(blob_, offsets_[size_t(id)], offsets_[size_t(id) + 1] - offsets_[size_t(id)]);
    return out;
  }

  std::string token_bytes(int32_t id) const override {
    check_id(id);
    return blob_.substr(offsets_[size_t(id)], offsets_[size_t(id) + 1] - offsets_[size_t(id)]);
  }

 private:
  struct Node {
    int32_t token = -1;   // id of the token ending here, -1 if none
    uint32_t first = 0;   // its edges are labels_/children_[first, first + count)
    uint32_t count = 0;
    int32_t dense = -1;   // row of dense_ (256 children) when it has one
  };

  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size())
      fail("world tokenizer ({}): token id {} is out of range [0, {})", source_, id, vocab_size());
    if (id != 0 && !present_[size_t(id)])
      fail("world tokenizer ({}): token id {} is not in the vocabulary", source_, id);
  }

  void parse(const std::string& data) {
    std::vector<std::pair<int32_t, std::string>> entries;
    size_t pos = 0, line_no = 0;
    int32_t max_id = 0;
    while (pos < data.size()) {
      size_t end = data.find('\n', pos);
      if (end == std::string::npos) end = data.size();
      std::string_view line(data.data() + pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      auto bad = [&](const std::string& why) {
        fail("world tokenizer {}: line {}: {}: {}", source_, line_no, why,
             std::string(line.substr(0, 80)));
      };
      size_t a = line.find(' '), b = line.rfind(' ');
      if (a == std::string_view::npos || b <= a) bad("expected `id token length`");
      int64_t id = 0, len = 0;
      if (!parse_int(line.substr(0, a), &id) || id <= 0) bad("bad token id");
      if (id >= kMaxVocab)
        bad(fmt::format("token id {} is over the limit of {}", id, kMaxVocab - 1));
      if (!parse_int(line.substr(b + 1), &len)) bad("bad byte length");
      std::string err;
      std::string tok = parse_py_literal(line.substr(a + 1, b - a - 1), &err);
      if (!err.empty()) bad(err);
      if (tok.empty()) bad("empty token");
      if (tok.size() > kMaxTokenBytes)
        bad(fmt::format("a token of {} bytes, over the limit of {}", tok.size(), kMaxTokenBytes));
      if (int64_t(tok.size()) != len)
        bad(fmt::format("the token has {} bytes but the line says {}", tok.size(), len));
      max_id = std::max(max_id, int32_t(id));
      entries.emplace_back(int32_t(id), std::move(tok));
    }
    if (entries.empty()) fail("world tokenizer {}: no tokens in the file", source_);
    // Lay the tokens out by id in one blob; ids without a line have no bytes.
    std::vector<const std::string*> by_id(size_t(max_id) + 1, nullptr);
    for (auto& [id, tok] : entries) {
      if (by_id[size_t(id)]) fail("world tokenizer {}: token id {} appears twice", source_, id);
      by_id[size_t(id)] = &tok;
    }
    present_.assign(by_id.size(), false);
    offsets_.assign(by_id.size() + 1, 0);
    for (size_t id = 0; id < by_id.size(); ++id) {
      if (by_id[id]) {
        blob_ += *by_id[id];
        present_[id] = true;
      }
      offsets_[id + 1] = blob_.size();
    }
  }

  static bool parse_int(std::string_view s, int64_t* v) {
    if (s.empty() || s.size() > 12) return false;
    int64_t x = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      x = x * 10 + (c - '0');
    }
    *v = x;
    return true;
  }

  std::string_view tok(int32_t id) const {
    return std::string_view(blob_).substr(offsets_[size_t(id)],
                                          offsets_[size_t(id) + 1] - offsets_[size_t(id)]);
  }

  void build_trie() {
    std::vector<int32_t> order;
    for (size_t id = 1; id < present_.size(); ++id)
      if (present_[id]) order.push_back(int32_t(id));
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      auto ta = tok(a), tb = tok(b);
      return ta != tb ? ta < tb : a < b;
    });
    for (size_t k = 1; k < order.size(); ++k) {
      if (tok(order[k]) == tok(order[k - 1]))
        fail("world tokenizer {}: tokens {} and {} have the same bytes", source_, order[k - 1],
             order[k]);
    }
    nodes_.emplace_back();
    build_nodes(order);
    root2_.assign(65536, 0);
    for (int b = 0; b < 256; ++b) {
      uint32_t c = child(0, static_cast<unsigned char>(b));
      if (c == 0 || nodes_[c].token < 0)
        fail("world tokenizer {}: byte {:#04x} has no token of its own", source_, b);
      byte_token_[size_t(b)] = nodes_[c].token;
      for (int b2 = 0; b2 < 256; ++b2)
        root2_[size_t(b) << 8 | size_t(b2)] = child(c, static_cast<unsigned char>(b2));
    }
  }

  // Fills the trie from the sorted tokens `order`. Depth first without recursion (a token is
  // up to kMaxTokenBytes deep, and the nodes are numbered as a recursive walk would number
  // them): each pending item is a node and the run order[lo, hi) of the tokens below it, which
  // all share their first `depth` bytes.
  void build_nodes(const std::vector<int32_t>& order) {
    struct Pending {
      uint32_t node;
      size_t lo, hi, depth;
    };
    std::vector<Pending> todo{{0, 0, order.size(), 0}};
    std::vector<std::pair<size_t, size_t>> groups;
    while (!todo.empty()) {
      auto [node, lo, hi, depth] = todo.back();
      todo.pop_back();
      if (lo < hi && tok(order[lo]).size() == depth) nodes_[node].token = order[lo++];
      // Group the rest by their byte at `depth`; this node's edges are contiguous.
      groups.clear();
      for (size_t k = lo; k < hi;) {
        unsigned char c = static_cast<unsigned char>(tok(order[k])[depth]);
        size_t e = k;
        while (e < hi && static_cast<unsigned char>(tok(order[e])[depth]) == c) ++e;
        groups.emplace_back(k, e);
        k = e;
      }
      const uint32_t first = uint32_t(labels_.size());
      nodes_[node].first = first;
      nodes_[node].count = uint32_t(groups.size());
      labels_.resize(labels_.size() + groups.size());
      children_.resize(children_.size() + groups.size());
      for (size_t g = 0; g < groups.size(); ++g) {
        uint32_t c = uint32_t(nodes_.size());
        nodes_.emplace_back();
        labels_[first + g] = static_cast<unsigned char>(tok(order[groups[g].first])[depth]);
        children_[first + g] = c;
      }
      if (node == 0 || groups.size() >= kDenseMin) {
        nodes_[node].dense = int32_t(dense_.size() / 256);
        dense_.resize(dense_.size() + 256, 0);
        for (size_t g = 0; g < groups.size(); ++g)
          dense_[size_t(nodes_[node].dense) * 256 + labels_[first + g]] = children_[first + g];
      }
      // Children in reverse, so that the first child is filled next.
      for (size_t g = groups.size(); g-- > 0;)
        todo.push_back({children_[first + g], groups[g].first, groups[g].second, depth + 1});
    }
  }

  // The child of `node` along byte c, or 0 (the root is nobody's child).
  uint32_t child(uint32_t node, unsigned char c) const {
    const Node& nd = nodes_[node];
    if (nd.dense >= 0) return dense_[size_t(nd.dense) * 256 + c];
    const unsigned char* l = labels_.data() + nd.first;
    for (uint32_t k = 0; k < nd.count; ++k) {
      if (l[k] == c) return children_[nd.first + k];
      if (l[k] > c) break;
    }
    return 0;
  }

  static constexpr size_t kDenseMin = 8;

  std::string source_;
  std::string blob_;                 // token bytes, by id
  std::vector<size_t> offsets_;      // [vocab + 1]: token id's bytes are blob_[offsets_[id], offsets_[id+1])
  std::vector<bool> present_;        // [vocab]: id has a line in the file
  std::vector<Node> nodes_;          // trie nodes; 0 is the root
  std::vector<unsigned char> labels_;  // edge bytes, sorted within a node
  std::vector<uint32_t> children_;   // edge targets
  std::vector<uint32_t> dense_;      // [rows, 256] children of dense nodes (0 = none)
  std::array<int32_t, 256> byte_token_{};  // the token of each single byte
  std::vector<uint32_t> root2_;      // [65536]: node reached by two bytes b0 b1 (0 = none)
};

}  // namespace

std::unique_ptr<Tokenizer> make_world_tokenizer(const std::string& data, const std::string& source) {
  return std::make_unique<WorldTokenizer>(data, source);
}

}  // namespace rwkvpp
