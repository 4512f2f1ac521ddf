// Tokenizer files written the way their outside tools write them; see tokenizer_writers.h.
#include "writers/tokenizer_writers.h"

#include <fmt/format.h>

#include <array>
#include <nlohmann/json.hpp>

namespace rwkvpp::test {

namespace {

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256 + n.
std::string byte_level(const std::string& raw) {
  static const std::array<uint32_t, 256> map = [] {
    std::array<uint32_t, 256> m{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      m[b] = printable ? b : next++;
    }
    return m;
  }();
  std::string out;
  for (unsigned char c : raw) {
    const uint32_t cp = map[c];
    if (cp < 0x80) {
      out += char(cp);
    } else {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

}  // namespace

std::string make_world_vocab(const std::vector<std::string>& extra) {
  std::string v;
  for (int b = 0; b < 256; ++b) v += fmt::format("{} b'\\x{:02x}' 1\n", b + 1, b);
  for (size_t i = 0; i < extra.size(); ++i) v += fmt::format("{} {}\n", 257 + i, extra[i]);
  return v;
}

std::string make_bpe_tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                    const std::vector<std::string>& added, bool nfc) {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object(),
                         added_tokens = nlohmann::ordered_json::array();
  int id = 0;
  for (const std::string& a : added)
    added_tokens.push_back({{"id", id++},
                            {"content", a},
                            {"single_word", false},
                            {"lstrip", false},
                            {"rstrip", false},
                            {"normalized", false},
                            {"special", true}});
  for (int b = 0; b < 256; ++b) vocab[byte_level(std::string(1, char(b)))] = id++;
  nlohmann::ordered_json m = nlohmann::ordered_json::array();
  for (auto& [l, r] : merges) {
    const std::string joined = byte_level(l + r);
    if (!vocab.contains(joined)) vocab[joined] = id++;
    m.push_back(byte_level(l) + " " + byte_level(r));
  }
  nlohmann::ordered_json j = {
      {"version", "1.0"},
      {"added_tokens", added_tokens},
      {"normalizer", nfc ? nlohmann::ordered_json{{"type", "NFC"}} : nlohmann::ordered_json()},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"vocab", vocab},
        {"merges", m}}},
  };
  return j.dump(1);
}

}  // namespace rwkvpp::test
